"""Ablation of the synthetic demos (a benchmark, not a test): what the image and the per-joint text
bring to MetaPose on the synthetic sets, in the paper and the corrected configuration.

    python benchmarks/synthetic_ablation.py --out logs/synthetic_ablation --jobs 2 --seeds 0 1 2

Every run is the quick-start demo (train.py with experiments/synthetic/demo.yaml,
demo_corrected.yaml, experiments/mpi_inf_3dhp/synthetic_demo.yaml or synthetic_demo_corrected.yaml)
with one factor changed at a time:

    images      the demo as it is (the frozen stage-1 trunk sees the synthetic crops)
    blank       data.blank_images=true: blank images, the image pathway carries nothing
    same_text   model.text_encoder.prompts=experiments/prompts/same_for_every_joint.yaml: all 17
                joints read the same sentence (their own prompt tokens still tell them apart)

Seeds vary the training seed (`seed`: initialisation, batch order, flips); the synthetic set and
its stage-1 trunk are those of the demo (data.synthetic.seed 0) and shared by every run, prepared
once before the runs start. Each run uses one compute thread and no DataLoader worker, so --jobs
runs fit as many cores.

Resumable: every finished run is stored in OUT/results.json and skipped when the command runs
again; an unfinished run's folder is removed and the run started afresh. At the end (and with
--report-only, from the stored results alone) it writes the Markdown table (--markdown) and the
bar chart (--figure) with mean +- std over the seeds that finished.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.atomic_files import atomic_write_text  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402

CONFIGS = {
    ("h36m", "paper"): "experiments/synthetic/demo.yaml",
    ("h36m", "corrected"): "experiments/synthetic/demo_corrected.yaml",
    ("3dhp", "paper"): "experiments/mpi_inf_3dhp/synthetic_demo.yaml",
    ("3dhp", "corrected"): "experiments/mpi_inf_3dhp/synthetic_demo_corrected.yaml",
}
VARIANTS = {
    "images": [],
    "blank": ["data.blank_images=true"],
    "same_text": ["model.text_encoder.prompts=experiments/prompts/same_for_every_joint.yaml"],
}
# Reported metrics per dataset: (metrics.jsonl key, label, lower is better).
METRICS = {"h36m": (("p1", "P1 (mm)", True), ("p2", "P2 (mm)", True)),
           "3dhp": (("pck", "PCK (%)", False), ("auc", "AUC (%)", False),
                    ("mpjpe", "MPJPE (mm)", True))}
ONE_THREAD = ["speed.cpu_threads=1", "data.num_workers=0"]


def build_parser():
    parser = argparse.ArgumentParser(
        description="Ablation of the synthetic demos: images vs blank images, per-joint vs one "
                    "sentence, paper vs corrected configuration, H36M and 3DHP, over seeds.")
    parser.add_argument("--out", default="logs/synthetic_ablation",
                        help="folder for the runs, their logs and results.json (default "
                             "logs/synthetic_ablation)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="runs at the same time, one compute thread each (default 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (default 0 1 2)")
    parser.add_argument("--datasets", nargs="+", choices=("h36m", "3dhp"),
                        default=["h36m", "3dhp"], help="demos to run (default both)")
    parser.add_argument("--configs", nargs="+", choices=("paper", "corrected"),
                        default=["paper", "corrected"], help="configurations (default both)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),
                        default=list(VARIANTS), help="variants (default all)")
    parser.add_argument("--markdown", default="docs/ablation.md",
                        help="Markdown page written at the end (default docs/ablation.md)")
    parser.add_argument("--figure", default="docs/images/synthetic_ablation.png",
                        help="bar chart written at the end (default "
                             "docs/images/synthetic_ablation.png)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; write the page and the chart from results.json")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def run_id(dataset, config, variant, seed):
    return f"{dataset}_{config}_{variant}_seed{seed}"


def planned_runs(args):
    """[(run id, dataset, config, variant, seed)]: seed by seed, so that a partial ablation
    holds every cell for the first seeds rather than every seed of the first cells."""
    return [(run_id(d, c, v, s), d, c, v, s) for s in args.seeds for d in args.datasets
            for c in args.configs for v in args.variants]


# -- results ----------------------------------------------------------------------------------


def results_path(out):
    return os.path.join(out, "results.json")


def load_results(out):
    path = results_path(out)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as stream:
        try:
            return json.load(stream)
        except ValueError:
            raise MetaPoseError(f"'{path}' is not valid JSON: remove it to run the ablation "
                                "again from the start.") from None


def save_results(out, results):
    atomic_write_text(results_path(out), json.dumps(results, indent=1, sort_keys=True) + "\n")


def final_metrics(run_dir):
    """The last evaluation of a finished run (its metrics.jsonl), or None."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as stream:
        lines = [json.loads(line) for line in stream if line.strip()]
    return lines[-1] if lines else None


