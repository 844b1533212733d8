"""train.py end to end on the tiny synthetic set (CPU): artefacts, exact resume after a stop or a
SIGTERM, multi-process training (torchrun) and evaluation that counts every frame once."""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import train
from tests.launch import child_env, free_port
from utils import run_dir, training_checkpoint
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
VAL_FRAMES = 37  # experiments/tests/tiny.yaml


def _env(warnings="ignore"):
    return child_env(PYTHONWARNINGS=warnings)


def _command(args, processes=1, launcher="torch.distributed.run"):
    if processes == 1:
        return [sys.executable, os.path.join(REPO, "train.py")] + args
    return [sys.executable, "-m", launcher, f"--nproc_per_node={processes}",
            f"--master_port={free_port()}", os.path.join(REPO, "train.py")] + args


def run_train(args, processes=1, launcher="torch.distributed.run", expect=0, warnings="ignore"):
    result = subprocess.run(_command(args, processes, launcher), cwd=REPO, env=_env(warnings),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


class Workspace:
    def __init__(self, root):
        self.data = os.path.join(root, "data")
        self.logs = os.path.join(root, "logs")

    def args(self, run_name, *extra):
        # batch 8: eight steps per epoch, so that a SIGTERM lands inside an epoch.
        return ["--config", TINY, "--logdir", self.logs, "--run-name", run_name, *extra,
                f"data.root={self.data}", "train.batch_size=8", "train.log_every=1"]

    def run_dir(self, run_name):
        return os.path.join(self.logs, run_name)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from datasets.synthetic import generate_synthetic

    space = Workspace(str(tmp_path_factory.mktemp("train_cli")))
    generate_synthetic(space.data, 64, VAL_FRAMES, seed=0, verbose=False)
    return space


@pytest.fixture(scope="module")
def baseline(workspace):
    """One uninterrupted 2-epoch run that the other tests compare against."""
    run_train(workspace.args("base"))
    return workspace.run_dir("base")


def test_training_writes_every_artefact(baseline):
    with open(os.path.join(baseline, "config.yaml"), encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith("# git commit: ")
    config = yaml.safe_load(text)
    assert config["train"]["epochs"] == 2 and config["train"]["batch_size"] == 8
    assert train.load_config(os.path.join(baseline, "config.yaml")).train.batch_size == 8
    assert open(os.path.join(baseline, "git_commit.txt")).read().strip()
    log = open(os.path.join(baseline, "log.txt"), encoding="utf-8").read()
    assert "epoch 2/2" in log and "Average" in log and f"{VAL_FRAMES} frames" in log

    metrics = read_metrics(baseline)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for entry in metrics:
        assert entry["frames"] == VAL_FRAMES
        assert sum(v["frames"] for v in entry["per_action"].values()) == VAL_FRAMES
        assert 0 < entry["p2"] < entry["p1"]
    last = load(os.path.join(baseline, "checkpoints", "last.pt"))
    best = load(os.path.join(baseline, "checkpoints", "best.pt"))
    assert last["epoch"] == 2 and last["batches_done"] == 0 and not last["eval_pending"]
    assert best["best_score"] == min(m["p1"] for m in metrics) == last["best_score"]
    assert best["epoch"] == min(metrics, key=lambda m: m["p1"])["epoch"]
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 0.99 ** 2)
    assert len(last["rng_states"]) == 1 and last["config"]["train"]["epochs"] == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events,) = glob.glob(os.path.join(baseline, "tb", "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    for tag in ("train/loss_m", "train/mpjpe_mm", "train/lr", "train/samples_per_s", "val/p1_mm",
                "val/p2_mm", "train_step/loss_m", "train_step/mpjpe_mm"):
        assert tag in scalars, tag
    # Every MPJPE curve in millimetres: the epoch's training MPJPE as the log prints it.
    assert "train/mpjpe" not in scalars and "train_step/mpjpe" not in scalars
    logged_mm = float(log.split("epoch 2/2")[1].split("mpjpe ")[1].split(" mm")[0])
    assert accumulator.Scalars("train/mpjpe_mm")[-1].value == pytest.approx(logged_mm, abs=0.06)
    assert any(tag.startswith("val_p1_mm_per_action/") for tag in scalars)
    assert "val_figures/frames" in accumulator.Tags()["images"]
    logged = [event.value for event in accumulator.Scalars("val/p1_mm")]
    assert logged == pytest.approx([m["p1"] for m in metrics])


def test_resume_after_stop_and_sigterm_is_exact(workspace, baseline):
    """Epochs 1 | SIGTERM inside epoch 2 | the rest: the same weights, optimizer and metrics
    as the uninterrupted run."""
    run_dir = workspace.run_dir("chain")
    run_train(workspace.args("chain") + ["train.epochs=1"])
    first = load(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert first["epoch"] == 1 and first["batches_done"] == 0

    process = subprocess.Popen(_command(workspace.args("chain", "--resume")), cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if "epoch 2 step 1/8" in line:
            process.send_signal(signal.SIGTERM)
            break
    output.append(process.stdout.read())
    assert process.wait(timeout=300) == 143, "".join(output)[-3000:]
    assert "resumed from" in "".join(output) and "1 epoch(s) done" in "".join(output)
    stopped = load(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert stopped["epoch"] == 1 and 0 < stopped["batches_done"] < 8

    result = run_train(workspace.args("chain", "--resume"))
    assert f"+ {stopped['batches_done']} batches" in result.stdout

    reference, resumed = read_metrics(baseline), read_metrics(run_dir)
    assert [m["epoch"] for m in resumed] == [1, 2]
    for a, b in zip(reference, resumed):
        assert b["p1"] == pytest.approx(a["p1"], abs=1e-9)
        assert b["p2"] == pytest.approx(a["p2"], abs=1e-9)
    a = load(os.path.join(baseline, "checkpoints", "last.pt"))
    b = load(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert a["scheduler"] == b["scheduler"] and a["best_score"] == b["best_score"]


def _same_weights(run_a, run_b):
    a = load(os.path.join(run_a, "checkpoints", "last.pt"))["model"]
    b = load(os.path.join(run_b, "checkpoints", "last.pt"))["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cpu_training_is_deterministic(workspace, baseline):
    """The same command twice (2 compute threads) gives bit-identical weights and metrics, and
    DataLoader workers change nothing: 1 worker ends exactly where the baseline's 0 did."""
    for name in ("det_a", "det_b"):
        run_train(workspace.args(name, "speed.cpu_threads=2"))
    run_train(workspace.args("det_workers", "speed.cpu_threads=1", "data.num_workers=1"))
    for one, other in (("det_a", "det_b"), ("base", "det_workers")):
        first, second = workspace.run_dir(one), workspace.run_dir(other)
        assert _same_weights(first, second), (one, other)
        assert read_metrics(first) == read_metrics(second), (one, other)
    log = open(os.path.join(workspace.run_dir("det_workers"), "log.txt"), encoding="utf-8").read()
    assert "1 compute thread(s) and 1 DataLoader worker(s)" in log


RANDOM_INIT = "randomly initialised"


def test_no_random_init_warning_when_weights_come_from_a_checkpoint(workspace, baseline):
    """A fresh start warns that the encoders are random (the tiny config has no pretrained
    files); --eval, --resume and --checkpoint load every weight, so they must not."""
    fresh = run_train(workspace.args("warn_fresh", "train.epochs=1"), warnings="default")
    assert RANDOM_INIT in fresh.stdout + fresh.stderr
    checkpoint = os.path.join(baseline, "checkpoints", "last.pt")
    runs = {"--eval": ["--eval", "--checkpoint", checkpoint],
            "--checkpoint": ["--checkpoint", checkpoint, "train.epochs=1"],
            "--resume": ["--resume"]}
    for name, extra in runs.items():
        run_name = "warn_fresh" if name == "--resume" else f"warn{name}"
        if name == "--resume":
            extra = extra + ["train.epochs=2"]
        result = run_train(workspace.args(run_name, *extra), warnings="default")
        output = result.stdout + result.stderr
        assert RANDOM_INIT not in output, (name, output[-3000:])
        log = open(os.path.join(workspace.run_dir(run_name), "log.txt"), encoding="utf-8").read()
        if name == "--resume":  # the log of the run goes on from its fresh start
            log = log.split("resumed from")[-1]
        assert RANDOM_INIT not in log, name


def test_fresh_start_never_overwrites_a_run(workspace, baseline):
    before = os.path.getmtime(os.path.join(baseline, "checkpoints", "last.pt"))
    result = run_train(workspace.args("base"), expect=2)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "--resume" in result.stderr and "--run-name" in result.stderr
    assert os.path.getmtime(os.path.join(baseline, "checkpoints", "last.pt")) == before


def test_every_rank_reports_an_error_of_rank_0(workspace, baseline):
    """The fresh-start refusal found by rank 0 reaches rank 1 too: both exit, nobody hangs."""
    result = run_train(workspace.args("base"), processes=2, expect=1)
    assert result.stderr.count("already holds checkpoints") >= 2


def _tree(folder):
    """{path: mtime} of everything in `folder` but its lock file (which names its last holder)."""
    return {path: os.path.getmtime(path)
            for path in glob.glob(os.path.join(folder, "**"), recursive=True)
            if os.path.basename(path) != ".lock"}


def test_eval_gives_the_same_result_with_1_2_3_processes(workspace, baseline):
    """... and writes into a folder of its own (never into the run of the checkpoint), with an
    eval.json that names the checkpoint and the data."""
    def file_sha256(path):
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    checkpoint = os.path.join(baseline, "checkpoints", "last.pt")
    untouched = _tree(baseline)
    results = {}
    launchers = ((1, None), (2, "torch.distributed.launch"), (3, "torch.distributed.run"))
    for processes, launcher in launchers:
        name = f"eval{processes}"
        args = workspace.args(name, "--eval", "--checkpoint", checkpoint)
        if processes == 1:  # the default folder: <logdir>/eval_<run>_<checkpoint>_<date-time>
            args.remove("--run-name")
            args.remove(name)
        run_train(args, processes, launcher)
        if processes == 1:
            (folder,) = glob.glob(os.path.join(workspace.logs, "eval_base_last_*"))
            name = os.path.basename(folder)
        with open(os.path.join(workspace.run_dir(name), "eval.json"), encoding="utf-8") as handle:
            results[processes] = json.load(handle)
    assert _tree(baseline) == untouched
    final = read_metrics(baseline)[-1]
    for processes, result in results.items():
        assert result["frames"] == VAL_FRAMES, processes
        assert result["epoch"] == 2 and set(result) == set(final) | {"checkpoint", "data"}
        assert result["checkpoint"] == {"path": checkpoint, "sha256": file_sha256(checkpoint)}
        validation = os.path.join(workspace.data, "h36m_validation.pkl")
        assert result["data"] == {"validation": {"path": validation, "frames": VAL_FRAMES,
                                                 "sha256": file_sha256(validation)}}
        assert result["p1"] == pytest.approx(final["p1"], abs=0.01), processes
        assert result["p2"] == pytest.approx(final["p2"], abs=0.01), processes
        for name, values in final["per_action"].items():
            assert result["per_action"][name]["frames"] == values["frames"]


@pytest.fixture(scope="module")
def ddp_baseline(workspace):
    """One uninterrupted 2-epoch run with 2 processes (torchrun), and its stdout."""
    result = run_train(workspace.args("ddp"), processes=2)
    return workspace.run_dir("ddp"), result.stdout


def test_torchrun_two_processes_train_and_evaluate(ddp_baseline):
    run_dir, stdout = ddp_baseline
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["frames"] == VAL_FRAMES for m in metrics)
    checkpoint = load(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert "2 process(es)" in stdout and "4 steps per epoch" in stdout


def _kill_tree(process):
    """SIGKILL to a launcher and every process below it (torchrun starts each rank in a session
    of its own, so killing its process group would leave the ranks running)."""
    import psutil

    try:
        victims = [psutil.Process(process.pid)]
        victims += victims[0].children(recursive=True)
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(victims, timeout=30)


def test_sigkill_then_resume_with_two_processes_is_exact(workspace, ddp_baseline):
    """kill -9 of a 2-process run in epoch 2 (after epoch 1's checkpoint), with a half-written
    checkpoint left beside it as a kill during a save leaves one; a bare --resume continues from
    the last complete checkpoint and ends with the uninterrupted run's weights and metrics."""
    run_dir = workspace.run_dir("killed")
    process = subprocess.Popen(_command(workspace.args("killed"), processes=2), cwd=REPO,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "epoch 2 step 2/4" in line:
                break
    finally:
        _kill_tree(process)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "".join(output)[-3000:]
    checkpoints = os.path.join(run_dir, "checkpoints")
    killed = load(os.path.join(checkpoints, "last.pt"))
    assert killed["epoch"] == 1 and killed["batches_done"] == 0
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1]
    with open(os.path.join(checkpoints, "last.pt"), "rb") as handle:
        half = handle.read()[:4096]
    partial = os.path.join(checkpoints, ".last.pt.interrupted.tmp")
    with open(partial, "wb") as handle:
        handle.write(half)
    partial_metrics = os.path.join(run_dir, ".metrics.jsonl.interrupted.tmp")
    with open(partial_metrics, "w", encoding="utf-8") as handle:
        handle.write('{"epoch": 2, "p1"')

    result = run_train(workspace.args("killed", "--resume"), processes=2)
    assert "1 epoch(s) done" in result.stdout and not os.path.exists(partial)
    assert not os.path.exists(partial_metrics)  # one cleanup for every atomic write
    reference_dir, _ = ddp_baseline
    reference, resumed = read_metrics(reference_dir), read_metrics(run_dir)
    assert [m["epoch"] for m in resumed] == [1, 2]
    for a, b in zip(reference, resumed):
        assert b["frames"] == a["frames"] == VAL_FRAMES
        assert b["p1"] == pytest.approx(a["p1"], abs=1e-9)
        assert b["p2"] == pytest.approx(a["p2"], abs=1e-9)
    print(f"final P1, 2 processes: uninterrupted {reference[-1]['p1']:.4f} mm, killed after "
          f"epoch 1 and resumed {resumed[-1]['p1']:.4f} mm")
    a = load(os.path.join(reference_dir, "checkpoints", "last.pt"))
    b = load(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# ---------------------------------------------------------------------------------------------
# In-process checks of the command line (no training)


def test_encoder_flags_switch_default_pretrained_files():
    paper = os.path.join(REPO, "experiments", "human36m", "human36m.yaml")
    config = train.resolve_config(train.parse_args(
        ["--config", paper, "--image-encoder", "hrnet_48", "--text-encoder", "ViT-L/14"]))
    assert config.model.image_encoder.type == "hrnet_48"
    assert config.model.image_encoder.pretrained == \
        "data/pretrained/coco/pose_hrnet_w48_256x192.pth"
    assert config.model.text_encoder.type == "ViT-L/14"
    assert config.model.text_encoder.pretrained == "data/pretrained/clip/ViT-L-14.pt"
    # An explicit override wins; a null (random) initialisation stays null.
    config = train.resolve_config(train.parse_args(
        ["--config", paper, "--image-encoder", "hrnet_48",
         "model.image_encoder.pretrained=my.pth"]))
    assert config.model.image_encoder.pretrained == "my.pth"
    config = train.resolve_config(
        train.parse_args(["--config", TINY, "--image-encoder", "hrnet_48"]))
    assert config.model.image_encoder.pretrained is None


def test_resume_without_file_before_overrides():
    args = train.parse_args(["--config", TINY, "--resume", "train.epochs=3", "train.lr=0.1"])
    assert args.resume == "" and args.overrides == ["train.epochs=3", "train.lr=0.1"]
    args = train.parse_args(["--config", TINY, "--local-rank=1", "--resume", "x.pt"])
    assert args.resume == "x.pt" and args.local_rank == 1
    args = train.parse_args(["--config", TINY, "a.b=1", "--run-name", "x", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"] and args.run_name == "x"


def test_unwritable_logdir_and_missing_eval_checkpoint(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the log dir should be")
    with pytest.raises(MetaPoseError, match="not_a_dir"):
        train.main(["--config", TINY, "--logdir", str(blocker / "logs")])
    monkeypatch.setattr(train, "REPO_ROOT", str(tmp_path))
    with pytest.raises(MetaPoseError) as error:
        train.main(["--config", TINY, "--logdir", str(tmp_path / "logs"), "--eval",
                    "--image-encoder", "hrnet_48"])
    assert "best_epoch_hrnet_48.bin" in str(error.value)
    assert "--checkpoint logs/" in str(error.value)
    assert not os.path.exists(tmp_path / "logs")  # a failed start leaves nothing behind


def test_eval_refuses_a_folder_that_holds_results(workspace, baseline):
    untouched = _tree(baseline)
    result = run_train(workspace.args("base", "--eval", "--checkpoint",
                                      os.path.join(baseline, "checkpoints", "best.pt")), expect=2)
    assert result.stderr.startswith(f"error: run directory '{baseline}' already holds results")
    assert _tree(baseline) == untouched


def test_metrics_file_drops_epochs_after_the_resumed_checkpoint(tmp_path):
    paths = run_dir.RunPaths(str(tmp_path))
    for epoch in (1, 2, 3):
        run_dir.record_metrics(paths, {"epoch": epoch, "p1": 1.0})
    run_dir.record_metrics(paths, None, keep_until_epoch=2)
    run_dir.record_metrics(paths, {"epoch": 3, "p1": 0.5})
    kept = [(m["epoch"], m["p1"]) for m in read_metrics(str(tmp_path))]
    assert kept == [(1, 1.0), (2, 1.0), (3, 0.5)]


def test_bare_resume_takes_the_newest_readable_checkpoint(tmp_path):
    """last.pt damaged (e.g. copied incompletely): a bare --resume falls back to best.pt, with a
    warning; with nothing readable left it says so."""
    import logging

    from utils.checkpoint import save_checkpoint

    paths = run_dir.RunPaths(str(tmp_path))
    logger = logging.getLogger("test_resume")
    save_checkpoint({"format": training_checkpoint.CHECKPOINT_FORMAT, "epoch": 2}, paths.last)
    save_checkpoint({"format": training_checkpoint.CHECKPOINT_FORMAT, "epoch": 1}, paths.best)
    path, checkpoint = training_checkpoint.find_resume_checkpoint(paths, logger)
    assert path == paths.last and checkpoint["epoch"] == 2
    with open(paths.last, "r+b") as handle:
        handle.truncate(200)
    path, checkpoint = training_checkpoint.find_resume_checkpoint(paths, logger)
    assert path == paths.best and checkpoint["epoch"] == 1
    os.remove(paths.best)
    with pytest.raises(MetaPoseError, match="no readable checkpoint.*truncated"):
        training_checkpoint.find_resume_checkpoint(paths, logger)
    os.remove(paths.last)
    with pytest.raises(MetaPoseError, match="found nothing to resume"):
        training_checkpoint.find_resume_checkpoint(paths, logger)


# ---------------------------------------------------------------------------------------------
# Two machines, simulated by two torchrun agents meeting through c10d on 127.0.0.1


def _two_agents(arguments, folders):
    """Runs train.py under two torchrun agents of one process each (--nnodes=2, c10d
    rendezvous), agent i with the arguments arguments[i] in the working folder folders[i];
    returns [(output, exit status)] of both."""
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                f"--rdzv_id=two{port}", os.path.join(REPO, "train.py")]
    agents = [subprocess.Popen(launcher + args, cwd=folder, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
              for args, folder in zip(arguments, folders)]
    return [(agent.communicate(timeout=600)[0], agent.returncode) for agent in agents]


def test_two_machines_train_like_one_and_generate_their_own_data(workspace, ddp_baseline,
                                                                  tmp_path):
    """Two agents (as two machines) with one process each give bit for bit the metrics and the
    weights of one machine with two processes; the second machine's data folder starts empty
    and its first process generates the same synthetic set (no shared filesystem for data)."""
    empty = str(tmp_path / "machine_b_data")
    args = workspace.args("two_machines")
    runs = _two_agents([args + [f"data.root={root}"] for root in (workspace.data, empty)],
                       [REPO, REPO])
    for output, status in runs:
        assert status == 0, output[-3000:]
    assert os.path.isfile(os.path.join(empty, "h36m_train.pkl"))  # generated there
    reference_dir, _ = ddp_baseline
    run_dir = workspace.run_dir("two_machines")
    reference, metrics = read_metrics(reference_dir), read_metrics(run_dir)
    assert [(m["epoch"], m["p1"], m["p2"]) for m in metrics] == \
        [(m["epoch"], m["p1"], m["p2"]) for m in reference]
    a = load(os.path.join(reference_dir, "checkpoints", "last.pt"))["model"]
    b = load(os.path.join(run_dir, "checkpoints", "last.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_over_machines_without_a_shared_run_directory_stops_at_start(workspace,
                                                                           ddp_baseline,
                                                                           tmp_path):
    """Each machine has its own --logdir (the same relative path, different working folders):
    rank 0 may sit on either, so --resume stops on both at start, naming the requirement."""
    import shutil

    reference_dir, _ = ddp_baseline
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(reference_dir, machine_a / "logs" / "ddp")
    machine_b.mkdir()
    args = ["--config", TINY, "--logdir", "logs", "--run-name", "ddp", "--resume",
            f"data.root={workspace.data}", "train.batch_size=8", "train.epochs=3"]
    for output, status in _two_agents([args, args], [str(machine_a), str(machine_b)]):
        assert status != 0
        assert "a filesystem every machine mounts at the same path" in output, output[-3000:]
    assert [m["epoch"] for m in read_metrics(str(machine_a / "logs" / "ddp"))] == [1, 2]
