"""Cooperative stops: SIGTERM/SIGINT become a flag that the training loop checks between steps."""

import signal

from utils.logger import get_logger


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that the training loop checks between steps.

    The first signal only sets the flag (the loop finishes its step, saves and exits); a second
    SIGINT raises KeyboardInterrupt at once. `exit_code` is 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        return 128 + int(self.signum) if self.signum is not None else 0

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT == self.signum:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            get_logger().warning("received %s: finishing the current step, then saving "
                                 "checkpoints/last.pt and stopping", signal.Signals(signum).name)

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
