"""Every process of a multi-process run watches the others: a peer that stops answering ends the
run within `distributed.timeout`, with a message that names it.

A collective whose peer died or froze would wait for it (NCCL until its own timeout, and only
with an error from a C++ watchdog; a frozen process never closes its connections). Here each
process runs a daemon thread that bumps a counter of its own in the run's rendezvous store every
few seconds and reads the counters of the others. A peer whose counter has not moved for
`distributed.timeout` seconds (by this process's clock: machines' clocks need not agree) is
named, and this process ends with an `error:` line and exit status 2. A store that stays
unreachable that long (its host, rank 0 or torchrun's agent, is gone) ends it too.
"""

import os
import socket
import sys
import threading
import time

from utils.launcher_watchdog import report_to_launcher
from utils.logger import get_logger

KEY = "metapose/alive/{rank}"

_WATCH = None


def start_peer_watch(store, rank, world_size, timeout_s):
    """Starts (once per process) the watch thread over `store`; returns the PeerWatch."""
    global _WATCH
    if _WATCH is None:
        _WATCH = PeerWatch(store, rank, world_size, timeout_s)
        _WATCH.start()
    return _WATCH


def stop_peer_watch():
    """Stops the watch (at the end of a run, before the process group goes)."""
    global _WATCH
    if _WATCH is not None:
        _WATCH.stop()
        _WATCH = None


def silent_peers():
    """Descriptions of the peers not heard from for a while ("rank 1 (host, pid 42) not heard
    from for 31 s"), most silent first; [] without a watch."""
    return [] if _WATCH is None else _WATCH.silent(min_seconds=2 * _WATCH.poll_s)


class PeerWatch:
    """The watch of one process (see the module docstring)."""

    def __init__(self, store, rank, world_size, timeout_s, poll_s=None):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s = float(timeout_s)
        self.poll_s = poll_s or min(max(self.timeout_s / 10.0, 0.5), 15.0)
        self.identity = f"{socket.gethostname()} {os.getpid()}"
        self.count = 0
        now = time.monotonic()
        # rank -> (last value seen, local time it changed); unseen peers count from the start
        self.seen = {peer: (None, now) for peer in range(world_size) if peer != rank}
        self.store_ok_at = now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-watch", daemon=True)

    def start(self):
        self._beat()
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _beat(self):
        self.count += 1
        self.store.set(KEY.format(rank=self.rank), f"{self.count} {self.identity}")

    def _read(self):
        now = time.monotonic()
        for peer, (value, changed) in self.seen.items():
            key = KEY.format(rank=peer)
            if self.store.check([key]):
                current = self.store.get(key).decode("utf-8", "replace")
                if current != value:
                    self.seen[peer] = (current, now)

    def silent(self, min_seconds=0.0):
        """[(seconds since last heard, description)] of peers silent for at least
        `min_seconds`, most silent first, as descriptions."""
        now = time.monotonic()
        found = []
        for peer, (value, changed) in self.seen.items():
            quiet = now - changed
            if quiet >= min_seconds:
                where = f" ({value.split(' ', 1)[1].replace(' ', ', pid ')})" if value else \
                    " (never heard from)"
                found.append((quiet, f"rank {peer}{where} not heard from for {quiet:.0f} s"))
        return [text for _, text in sorted(found, reverse=True)]

    def _run(self):
        while not self._stop.wait(self.poll_s):
            try:
                self._beat()
                self._read()
                self.store_ok_at = time.monotonic()
            except Exception as error:  # the store's host is gone, or the network
                quiet = time.monotonic() - self.store_ok_at
                if quiet >= self.timeout_s and not self._stop.is_set():
                    self._end(f"the run's rendezvous store (MASTER_ADDR={os.environ.get('MASTER_ADDR')}, "
                              f"MASTER_PORT={os.environ.get('MASTER_PORT')}) has not answered "
                              f"for {quiet:.0f} s ({type(error).__name__}): the process or "
                              "launcher that holds it (rank 0 or torchrun's agent) stopped")
                continue
            silent = self.silent(min_seconds=self.timeout_s)
            if silent and not self._stop.is_set():
                self._end("; ".join(silent[:4]) + (" ..." if len(silent) > 4 else "") +
                          ": it died, froze or its machine became unreachable")

    def _end(self, what):
        message = (f"[rank {self.rank}] {what}, and this process would wait for it in every "
                   f"collective (distributed.timeout={self.timeout_s:g} s). Stopping this process "
                   "too; once every machine is back, continue with --resume from the run's "
                   "checkpoints/last.pt.")
        get_logger().error("%s", message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        report_to_launcher(f"error: {message}")
        os._exit(2)
