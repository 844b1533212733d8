"""What schedulers and clusters do to a run: a signal to the whole process group (timeout,
Slurm's scancel and time limits, Ctrl-C in a terminal), a peer that dies or freezes, ports held
by other programs, GPUs numbered per task, a small /dev/shm, several machines without a shared
filesystem. Runs of train.py on the tiny synthetic set (CPU)."""

import os
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
