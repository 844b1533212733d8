"""What the tests that start train.py in subprocesses share: an environment without a launcher's
variables (so a test run inside torchrun does not leak its rank into the children), a free
TCP port for torchrun's rendezvous, and train.py run in a forked child of the test process."""

import multiprocessing
import os
import socket
import sys

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra):
    """os.environ without the launcher's variables, one compute thread per process (OpenMP
    threads of several processes fight on a small machine), then `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train_in_fork(args, fault=None, output=None):
    """Exit status of `python train.py ARGS` run as a forked child of this process (the imported
    modules and any state the test set up are shared, so a run costs its training, not an
    interpreter start), after `fault()` (if given) was called in the child; its stdout and
    stderr go to `output`."""
    import train
    from utils.cli import run_cli

    def child():
        if output:
            handle = open(output, "w", buffering=1, encoding="utf-8")
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            sys.stdout = sys.stderr = handle
        if fault:
            fault()
        run_cli(train.main, args)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(300)
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"train.py {' '.join(args)} did not finish")
    return process.exitcode
