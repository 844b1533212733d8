"""The one-shot GPU check behind benchmarks/gpu_check.sh: dependencies, the CUDA tests, the speed
and memory targets, bf16 against fp32 on a trained checkpoint, the input pipeline; one overall
deadline, one JSON summary and one log, and an exit status that fails loudly.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine, about 6 minutes
    bash benchmarks/gpu_check.sh --cpu-smoke          # the same steps on a CPU at tiny sizes
    bash benchmarks/gpu_check.sh --train-target 2500 --eval-target 3000 --deadline 420

Targets (paper configuration: HRNet-W32, CLIP ViT-B/32, 256x192 crops, batch 400, one GPU):
train >= 3000 samples/s, evaluation with flip test >= 3500 samples/s, peak training memory
<= 14 GiB allocated, a training step >= 0.6 x the frozen encoder's forward alone, the input
pipeline (16 workers) at least as fast as the training step, and bf16 within 2 % of fp32 in P1
on a demo checkpoint trained here. --cpu-smoke keeps the same steps and targets that any CPU
reaches, so that a test can run the whole script.

Output under $OUT (./gpu_check_out without it): gpu_check.json (the summary: every step with its
status and seconds, every figure, every target, "failed": the names of what failed) and
gpu_check.log (everything every step printed). Exit status 0 when nothing failed, else 1, and
the last line names every failed test, step and target.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imported by the project or its tests; a missing one stops the check before anything runs.
REQUIRED_MODULES = ("torch", "torchvision", "numpy", "cv2", "yaml", "easydict", "open_clip",
                    "regex", "ftfy", "tqdm", "tensorboard", "matplotlib", "psutil", "pytest")
# Each step's share of the deadline at most (seconds), in running order.
STEP_LIMITS = {"dependencies": 30, "tests": 120, "throughput": 210, "encoder": 60,
                   "bf16_vs_fp32": 150, "input_pipeline": 120}
RESERVE_S = 10.0  # kept for the summary
STEPS = ("tests", "throughput", "encoder", "bf16_vs_fp32", "input_pipeline")


class Check:
    """The state of one run: the deadline, the log, the summary."""

    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out or os.environ.get("OUT") or
                                   os.path.join(REPO, "gpu_check_out"))
        os.makedirs(self.out, exist_ok=True)
        self.log_path = os.path.join(self.out, "gpu_check.log")
        self.log_file = open(self.log_path, "w", encoding="utf-8")
        self.work = tempfile.mkdtemp(prefix="gpu_check_")
        self.started = time.monotonic()
        self.summary = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu",
                        "deadline_s": args.deadline, "steps": {}, "figures": {},
                        "targets": [], "failed": []}

    def remaining(self):
        return self.args.deadline - (time.monotonic() - self.started) - RESERVE_S

    def say(self, text):
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def fail(self, name):
        self.summary["failed"].append(name)
        self.say(f"FAIL  {name}")

    def run(self, step, command, limit, env=None):
        """Runs `command` (a list) with at most min(limit, what the deadline leaves) seconds;
        its output goes to the log. Returns its stdout, or None when it failed (recorded)."""
        budget = min(limit, self.remaining())
        record = self.summary["steps"].setdefault(step, {"commands": []})
        if budget < 5:
            record["status"] = "not run: the deadline was reached"
            self.fail(f"step {step} (not run: deadline)")
            return None
        self.say(f"== {step}: {' '.join(command)}  (at most {budget:.0f} s)")
        started = time.monotonic()
        try:
            result = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=budget)
            output, status = result.stdout, result.returncode
        except subprocess.TimeoutExpired as expired:
            output = expired.stdout or ""
            output = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
            status = f"timed out after {budget:.0f} s"
        seconds = time.monotonic() - started
        self.log_file.write(output)
        self.log_file.flush()
        record["commands"].append({"command": command, "seconds": round(seconds, 1),
                                   "status": status})
        if status != 0:
            record["status"] = f"failed ({status})"
            self.fail(f"step {step} ({'exit ' if isinstance(status, int) else ''}{status})")
            tail = output.strip().splitlines()[-3:]
            for line in tail:
                self.say(f"      {line}")
            return None
        record.setdefault("status", "ok")
        return output

    def target(self, name, value, op, bound, unit=""):
        ok = value is not None and (value >= bound if op == ">=" else value <= bound)
        self.summary["targets"].append({"name": name, "value": value, "op": op, "bound": bound,
                                        "unit": unit, "pass": ok})
        shown = "missing" if value is None else f"{value:.4g}{unit}"
        self.say(f"{'PASS' if ok else 'FAIL'}  {name}: {shown} (target {op} {bound:g}{unit})")
        if not ok:
            self.summary["failed"].append(f"target {name}")

    def finish(self):
        summary = self.summary
        summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        with open(os.path.join(self.out, "gpu_check.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        shutil.rmtree(self.work, ignore_errors=True)
        if summary["failed"]:
            self.say(f"gpu_check FAILED ({len(summary['failed'])}): "
                     + "; ".join(summary["failed"]))
        else:
            self.say(f"gpu_check passed: {len(summary['targets'])} targets, "
                     f"{summary['elapsed_s']:.0f} s")
        self.say(f"summary {os.path.join(self.out, 'gpu_check.json')}, log {self.log_path}")
        self.log_file.close()
        return 1 if summary["failed"] else 0


# ----------------------------------------------------------------------------------------------
# Steps


def check_dependencies(check):
    """Every module the project imports, CUDA (unless --cpu-smoke); pytest-xdist is optional
    (the tests run with pytest.ini's options cleared, so without -n)."""
    started = time.monotonic()
    missing = []
    for name in REQUIRED_MODULES:  # found without importing (the steps import them)
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError) as error:
            found, name = False, f"{name} ({type(error).__name__}: {error})"
        if not found:
            missing.append(name)
    record = check.summary["steps"]["dependencies"] = {
        "seconds": None, "missing": missing,
        "xdist": importlib.util.find_spec("xdist") is not None}
    if missing:
        check.fail("step dependencies (missing: " + ", ".join(m.split(" ")[0] for m in missing)
                   + ")")
        for line in missing:
            check.say(f"      missing {line}")
        check.say("      build their wheels on a machine with internet and carry them in .whl "
                  "(see the header of benchmarks/gpu_check.sh)")
    try:
        import torch
    except Exception as error:  # noqa: BLE001 (a broken torch install is reported, not raised)
        check.fail(f"step dependencies (torch cannot be imported: {error})")
        return False
    cuda = torch.cuda.is_available()
    check.summary.update(torch=torch.__version__, python=platform.python_version(),
                         device=(torch.cuda.get_device_name() if cuda else
                                 f"cpu ({os.cpu_count()} cores)"),
                         commit=_commit())
    if not cuda and not check.args.cpu_smoke:
        missing.append("cuda")
        check.fail("step dependencies (CUDA is not available; --cpu-smoke runs on a CPU)")
    record["seconds"] = round(time.monotonic() - started, 1)
    record["status"] = "ok" if not missing else "failed"
    check.say(f"# {check.summary['device']}; torch {check.summary['torch']}; python "
              f"{check.summary['python']}; commit {check.summary['commit']}")
    return not missing


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tests(check, limit):
    """The tests whose CUDA paths only a GPU runs, and the folded encoder's; failed tests are
    named one by one (from the JUnit report)."""
    if check.args.cpu_smoke:
        selection = ["tests/test_hrnet_folding.py", "-k", "every_batch_norm"]
    else:
        selection = ["tests/test_speed_equivalence.py", "tests/test_hrnet_folding.py",
                     "tests/test_host_syncs.py"]
    report = os.path.join(check.out, "gpu_check_tests.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "-m", "not slow", f"--junitxml={report}", *selection]
    output = check.run("tests", command, limit)
    failed = _failed_tests(report)
    for name in failed:
        check.fail(f"test {name}")
    check.summary["steps"]["tests"]["failed_tests"] = failed
    return output is not None and not failed


def _failed_tests(report):
    if not os.path.isfile(report):
        return []
    failed = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
    return failed


def _json_line(output):
    """The last line of `output` that is a JSON object."""
    for line in reversed((output or "").strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


def measure_throughput(check, limit):
    if check.args.cpu_smoke:
        sizes = ["--config", "experiments/tests/tiny.yaml", "--batch-size", "2", "--steps", "1",
                 "--warmup", "0"]
    else:
        sizes = ["--batch-size", "400"]
    command = [sys.executable, "benchmarks/throughput.py", "--device", check.device, *sizes,
               "--compare", "--json"]
    report = _json_line(check.run("throughput", command, limit))
    check.summary["figures"]["throughput"] = report
    return report


def measure_encoder(check, limit):
    if check.args.cpu_smoke:
        sizes = ["--batch-size", "1", "--image-size", "64", "48", "--steps", "1",
                 "--warmup", "0"]
    else:
        sizes = ["--batch-size", "400", "--amp", "bf16", "--channels-last"]
    command = [sys.executable, "benchmarks/encoder.py", "--device", check.device, *sizes,
               "--json"]
    report = _json_line(check.run("encoder", command, limit))
    check.summary["figures"]["encoder"] = report
    return report


def compare_bf16(check, limit):
    """Trains a demo checkpoint (a few epochs of the synthetic demo; --cpu-smoke: the tiny
    config, one epoch), then evaluates it in fp32 and in bf16 (train.py --eval): the P1 of
    both. With random weights the difference would be noise."""
    logs = os.path.join(check.work, "logs")
    if check.args.cpu_smoke:
        config = ["--config", "experiments/tests/tiny.yaml",
                  f"data.root={os.path.join(check.work, 'tiny')}", "train.epochs=1",
                  "eval.num_visualize=0"]
    else:
        config = ["--config", "experiments/synthetic/demo.yaml",
                  f"data.root={os.path.join(check.work, 'demo')}", "train.epochs=4",
                  "eval.every=4", "eval.num_visualize=0", "speed.amp=bf16"]
    step_started = time.monotonic()
    trained = check.run("bf16_vs_fp32", [sys.executable, "train.py", *config, "--logdir", logs,
                                         "--run-name", "demo"], limit)
    if trained is None:
        return None
    checkpoint = os.path.join(logs, "demo", "checkpoints", "best.pt")
    scores = {}
    for amp in ("none", "bf16"):
        left = limit - (time.monotonic() - step_started)
        done = check.run("bf16_vs_fp32", [sys.executable, "train.py", *config, "--eval",
                                          "--checkpoint", checkpoint, "--logdir", logs,
                                          "--run-name", f"eval_{amp}", f"speed.amp={amp}"], left)
        if done is None:
            return None
        with open(os.path.join(logs, f"eval_{amp}", "eval.json"), encoding="utf-8") as handle:
            scores[amp] = json.load(handle)["p1"]
    figures = {"p1_fp32_mm": scores["none"], "p1_bf16_mm": scores["bf16"],
               "p1_difference_mm": abs(scores["bf16"] - scores["none"]),
               "amp_applies": check.device == "cuda"}
    check.summary["figures"]["bf16_vs_fp32"] = figures
    return figures


def measure_input_pipeline(check, limit):
    """A synthetic set of 256x192 JPEG crops read by the training loader (16 workers on a GPU
    machine), alone and feeding the training steps."""
    data = os.path.join(check.work, "crops")
    frames = "64" if check.args.cpu_smoke else "8000"
    step_started = time.monotonic()
    made = check.run("input_pipeline", [sys.executable, "tools/make_synthetic.py", "--out", data,
                                        "--train-frames", frames, "--val-frames", "16",
                                        "--seed", "0"], limit)
    if made is None:
        return None
    if check.args.cpu_smoke:
        sizes = ["--config", "experiments/tests/tiny.yaml", "--workers", "1", "--batch-size", "8",
                 "--steps", "2", "--warmup", "1"]
    else:
        sizes = ["--workers", "16", "--batch-size", "400", "--steps", "15", "--warmup", "3"]
    left = limit - (time.monotonic() - step_started)
    report = _json_line(check.run("input_pipeline", [
        sys.executable, "benchmarks/throughput.py", "--device", check.device, "--data", data,
        *sizes, "--with-model", "--json"], left))
    check.summary["figures"]["input_pipeline"] = report
    return report


# ----------------------------------------------------------------------------------------------
# Targets


def check_targets(check, results, chosen):
    """The targets of the steps in `chosen` (a step that failed leaves its targets missing,
    which fails them too)."""
    args = check.args
    throughput, encoder = results["throughput"], results["encoder"]
    bf16, pipeline = results["bf16_vs_fp32"], results["input_pipeline"]
    train = throughput and throughput.get("train_samples_per_s")
    if "throughput" in chosen:
        check.target("train samples/s", train, ">=", args.train_target)
        check.target("eval samples/s (flip test)",
                     throughput and throughput.get("eval_samples_per_s"), ">=", args.eval_target)
        check.target("peak train memory, allocated", throughput and throughput.get("peak_mem_gb"),
                     "<=", args.memory_target, " GiB")
        if throughput and throughput.get("peak_mem_reserved_gb") is not None:
            check.say(f"info  peak train memory, reserved: "
                      f"{throughput['peak_mem_reserved_gb']:.2f} GiB (what nvidia-smi shows, "
                      "without the CUDA context)")
        if not args.cpu_smoke:
            check.target("train / encoder forward alone", throughput and
                         throughput.get("train_over_encoder"), ">=", 0.6)
    if "input_pipeline" in chosen:
        check.target("input pipeline samples/s" + ("" if args.cpu_smoke else
                                                   " (16 workers) vs the train step"),
                     pipeline and pipeline.get("data_samples_per_s"), ">=",
                     0.01 if args.cpu_smoke else (train or args.train_target))
        if pipeline and pipeline.get("train_samples_per_s") is not None:
            check.say(f"info  training fed by the loader: {pipeline['train_samples_per_s']:.0f} "
                      "samples/s")
    if "bf16_vs_fp32" in chosen:
        relative = None
        if bf16:
            relative = bf16["p1_difference_mm"] / max(abs(bf16["p1_fp32_mm"]), 1e-9)
            check.say(f"info  P1 fp32 {bf16['p1_fp32_mm']:.2f} mm, bf16 "
                      f"{bf16['p1_bf16_mm']:.2f} mm" + ("" if bf16["amp_applies"] else
                                                         " (autocast is CUDA-only: both fp32 "
                                                         "here)"))
        check.target("bf16 P1 vs fp32 P1, relative difference", relative, "<=", 0.02)
    if "encoder" in chosen:
        bound = 1e-4 if not encoder or encoder["amp"] == "none" else 1e-2
        check.target("folded encoder vs plain layers, largest relative difference",
                     encoder and encoder.get("max_rel_diff"), "<=", bound)
        if encoder:
            check.say(f"info  encoder forward: folded {encoder['folded_samples_per_s']:.1f}, "
                      f"plain {encoder['plain_samples_per_s']:.1f} samples/s "
                      f"({encoder['folded_speedup']:.2f}x)" + (
                          "" if "peak_allocated_gb" not in encoder else
                          f"; peak {encoder['peak_allocated_gb']:.1f} GiB allocated, "
                          f"{encoder['peak_reserved_gb']:.1f} GiB reserved"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="the same steps on the CPU at tiny sizes (a few minutes)")
    parser.add_argument("--train-target", type=float, default=None,
                        help="training samples/s to reach (default 3000; --cpu-smoke 0.01)")
    parser.add_argument("--eval-target", type=float, default=None,
                        help="evaluation samples/s with flip test (default 3500; --cpu-smoke 0.01)")
    parser.add_argument("--memory-target", type=float, default=14.0,
                        help="peak training memory in GiB, allocated (default 14)")
    parser.add_argument("--deadline", type=float, default=480.0,
                        help="seconds for everything (default 480: a 10-minute call with room "
                             "for the machine's start and the copies)")
    parser.add_argument("--out", default=None, help="output folder (default $OUT)")
    parser.add_argument("--only", default=None, metavar="STEP[,STEP]",
                        help=f"run only these steps (of {', '.join(STEPS)}) and their targets")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    smoke_default = 0.01
    if args.train_target is None:
        args.train_target = smoke_default if args.cpu_smoke else 3000.0
    if args.eval_target is None:
        args.eval_target = smoke_default if args.cpu_smoke else 3500.0
    check = Check(args)
    check.device = "cpu" if args.cpu_smoke else "cuda"
    limits = dict(STEP_LIMITS)  # tiny sizes on a CPU take about as long (interpreter starts)
    chosen = STEPS if args.only is None else tuple(args.only.split(","))
    unknown = [name for name in chosen if name not in STEPS]
    if unknown:
        build_parser().error(f"--only: unknown step(s) {', '.join(unknown)}; steps: "
                             f"{', '.join(STEPS)}")
    check.summary["steps_chosen"] = list(chosen)
    if check_dependencies(check):
        measures = {"tests": run_tests, "throughput": measure_throughput,
                    "encoder": measure_encoder, "bf16_vs_fp32": compare_bf16,
                    "input_pipeline": measure_input_pipeline}
        results = {name: measures[name](check, limits[name]) if name in chosen else None
                   for name in STEPS}
        check_targets(check, results, chosen)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
