"""Faults injected into real runs of train.py: kills between the writes of a save, a second
Ctrl-C during the evaluation, a full disk, a second writer, a SIGKILLed launcher, bad launcher
variables, changed settings or data on --resume, divergence.

Most runs execute `train.main` in a forked child (the imported modules are shared, so a run
costs its training, not an interpreter start); faults are installed in the child only.
"""

import glob
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train
from tests.launch import child_env, free_port, run_train_in_fork
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
VAL_FRAMES = 37


class Space:
    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "data")
        self.logs = os.path.join(root, "logs")

    def args(self, run_name, *extra, data=None):
        # batch 8: eight steps per epoch; no figures (they cost time and are tested elsewhere).
        # seed 2: with it epoch 2 is a new best (the kill tests need a best.pt write in epoch 2).
        return ["--config", TINY, "--logdir", self.logs, "--run-name", run_name,
                f"data.root={data or self.data}", "train.batch_size=8", "eval.num_visualize=0",
                "seed=2", *extra]

    def run_dir(self, name):
        return os.path.join(self.logs, name)

    def copy_run(self, source, name):
        shutil.copytree(self.run_dir(source), self.run_dir(name))
        return self.run_dir(name)


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def metrics(run_dir):
    return [json.loads(line) for line in read(os.path.join(run_dir, "metrics.jsonl")).splitlines()]


