"""Cooperative stops: SIGTERM/SIGINT become a flag that the training loop checks between steps;
DataLoader workers outlive a signal sent to the whole process group until the loop has stopped."""

import contextlib
import os
import signal
import threading

from utils.logger import get_logger


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that the training loop checks between steps.

    The first signal only sets the flag (the loop finishes its step, saves and exits); a second
    SIGINT raises KeyboardInterrupt at once, except inside `deferred()` (a checkpoint being
    written), where it waits for the end of the block. `exit_code` is 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._deferring = self._deferred = False

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        return 128 + int(self.signum) if self.signum is not None else 0

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT == self.signum:
            if self._deferring:
                self._deferred = True
                return
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            get_logger().warning("received %s: finishing the current step, then saving "
                                 "checkpoints/last.pt and stopping", signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self):
        """A second Ctrl-C inside the block takes effect (KeyboardInterrupt) when it ends, so
        that what the block writes (the trained epoch) reaches the disk."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

    def install(self):
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_raises():
    """Inside the block SIGTERM raises SystemExit(143) instead of ending the process at once, so
    that the cleanup of a start that does not complete (e.g. a launcher stopping the other ranks
    after one failed) runs. A StopRequest installed inside takes over until it is restored."""
    try:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Seconds a DataLoader worker goes on after SIGTERM: the main process finishes its step, saves
# and shuts its workers down well within this; a worker that is stuck ends by itself then.
WORKER_GRACE_S = 120.0


def _worker_stop_later(signum, frame):
    if not getattr(_worker_stop_later, "armed", False):
        _worker_stop_later.armed = True
        timer = threading.Timer(WORKER_GRACE_S, os._exit, (128 + signum,))
        timer.daemon = True
        timer.start()


def worker_outlives_stop_signals(worker_id=None):
    """DataLoader `worker_init_fn`: the worker ignores SIGINT and defers SIGTERM by
    WORKER_GRACE_S seconds.

    `timeout`, Slurm's scancel and time limits, and Ctrl-C in a terminal signal the whole
    process group, workers included. A worker that died of it would make the main process fail
    at its next batch (or anywhere, from the DataLoader's SIGCHLD handler) with a traceback,
    instead of the cooperative stop that the main process's StopRequest makes: finish the step,
    save checkpoints/last.pt, shut the workers down and exit 128 + signal.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop_later)