# -- running ----------------------------------------------------------------------------------


def _environment():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def prepare_data(datasets, out):
    """Writes each demo's synthetic set and stage-1 trunk once, before its runs share them
    (one compute thread, like the runs)."""
    for dataset in datasets:
        log = os.path.join(out, "logs", f"prepare_{dataset}.log")
        command = [sys.executable, os.path.join(ROOT, "tools", "pretrain_trunk.py"), "--config",
                   CONFIGS[(dataset, "paper")]]
        print(f"preparing the {dataset} synthetic set and its stage-1 trunk ({log})", flush=True)
        with open(log, "w", encoding="utf-8") as stream:
            status = subprocess.call(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                     env=_environment())
        if status != 0:
            raise MetaPoseError(f"preparing the {dataset} demo failed (exit {status}); see {log}.")


def start_run(run, out):
    name, dataset, config, variant, seed = run
    run_dir = os.path.join(out, "runs", name)
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # an unfinished earlier attempt
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
               CONFIGS[(dataset, config)], "--logdir", os.path.join(out, "runs"), "--run-name",
               name, f"seed={seed}", *ONE_THREAD, *VARIANTS[variant]]
    log = open(os.path.join(out, "logs", f"{name}.log"), "w", encoding="utf-8")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=_environment())
    return process, log, time.time()


def run_all(args, results):
    todo = [run for run in planned_runs(args) if run[0] not in results]
    print(f"{len(results)} runs stored, {len(todo)} to run with {args.jobs} at a time",
          flush=True)
    if not todo:
        return
    active, prepared = {}, set()
    while todo or active:
        while todo and len(active) < args.jobs:
            run = todo.pop(0)
            if run[1] not in prepared:  # the first run of a demo waits; others keep running
                prepare_data([run[1]], args.out)
                prepared.add(run[1])
            active[run] = start_run(run, args.out)
            print(f"started {run[0]}", flush=True)
        time.sleep(5)
        for run, (process, log, started) in list(active.items()):
            if process.poll() is None:
                continue
            log.close()
            del active[run]
            name, dataset, config, variant, seed = run
            metrics = final_metrics(os.path.join(args.out, "runs", name))
            if process.returncode != 0 or metrics is None:
                print(f"FAILED {name} (exit {process.returncode}); see "
                      f"{os.path.join(args.out, 'logs', name + '.log')}", flush=True)
                continue
            results[name] = {"dataset": dataset, "config": config, "variant": variant,
                             "seed": seed, "wall_s": round(time.time() - started, 1),
                             **{key: metrics[key] for key, _, _ in METRICS[dataset]}}
            save_results(args.out, results)
            print(f"finished {name} in {results[name]['wall_s']:.0f} s: " + ", ".join(
                f"{key} {metrics[key]:.2f}" for key, _, _ in METRICS[dataset]), flush=True)


# -- report -----------------------------------------------------------------------------------