def load(run_dir, name):
    return torch.load(os.path.join(run_dir, "checkpoints", name), map_location="cpu",
                      weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temporaries(run_dir):
    return glob.glob(os.path.join(run_dir, "**", ".*.tmp"), recursive=True)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The tiny synthetic set and two reference runs: `one` after epoch 1, `two` resumed from a
    copy of it through epoch 2 (a resume is exact, so `two` is the uninterrupted run)."""
    from datasets.synthetic import generate_synthetic

    from models import build_model
    from utils.config import load_config

    space = Space(str(tmp_path_factory.mktemp("faults")))
    generate_synthetic(space.data, 64, VAL_FRAMES, seed=0, verbose=False)
    with pytest.warns(UserWarning):  # "randomly initialised"
        build_model(load_config(TINY))  # loads the tokenizer once for all the forked runs
    assert run_train_in_fork(space.args("one", "train.epochs=1")) == 0
    space.copy_run("one", "two")
    assert run_train_in_fork(space.args("two", "--resume", "train.epochs=2")) == 0
    reference = metrics(space.run_dir("two"))
    assert [m["epoch"] for m in reference] == [1, 2]
    assert reference[1]["p1"] < reference[0]["p1"]  # epoch 2 is a new best: best.pt is written
    return space


# ---------------------------------------------------------------------------------------------
# Kills between the writes of a save, and a second Ctrl-C during the evaluation


def kill_before_write(name, occurrence):
    """A fault: the process dies (SIGKILL-like, os._exit) just before its `occurrence`-th
    atomic replace of a file called `name`, leaving that write's temporary file behind."""
    def install():
        real_replace, seen = os.replace, []

        def replace(source, destination, *args, **kwargs):
            if os.path.basename(destination) == name:
                seen.append(destination)
                if len(seen) == occurrence:
                    os._exit(137)
            return real_replace(source, destination, *args, **kwargs)
        os.replace = replace
    return install


def second_ctrl_c_during_evaluation():
    import engine

    def evaluate(*args, **kwargs):
        raise KeyboardInterrupt  # what a second Ctrl-C raises while the evaluation runs
    engine.evaluate = evaluate


# (fault, exit status): the writes of epoch 2 are last.pt (trained, evaluation pending), then
# after the evaluation best.pt (new best), metrics.jsonl (its line; the first write of
# metrics.jsonl is the resume's cleanup), last.pt (evaluation done).
KILLS = {
    "before the epoch's last.pt": (kill_before_write("last.pt", 1), 137),
    "second Ctrl-C during the evaluation": (second_ctrl_c_during_evaluation, 130),
    "before best.pt": (kill_before_write("best.pt", 1), 137),
    "before the metrics line": (kill_before_write("metrics.jsonl", 2), 137),
    "before the final last.pt": (kill_before_write("last.pt", 2), 137),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_best_checkpoint_and_records_survive_a_kill_at_every_write(space, point):
    """After a kill at any point of epoch 2's saves, best.pt holds the weights of the best
    evaluation that metrics.jsonl or last.pt record; a bare --resume then ends exactly like the
    uninterrupted run (one metrics line per epoch, best.pt of the best epoch, no temporaries)."""
    fault, status = KILLS[point]
    name = "kill_" + point.replace(" ", "_").replace("'", "")
    run_dir = space.copy_run("one", name)
    output = os.path.join(space.root, name + ".txt")
    exit_status = run_train_in_fork(space.args(name, "--resume", "train.epochs=2"), fault, output)
    assert exit_status == status, read(output)[-3000:]

    one, two = space.run_dir("one"), space.run_dir("two")
    best, last = load(run_dir, "best.pt"), load(run_dir, "last.pt")
    reference = {1: load(one, "last.pt"), 2: load(two, "best.pt")}
    assert same_weights(best["model"], reference[best["epoch"]]["model"])
    assert best["best_score"] == reference[best["epoch"]]["best_score"]
    assert all(m["p1"] >= best["best_score"] for m in metrics(run_dir))
    assert last["best_score"] >= best["best_score"]
    if point != "before the epoch's last.pt":  # the trained epoch is on disk before evaluating
        assert last["epoch"] == 2 and same_weights(last["model"], reference[2]["model"])

    assert run_train_in_fork(space.args(name, "--resume", "train.epochs=2"), output=output) == 0, \
        read(output)[-3000:]
    assert [(m["epoch"], m["p1"]) for m in metrics(run_dir)] == \
        [(m["epoch"], m["p1"]) for m in metrics(two)]
    best, last = load(run_dir, "best.pt"), load(run_dir, "last.pt")
    assert best["epoch"] == 2 and same_weights(best["model"], reference[2]["model"])
    assert last["epoch"] == 2 and not last["eval_pending"] and last["best_epoch"] == 2
    assert temporaries(run_dir) == []


def as_development_version(path):
    """Rewrites the training checkpoint `path` as development versions before the metric sets
    wrote it: the best score under 'best_p1', and no 'best_epoch', 'bad_steps_in_a_row' nor
    'data'."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["best_p1"] = checkpoint.pop("best_score")
    for name in ("best_epoch", "bad_steps_in_a_row", "data"):
        del checkpoint[name]
    torch.save(checkpoint, path)


def test_resuming_a_checkpoint_of_a_development_version_is_one_clear_error(space):
    """A file no released version wrote is refused with one `error:` paragraph (no traceback)
    that names the missing field and how to go on from its weights; the checkpoints and
    metrics.jsonl are left as they are."""
    name = "development_version"
    run_dir = space.copy_run("one", name)
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    as_development_version(last)
    kept = [os.path.join(run_dir, "metrics.jsonl")] + glob.glob(
        os.path.join(run_dir, "checkpoints", "*"))
    before = {path: (os.path.getmtime(path), read_bytes(path)) for path in kept}
    output = os.path.join(space.root, name + ".txt")
    assert run_train_in_fork(space.args(name, "--resume", "train.epochs=2"), output=output) == 2
    text = read(output)
    assert "Traceback" not in text
    error = text.strip().splitlines()[-1]
    assert error.startswith(f"error: '{last}' cannot be resumed by this version of MetaPose "
                            "(it is damaged or was written by another version): its field "
                            "'best_score' (")
    assert "--checkpoint FILE" in error
    assert {path: (os.path.getmtime(path), read_bytes(path)) for path in kept} == before
    assert sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*"))) == sorted(kept[1:])


@pytest.mark.parametrize("field, value, accepted", [
    ("best_score", None, True), ("best_score", 41.3, True), ("best_score", float("nan"), False),
    ("best_score", float("inf"), False), ("best_score", "41.3", False),
    ("best_epoch", None, True), ("best_epoch", 1, True), ("best_epoch", 0, False),
    ("bad_steps_in_a_row", 0, True), ("bad_steps_in_a_row", -1, False),
    ("data", {}, True), ("data", [], False),
])
def test_checkpoint_fields_are_checked(space, field, value, accepted):
    """Every field a training checkpoint holds is there with a value of its kind (best_score: a
    finite number, or None before any evaluation); a bad or missing one is named."""
    from utils.training_checkpoint import check_training_checkpoint

    checkpoint = load(space.run_dir("one"), "last.pt")
    checkpoint[field] = value
    prefix = ("'x.pt' cannot be resumed by this version of MetaPose (it is damaged or was "
              f"written by another version): its field '{field}' ")
    if accepted:
        check_training_checkpoint(checkpoint, "x.pt")
        del checkpoint[field]
        with pytest.raises(MetaPoseError) as error:
            check_training_checkpoint(checkpoint, "x.pt")
        assert str(error.value).startswith(prefix + "(") and "is missing" in str(error.value)
        return
    with pytest.raises(MetaPoseError) as error:
        check_training_checkpoint(checkpoint, "x.pt")
    assert str(error.value).startswith(prefix + "is ")


# ---------------------------------------------------------------------------------------------
# Full disk


def disk_full_on_last_checkpoint():
    """A fault: the temporary file of checkpoints/last.pt writes to /dev/full, so the kernel
    answers ENOSPC exactly as on a full disk."""
    real_fdopen = os.fdopen

    def fdopen(handle, *args, **kwargs):
        if os.path.basename(os.readlink(f"/proc/self/fd/{handle}")).startswith(".last.pt."):
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, handle)
            os.close(full)
        return real_fdopen(handle, *args, **kwargs)
    os.fdopen = fdopen


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_stops_with_one_message_and_keeps_the_checkpoint(space):
    run_dir = space.copy_run("one", "full")
    output = os.path.join(space.root, "full.txt")
    status = run_train_in_fork(space.args("full", "--resume", "train.epochs=2"),
                       disk_full_on_last_checkpoint, output)
    text = read(output)
    assert status == 2, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in errors if "the disk is full: writing '" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "the previous 'last.pt' is intact" in errors[0] and "Traceback" not in text
    assert load(run_dir, "last.pt")["epoch"] == 1 and temporaries(run_dir) == []


# ---------------------------------------------------------------------------------------------
# Settings and data changed on --resume


def test_resume_applies_changed_optimizer_settings_and_records_them(space):
    run_dir = space.copy_run("one", "new_lr")
    output = os.path.join(space.root, "new_lr.txt")
    assert run_train_in_fork(space.args("new_lr", "--resume", "train.epochs=2", "train.lr=0.001",
                                "train.lr_decay=0.9", "train.weight_decay=0.05"),
                     output=output) == 0, read(output)[-3000:]
    group = load(run_dir, "last.pt")["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.001 * 0.9 ** 2)  # as if the run had had them throughout
    assert group["weight_decay"] == 0.05
    log = read(output)
    assert "--resume applies the changed optimizer settings train.lr (0.002 -> 0.001)" in log
    assert "epoch 2 runs with lr 0.0009 " in log
    header = read(os.path.join(run_dir, "config.yaml")).split("\nseed:")[0]
    assert "train.lr (0.002 -> 0.001), train.lr_decay (0.99 -> 0.9), train.weight_decay " \
           "(0.1 -> 0.05) from epoch 2 on" in header
    config = train.load_config(os.path.join(run_dir, "config.yaml"))
    assert (config.train.lr, config.train.lr_decay, config.train.weight_decay) == \
        (0.001, 0.9, 0.05)


def test_resume_refuses_other_label_files_unless_allowed(space):
    from datasets.synthetic import generate_synthetic

    other = os.path.join(space.root, "other_data")
    generate_synthetic(other, 64, VAL_FRAMES - 2, seed=3, verbose=False)
    run_dir = space.copy_run("one", "new_data")
    before = read(os.path.join(run_dir, "config.yaml"))
    output = os.path.join(space.root, "new_data.txt")
    args = space.args("new_data", "--resume", "train.epochs=2", data=other)
    assert run_train_in_fork(args, output=output) == 2
    error = read(output).strip().splitlines()[-1]
    assert error.startswith("error: the train label file '" + other)
    assert "--allow-data-change" in error and "35 frames" not in error  # train file: 64 frames
    assert read(os.path.join(run_dir, "config.yaml")) == before  # nothing recorded
    assert run_train_in_fork(args + ["--allow-data-change"], output=output) == 0, \
        read(output)[-3000:]
    assert "the best P1 restarts" in read(output)
    last = load(run_dir, "last.pt")
    assert last["data"]["validation"]["frames"] == VAL_FRAMES - 2
    assert last["best_epoch"] == 2 and metrics(run_dir)[-1]["frames"] == VAL_FRAMES - 2


# ---------------------------------------------------------------------------------------------
# Divergence


def test_diverged_run_stops_with_one_message(space):
    """lr 1e30: the first step blows the weights up, every later loss is NaN. 7 bad steps in
    epoch 1 and 5 more in epoch 2 reach train.max_bad_steps=12: the count goes on across the
    epoch boundary. (A run that evaluates such weights says that the model produced NaN: see
    tests/test_engine.py.)"""
    output = os.path.join(space.root, "diverged.txt")
    args = space.args("diverged", "train.lr=1e30", "train.max_bad_steps=12", "train.epochs=3",
                      "eval.every=3")
    assert run_train_in_fork(args, output=output) == 2
    lines = read(output).strip().splitlines()
    assert lines[-1].startswith("error: the loss was not finite for 12 consecutive steps (epoch "
                                "2, step 5; train.max_bad_steps=12)"), lines[-1]
    assert "Traceback" not in read(output)


def test_non_finite_weights_are_never_saved(tmp_path):
    from utils.config import load_config
    from utils.run_dir import RunPaths
    from utils.training_checkpoint import TrainState, save_training_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9)
    paths, config = RunPaths(str(tmp_path)), load_config(TINY)
    save_training_checkpoint(paths, model, optimizer, scheduler, None, TrainState(epoch=1),
                             config, new_best=True)
    with torch.no_grad():
        model.weight[1, 2] = float("nan")
    with pytest.raises(MetaPoseError, match=r"training diverged: the weights are no longer finite "
                                            r"after 2 epoch\(s\) \(NaN or Inf in 'weight'\)"):
        save_training_checkpoint(paths, model, optimizer, scheduler, None, TrainState(epoch=2),
                                 config, new_best=True)
    for name in ("last.pt", "best.pt"):
        assert torch.load(os.path.join(paths.checkpoints, name), weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------------------------------------
# One writer per run directory


def test_second_writer_is_refused_naming_the_holder(space):
    from utils.run_lock import RunLock

    run_dir = space.copy_run("one", "busy")
    lock = RunLock.acquire(run_dir)  # this test process stands for a run still writing there
    try:
        files = {path: os.path.getmtime(path)
                 for path in glob.glob(os.path.join(run_dir, "**"), recursive=True)}
        output = os.path.join(space.root, "busy.txt")
        assert run_train_in_fork(space.args("busy", "--resume", "train.epochs=2"),
                                 output=output) == 2
        error = read(output).strip().splitlines()[-1]
        assert error.startswith(f"error: run directory '{run_dir}' is in use by another process "
                                f"(pid {os.getpid()} on host {socket.gethostname()}")
        assert "--run-name" in error
        assert files == {path: os.path.getmtime(path)
                         for path in glob.glob(os.path.join(run_dir, "**"), recursive=True)}
    finally:
        lock.release()


def test_lock_is_freed_when_its_holder_is_killed(tmp_path):
    """kill -9 of the holder frees the lock, although a child it forked (as DataLoader workers
    are) still runs."""
    from utils.run_lock import RunLock

    context = multiprocessing.get_context("fork")
    ready, worker_pid = context.Event(), context.Value("i", 0)

    def hold():
        RunLock.acquire(str(tmp_path))
        worker = context.Process(target=time.sleep, args=(60,))
        worker.start()
        worker_pid.value = worker.pid
        ready.set()
        time.sleep(60)

    holder = context.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(MetaPoseError, match=f"in use by another process \\(pid {holder.pid} "):
            RunLock.acquire(str(tmp_path))
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        RunLock.acquire(str(tmp_path)).release()  # free, with the holder's child still alive
        os.kill(worker_pid.value, 0)
    finally:
        for pid in (holder.pid, worker_pid.value):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass


# ---------------------------------------------------------------------------------------------
# The launcher and its environment


def _env(**extra):
    return child_env(PYTHONWARNINGS="ignore", **extra)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_missing_peer_times_out_with_a_message(space, rank):
    """WORLD_SIZE=2 but only this process: it waits distributed.init_timeout seconds (3 here,
    300 by default), not 30 minutes, and says what is wrong."""
    env = _env(WORLD_SIZE="2", RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    started = time.monotonic()
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                             *space.args("alone" + rank), "distributed.init_timeout=3"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"this process is rank {rank} of WORLD_SIZE=2" in result.stderr
    assert "waited 3 s (distributed.init_timeout)" in result.stderr
    assert not os.path.exists(space.run_dir("alone" + rank))


def test_stale_rank_variables_give_a_message(monkeypatch):
    from utils import distributed as dist_utils

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(MetaPoseError, match="RANK=1 is set but WORLD_SIZE is not"):
        dist_utils.init_distributed(device_type="cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(MetaPoseError, match=r"RANK=1 is outside 0..0 \(WORLD_SIZE=1\)"):
        dist_utils.init_distributed(device_type="cpu")
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(MetaPoseError, match="WORLD_SIZE=0 must be at least 1"):
        dist_utils.init_distributed(device_type="cpu")


def test_ranks_stop_when_their_launcher_is_killed(space):
    """SIGKILL to torchrun's agent: its two ranks notice, save last.pt and exit on their own."""
    import psutil

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", os.path.join(REPO, "train.py"),
               *space.args("orphans", "train.epochs=100", "train.log_every=1")]
    agent = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    output, ranks = [], []
    try:
        for line in agent.stdout:
            output.append(line)
            if "epoch 1 step 2/4" in line:
                break
        ranks = psutil.Process(agent.pid).children()
        assert len(ranks) == 2, "".join(output)
        agent.kill()
        agent.wait(timeout=30)
        gone, alive = psutil.wait_procs(ranks, timeout=60)
        output.append(agent.stdout.read())
        assert not alive, "".join(output)[-3000:]
    finally:
        for rank in ranks:
            if rank.is_running():
                rank.kill()
        agent.stdout.close()
    text = "".join(output)
    assert "the launcher of this process" in text and "is gone" in text, text[-3000:]
    last = load(space.run_dir("orphans"), "last.pt")
    assert last["epoch"] >= 0 and last["world_size"] == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_under_the_log_and_tensorboard_is_one_warning_each(tmp_path, capfd):
    """log.txt and TensorBoard events on a full disk: one warning line each, no traceback, and
    the run goes on (the checkpoint write stops it with its own message if space stays short)."""
    from utils.logger import build_tb_writer, close_logger, setup_logger

    logger = setup_logger(0, str(tmp_path / "log.txt"))
    file_handler = [h for h in logger.handlers if hasattr(h, "baseFilename")][0]
    file_handler.stream.close()
    file_handler.stream = open("/dev/full", "w", encoding="utf-8")  # every write: ENOSPC
    writer = build_tb_writer(str(tmp_path / "tb"))
    (events,) = glob.glob(str(tmp_path / "tb" / "events.*"))
    os.remove(events)
    os.symlink("/dev/full", events)  # TensorBoard appends to this name: ENOSPC
    try:
        for step in range(3):
            logger.info("step %d", step)
            for _ in range(200):
                writer.add_scalar("train/loss", 1.0, step)
            writer.flush()
        writer.close()
    finally:
        close_logger(logger)
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "Logging error" not in text, text
    assert text.count("warning: cannot write the log file") == 1, text
    assert text.count("cannot write TensorBoard events to") == 1, text
    assert "step 2" in captured.out  # the console still has every line


# ---------------------------------------------------------------------------------------------
# The position a checkpoint records is checked against its schedule and the data on --resume


def rewrite_checkpoint(path, **fields):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.update(fields)
    torch.save(checkpoint, path)


@pytest.mark.parametrize("field, value, words", [
    ("batches_done", 10 ** 6, "its field 'batches_done' says 1,000,000 batches of epoch 2 were "
                              "trained, but an epoch of its data has 8 steps"),
    ("epoch", 2 ** 70, "its field 'epoch' says 1,180,591,620,717,411,303,424 epochs were "
                       "completed, but its learning-rate schedule stepped 1 time"),
])
def test_a_resume_position_beyond_the_data_or_the_schedule_is_refused(space, field, value,
                                                                      words):
    """Before: the run trained 0 steps of a NaN-loss epoch and saved it, or said it was done
    after 2**70 epochs."""
    name = f"position_{field}"
    run_dir = space.copy_run("one", name)
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    rewrite_checkpoint(last, **{field: value})
    kept = {path: read_bytes(path) for path in glob.glob(os.path.join(run_dir, "**", "*"),
                                                         recursive=True)
            if os.path.isfile(path) and not path.endswith("log.txt")}
    output = os.path.join(space.root, name + ".txt")
    assert run_train_in_fork(space.args(name, "--resume", "train.epochs=2"), output=output) == 2
    error = read(output).strip().splitlines()[-1]
    assert error.startswith(f"error: '{last}' cannot be resumed by this version of MetaPose") \
        and words in error and "Traceback" not in read(output), read(output)[-3000:]
    assert {path: read_bytes(path) for path in kept} == kept


@pytest.mark.parametrize("fields, epochs, words", [
    ({"epoch": 10 ** 9}, 2, "says 1,000,000,000 epochs were completed, but its learning-rate "
                            "schedule stepped 1 time"),
    ({"best_epoch": 5}, 2, "its field 'best_epoch' (5) comes after the 1 completed epochs"),
    ({"epoch": 0, "scheduler_steps": 0, "eval_pending": True, "best_epoch": None}, 2,
     "evaluation pending before any epoch"),
    ({"epoch": 7, "scheduler_steps": 7}, 2, "has completed 7 epochs, more than train.epochs = 2 "
                                             "(from command-line override 'train.epochs=2'): "
                                             "there is nothing left to train"),
    ({"epoch": 2, "scheduler_steps": 2, "batches_done": 3}, 2,
     "has completed 2 epochs and 3 batches of the next, more than train.epochs = 2"),
    ({}, 1, None), ({"epoch": 2, "scheduler_steps": 2}, 2, None),
])
def test_the_resume_position_fits_the_schedule(space, fields, epochs, words):
    from utils.config import load_config
    from utils.training_checkpoint import check_resume_position

    checkpoint = load(space.run_dir("one"), "last.pt")
    steps = fields.pop("scheduler_steps", None)
    checkpoint.update(fields)
    if steps is not None:
        checkpoint["scheduler"]["last_epoch"] = steps
    config = load_config(TINY, [f"train.epochs={epochs}"])
    if words is None:
        check_resume_position(checkpoint, "x.pt", config)
        return
    with pytest.raises(MetaPoseError) as error:
        check_resume_position(checkpoint, "x.pt", config)
    assert words in str(error.value), str(error.value)


@pytest.mark.parametrize("override, key", [
    ("model.image_encoder.frozen=false", "model.image_encoder.frozen (True in the checkpoint, "
                                         "False from command-line override "
                                         "'model.image_encoder.frozen=false')"),
    ("model.text_encoder.train_prompts=true", "model.text_encoder.train_prompts (False in the "
                                              "checkpoint, True from command-line override "
                                              "'model.text_encoder.train_prompts=true')"),
])
def test_an_override_that_changes_the_trainable_parameters_is_named_as_the_cause(space, override,
                                                                              key):
    """Before: "a damaged training checkpoint: its optimizer state holds 120 trainable
    parameters ...", although the file is fine and the override is the cause."""
    name = "changed_" + override.split("=")[0].replace(".", "_")
    run_dir = space.copy_run("one", name)
    output = os.path.join(space.root, name + ".txt")
    assert run_train_in_fork(space.args(name, "--resume", "train.epochs=2", override),
                             output=output) == 2, read(output)[-3000:]
    error = read(output).strip().splitlines()[-1]
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    assert error.startswith(f"error: '{last}' cannot be resumed with the model settings of this "
                            "run: its optimizer state holds "), error
    assert f"because they differ from the checkpoint's: {key}" in error, error
    assert "damaged" not in error and "--checkpoint FILE" in error
