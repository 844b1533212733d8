"""What schedulers and clusters do to a run: a signal to the whole process group (timeout,
Slurm's scancel and time limits), a peer that freezes, a port held by another program, torchrun's
report of a rank that stopped, GPUs numbered per task, a small /dev/shm. Runs of train.py on the
tiny synthetic set (CPU); two machines simulated by two torchrun agents are in
tests/test_train_cli.py."""

import os
import types
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.launch import child_env, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from datasets.synthetic import generate_synthetic

    root = str(tmp_path_factory.mktemp("cluster"))
    generate_synthetic(os.path.join(root, "data"), 64, 37, seed=0, verbose=False)
    return root


def _args(root, run_name, *extra):
    return ["--config", TINY, "--logdir", os.path.join(root, "logs"), "--run-name", run_name,
            f"data.root={os.path.join(root, 'data')}", "train.batch_size=8",
            "eval.num_visualize=0", *extra]


def _checkpoint(root, run_name, name="last.pt"):
    return torch.load(os.path.join(root, "logs", run_name, "checkpoints", name),
                      map_location="cpu", weights_only=True)


def _run_until(command, marker, env=None, timeout=240):
    """Starts `command` in a process group of its own and reads its output until a line holds
    `marker`; returns (process, lines so far)."""
    process = subprocess.Popen(command, cwd=REPO, env=env or child_env(PYTHONWARNINGS="ignore"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return process, lines


def _finish(process, lines, timeout=120):
    try:
        rest, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rest, _ = process.communicate()
        lines.append(rest)
        raise AssertionError("still running " + "".join(lines)[-3000:])
    lines.append(rest)
    return "".join(lines)


@pytest.mark.parametrize("moment, marker, extra", [
    ("training", "epoch 1 step 2/", ("train.log_every=1",)),
    ("evaluation", "epoch 1/100", ("eval.batch_size=1",)),  # 37 batches, persistent workers
])
def test_sigterm_to_the_whole_process_group_is_a_cooperative_stop(data, moment, marker, extra):
    """What `timeout -s TERM`, scancel and a job's time limit do: SIGTERM reaches the DataLoader
    workers too. The run finishes its step (or abandons the evaluation), saves last.pt and exits
    143, with no traceback; the checkpoint loads."""
    name = f"group_term_{moment}"
    command = [sys.executable, os.path.join(REPO, "train.py"),
               *_args(data, name, "data.num_workers=2", "train.epochs=100", *extra)]
    process, lines = _run_until(command, marker)
    os.killpg(process.pid, signal.SIGTERM)
    output = _finish(process, lines)
    assert process.returncode == 143, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    assert "received SIGTERM" in output
    last = _checkpoint(data, name)
    assert last["epoch"] in (0, 1) and (last["batches_done"] >= 2 or last["epoch"] == 1)


def _by_hand(data, name, rank, port, *extra):
    """train.py as one rank of a 2-process run started by hand (no launcher)."""
    env = child_env(PYTHONWARNINGS="ignore", WORLD_SIZE="2", RANK=str(rank),
                    LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    command = [sys.executable, os.path.join(REPO, "train.py"), *_args(data, name, *extra)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_master_port_held_by_another_program_ends_both_ranks(data):
    """A program listens on MASTER_PORT and never answers: rank 0 cannot listen there, rank 1
    reaches the program instead of rank 0. Both stop within distributed.init_timeout (+5 s for
    the answer) with a message naming the port, instead of rank 1 waiting for the program."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        started = time.monotonic()
        ranks = [_by_hand(data, f"port{rank}", rank, port, "distributed.init_timeout=4")
                 for rank in (0, 1)]
        outputs = [_finish(process, [], timeout=90) for process in ranks]
        elapsed = time.monotonic() - started
    for process, output in zip(ranks, outputs):
        assert process.returncode == 2, output[-2000:]
        assert "Traceback" not in output and f"MASTER_PORT={port}" in output, output[-2000:]
    assert "another program holds that port" in outputs[0]
    assert "did not answer as the run's rendezvous store" in outputs[1]
    assert "(distributed.init_timeout" in outputs[1], outputs[1][-2000:]  # the key to change
    assert elapsed < 60


def test_a_frozen_peer_ends_the_run_within_the_timeout_and_is_named(data):
    """Rank 1 stops answering (SIGSTOP, as a hung machine would) in the middle of training:
    rank 0 stops within distributed.timeout (6 s here) and names it, instead of waiting in
    the step's collective."""
    port = free_port()
    extra = ("distributed.timeout=6", "train.epochs=100", "train.log_every=1")
    ranks = [_by_hand(data, "frozen", rank, port, *extra) for rank in (0, 1)]
    lines = []
    try:
        for line in ranks[0].stdout:
            lines.append(line)
            if "epoch 1 step 2/" in line:
                break
        os.killpg(ranks[1].pid, signal.SIGSTOP)
        stopped = time.monotonic()
        output = _finish(ranks[0], lines, timeout=60)
        waited = time.monotonic() - stopped
    finally:
        os.killpg(ranks[1].pid, signal.SIGKILL)
        ranks[1].communicate()
    assert ranks[0].returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "rank 1 (" in output and "not heard from for" in output, output[-3000:]
    assert "distributed.timeout=6" in output
    assert waited < 6 + 10


def _root_cause(output):
    """The "Root Cause" section of torchrun's ChildFailedError report."""
    assert "ChildFailedError" in output, output[-3000:]
    return output.split("Root Cause", 1)[1]


def _corrupt_validation_image(data, frame):
    """A copy of the tiny set whose validation frame `frame` has a corrupt JPEG."""
    import pickle
    import shutil

    copy = os.path.join(data, f"corrupt_{frame}")
    if not os.path.isdir(copy):
        shutil.copytree(os.path.join(data, "data"), copy)
        with open(os.path.join(copy, "h36m_validation.pkl"), "rb") as handle:
            entry = pickle.load(handle)[frame]
        with open(os.path.join(copy, "images", entry["image"]), "wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0 not a JPEG any more")
    return copy


def test_torchrun_report_repeats_why_a_rank_stopped(data):
    """torchrun prints its own ChildFailedError traceback after a rank exits with an error;
    the project cannot stop it, but its "Root Cause" section repeats the rank's `error:`
    paragraph (a corrupt image in the validation shard of rank 1 only), instead of "To enable
    traceback see ..."."""
    copy = _corrupt_validation_image(data, 30)  # frames 19..36 are rank 1's shard
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", os.path.join(REPO, "train.py"),
               *_args(data, "corrupt", "train.epochs=1", f"data.root={copy}")]
    result = subprocess.run(command, cwd=REPO, env=child_env(PYTHONWARNINGS="ignore"),
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    first = next(line for line in output.splitlines() if line.startswith("error:"))
    assert first.startswith("error: [rank 1]"), output[-3000:]
    cause = _root_cause(output)
    assert "error: [rank 1]" in cause and "To enable traceback" not in cause, cause


def test_torchrun_report_says_a_stopped_run_saved_its_checkpoint(data):
    """SIGTERM to one rank of a torchrun run: every rank finishes the same step, last.pt is
    saved, and the launcher's report says so (its traceback follows, as for any exit status
    other than 0)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={free_port()}", os.path.join(REPO, "train.py"),
               *_args(data, "one_rank_term", "train.epochs=100", "train.log_every=1")]
    import psutil

    process, lines = _run_until(command, "epoch 1 step 2/")
    ranks = psutil.Process(process.pid).children()
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGTERM)
    output = _finish(process, lines)
    assert "received SIGTERM" in output
    assert "stopped by signal 15 after saving checkpoints/last.pt" in _root_cause(output)
    last = _checkpoint(data, "one_rank_term")
    assert last["world_size"] == 2 and (last["batches_done"] >= 2 or last["epoch"] >= 1)


# ---------------------------------------------------------------------------------------------
# In-process checks: GPUs per task, /dev/shm


def test_one_visible_gpu_is_used_whatever_the_local_rank(monkeypatch):
    """Clusters that give each task its own GPU (CUDA_VISIBLE_DEVICES) number the tasks of a
    machine 0..N-1: with one visible GPU, LOCAL_RANK 3 uses it; with two visible, LOCAL_RANK 3
    is an error that says what to do. (The device count is faked: no GPU here.)"""
    from utils import distributed as dist_utils
    from utils.errors import MetaPoseError

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dist_utils.choose_device("cuda", 3) == torch.device("cuda", 0) and chosen == [0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert dist_utils.choose_device("cuda", 3) == torch.device("cuda", 3) and chosen[-1] == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MetaPoseError, match="local rank 3 needs GPU 3, but only 2 GPU"):
        dist_utils.choose_device("cuda", 3)
    assert dist_utils.choose_device("cpu", 3) == torch.device("cpu")


def test_a_small_dev_shm_is_a_warning_with_the_size_needed(caplog):
    """16 workers x 2 prefetched batches of 400 crops of 256x192, 8 processes on the machine:
    about 14 GiB (1.76 GiB per process); Docker's default /dev/shm of 64 MB gets a warning that names the flag."""
    from datasets.loaders import shared_memory_needed, warn_if_shared_memory_is_short

    per_process = shared_memory_needed(16, 400, (256, 192))
    assert per_process == 16 * 2 * 400 * 3 * 256 * 192
    message = warn_if_shared_memory_is_short(16, (400, 400), (256, 192), processes=8,
                                             free=64 * 1024 ** 2)
    assert "0.06 GiB free" in message and "about 14.1 GiB" in message
    assert "--shm-size=22g" in message and "data.num_workers" in message
    assert message in caplog.text
    assert warn_if_shared_memory_is_short(16, (400,), (256, 192), processes=1,
                                          free=4 * 1024 ** 3) is None
    assert warn_if_shared_memory_is_short(0, (400,), (256, 192), free=0) is None
    assert warn_if_shared_memory_is_short(1, (1,), (8, 8), path="/nonexistent/shm") is None


def test_a_lost_peer_ends_the_process_without_the_process_groups_destructors(monkeypatch, capsys):
    """After a collective failed for want of a peer, the process group's C++ threads may still
    wait on it: destroying them at interpreter exit can abort the process ("terminate called
    without an active exception", status -6) or hang. The error is printed, then the process
    leaves at once with status 2 (logs and checkpoints are closed before, in train.py)."""
    import train
    from utils import cli
    from utils import distributed as dist_utils
    from utils.errors import MetaPoseError

    monkeypatch.setattr(dist_utils, "lost_peer", lambda error: True)
    context = types.SimpleNamespace(rank=0, world_size=2)
    error = train._peer_stopped(RuntimeError("Timed out waiting 6000ms for recv operation to "
                                             "complete"), context, 6)
    assert isinstance(error, MetaPoseError)

    exits = []

    def leave(status):
        exits.append(status)
        raise SystemExit(status)

    def main(argv):
        raise error

    monkeypatch.setattr(cli.os, "_exit", leave)
    with pytest.raises(SystemExit):
        cli.run_cli(main, [])
    assert exits == [2]
    assert "distributed.timeout=6 s" in capsys.readouterr().err

    exits.clear()  # any other error exits the usual way (sys.exit)
    monkeypatch.setattr(train, "_main", lambda argv: (_ for _ in ()).throw(MetaPoseError("x")))
    with pytest.raises(SystemExit) as stopped:
        cli.run_cli(train.main, [])
    assert exits == [] and stopped.value.code == 2
