"""What the tests that start train.py in subprocesses share: an environment without a launcher's
variables (so a test run inside torchrun does not leak its rank into the children) and a free
TCP port for torchrun's rendezvous."""

import os
import socket

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