def summarise(results):
    """{(dataset, config, variant): {metric: (mean, std, n)}} over the stored seeds."""
    import numpy as np

    cells = {}
    for entry in results.values():
        cells.setdefault((entry["dataset"], entry["config"], entry["variant"]), []).append(entry)
    summary = {}
    for cell, entries in cells.items():
        summary[cell] = {}
        for key, _, _ in METRICS[cell[0]]:
            values = np.array([entry[key] for entry in entries], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            summary[cell][key] = (float(values.mean()), std, len(values))
    return summary


def _cell_text(mean, std, count):
    spread = f" ± {std:.2f}" if count > 1 else ""
    return f"{mean:.2f}{spread} (n={count})"


def machine_text():
    import torch

    return (f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, no GPU; "
            f"torch {torch.__version__}")


def markdown_page(results, summary, command, wall_s, planned, figure):
    lines = [
        "# Synthetic ablation",
        "",
        "These are results on the **synthetic** sets of docs/method.md §1.5 (stick figures drawn "
        "with depth cues), with the small CPU demo models. They show whether the image and text "
        "pathways are used by the demo; they predict nothing about the figures on the real "
        "Human3.6M or MPI-INF-3DHP data.",
        "",
        f"Command: `{command}`"
        + (" (writes this page from the stored runs; the same command without --report-only "
           "runs what is missing)  " if "--report-only" in command else "  "),
        f"Machine: {machine_text()}; every run one compute thread.  ",
        f"Runs: {len(results)} finished of the {planned} this command plans; their wall time "
        f"{wall_s / 60:.0f} min in all (runs in parallel overlap).",
        "",
        "Each row is the quick-start demo with one factor changed: `images` the demo as it is "
        "(a frozen stage-1 trunk trained on the synthetic crops), `blank` blank images "
        "(data.blank_images=true: every image the normalisation's mean colour), `same_text` "
        "the same sentence for all 17 joints "
        "(experiments/prompts/same_for_every_joint.yaml; the per-joint prompt tokens remain). "
        "Mean ± standard deviation over training seeds (n = seeds finished); the synthetic set "
        "and the stage-1 trunk are shared by all seeds.",
        "",
    ]
    for dataset, title in (("h36m", "Synthetic H36M (validation subjects 9, 11)"),
                           ("3dhp", "Synthetic MPI-INF-3DHP (test sequences TS1-TS6)")):
        rows = [(config, variant) for config in ("paper", "corrected") for variant in VARIANTS
                if (dataset, config, variant) in summary]
        if not rows:
            continue
        metrics = METRICS[dataset]
        lines += [f"## {title}", "",
                  "| configuration | variant | " + " | ".join(label for _, label, _ in metrics)
                  + " |", "|---|---|" + "---|" * len(metrics)]
        for config, variant in rows:
            cell = summary[(dataset, config, variant)]
            lines.append(f"| {config} | {variant} | " + " | ".join(
                _cell_text(*cell[key]) for key, _, _ in metrics) + " |")
        lines.append("")
    lines += [f"![synthetic ablation]({figure})", ""]
    return "\n".join(lines)


def bar_chart(summary, path, footer):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("h36m", "p1", "synthetic H36M: P1 (mm, lower is better)"),
              ("3dhp", "pck", "synthetic 3DHP: PCK (%, higher is better)")]
    panels = [panel for panel in panels if any(cell[0] == panel[0] for cell in summary)]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 3.8),
                                squeeze=False)
    colours = {"images": "#3b75af", "blank": "#9a9a9a", "same_text": "#ef8636"}
    for axis, (dataset, key, title) in zip(axes[0], panels):
        for offset, variant in enumerate(VARIANTS):
            xs, means, stds = [], [], []
            for position, config in enumerate(("paper", "corrected")):
                cell = summary.get((dataset, config, variant))
                if cell is None:
                    continue
                mean, std, _ = cell[key]
                xs.append(position + (offset - 1) * 0.26)
                means.append(mean)
                stds.append(0.0 if std != std else std)
            if xs:
                axis.bar(xs, means, 0.25, yerr=stds, capsize=3, label=variant,
                         color=colours[variant])
        axis.set_xticks([0, 1], ["paper", "corrected"])
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    figure.text(0.01, 0.01, footer, fontsize=7, color="#555555")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(args, results, command):
    if not results:
        print("no finished runs: nothing to report", flush=True)
        return
    summary = summarise(results)
    wall_s = sum(entry["wall_s"] for entry in results.values())
    figure = os.path.relpath(args.figure, os.path.dirname(os.path.abspath(args.markdown)))
    atomic_write_text(args.markdown, markdown_page(results, summary, command, wall_s,
                                                   len(planned_runs(args)), figure))
    bar_chart(summary, args.figure, f"{command}  |  {machine_text()}")
    print(f"wrote {args.markdown} and {args.figure}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    results = load_results(args.out)
    if not args.report_only:
        run_all(args, results)
    command = "python benchmarks/synthetic_ablation.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    write_report(args, results, command.strip())
    return 0


if __name__ == "__main__":
    run_cli(main)
