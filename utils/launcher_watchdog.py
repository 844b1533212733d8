"""Ranks stop when their launcher is gone, and tell it why they stopped.

torchrun (and torch.distributed.launch) start each rank as a child of the launcher's agent, in a
session of its own; when the agent is SIGKILLed, nothing stops its ranks, which would go on
training unsupervised (and holding the GPUs and the run directory) to the end. Under such a
launcher a daemon thread polls the parent pid: once the process has been re-parented, it logs
why and sends SIGTERM to its own process, which makes the training loop finish its step, save
checkpoints/last.pt and exit (all ranks notice within the same poll interval and agree on the
step through the loop's stop flag). If the process is still alive `grace_s` later (e.g. blocked in
a collective with a peer that is gone), it ends at once with exit status 1.

torchrun prints its own traceback (ChildFailedError) after any rank exits with a non-zero status,
also after a rank's one-paragraph `error:` message; `report_to_launcher` puts that message into
the error file torchrun reads, so that the "Root Cause" section of its report repeats the
message instead of "To enable traceback see ...".
"""

import json
import os
import signal
import sys
import threading
import time

from utils.logger import get_logger

# Set by torchrun's elastic agent in the environment of every rank it starts.
LAUNCHER_VARIABLE = "TORCHELASTIC_RUN_ID"
# The file in which torchrun's agent looks for the reason a rank failed.
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def report_to_launcher(message):
    """Writes `message` (the rank's `error:` line, or why it stopped) into torchrun's error file
    of this rank, when there is one; never fails (the message is also printed)."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if not path:
        return
    record = {"message": {"message": message,
                          "extraInfo": {"py_callstack": message,
                                        "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    except OSError:
        pass


def watch_launcher(poll_s=1.0, grace_s=120.0):
    """Starts the watchdog thread when this process was started by torchrun's agent; returns the
    thread (None when there is no launcher to watch)."""
    if LAUNCHER_VARIABLE not in os.environ:
        return None
    launcher = os.getppid()
    thread = threading.Thread(target=_watch, args=(launcher, poll_s, grace_s),
                              name="launcher-watchdog", daemon=True)
    thread.start()
    return thread


def _watch(launcher, poll_s, grace_s):
    while os.getppid() == launcher:
        time.sleep(poll_s)
    get_logger().error("the launcher of this process (pid %d, torchrun's agent) is gone: it was "
                       "killed or crashed. Stopping this process too: it finishes its step, "
                       "saves checkpoints/last.pt and exits (continue with --resume).", launcher)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    print(f"error: the launcher (pid {launcher}) is gone and this process did not stop within "
          f"{grace_s:.0f} s of being asked to; ending it now.", file=sys.stderr, flush=True)
    os._exit(1)
