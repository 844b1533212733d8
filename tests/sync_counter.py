"""Counts the calls that make the host wait for the device (on a GPU) made by the repository's
own code, and where they fall between the batches of a loop.

On a CPU nothing waits, but the same calls are made: `Tensor.item`, `tolist`, `__bool__`,
`__float__`, `__int__`, `__index__`, `cpu` and `numpy`. Each is replaced, while the counter is
active, by a wrapper that records the call when its caller is a file of the repository outside
tests/ (library code, e.g. torch's own checks, is not counted). `batches(loader)` wraps a loader
so that the record also shows where each batch was fetched and where the loader ended.
"""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests") + os.sep
SYNCING_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu",
                   "numpy")
BATCH, END = "batch", "end"


def _project_file(filename):
    path = os.path.abspath(filename)
    return path.startswith(REPO + os.sep) and not path.startswith(TESTS)


class SyncCounter:
    """Context manager; `events` lists ("sync", method, "file:line"), ("batch",) and ("end",)
    (the loader is exhausted) in order."""

    def __init__(self):
        self.events = []
        self._originals = {}

    def __enter__(self):
        for name in SYNCING_METHODS:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals = {}

    def _wrap(self, name, original):
        events = self.events

        def counted(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            if _project_file(caller.f_code.co_filename):
                where = f"{os.path.relpath(caller.f_code.co_filename, REPO)}:{caller.f_lineno}"
                events.append(("sync", name, where))
            return original(tensor, *args, **kwargs)

        counted.__name__ = name
        return counted

    def batches(self, loader):
        """`loader` (len and iteration only) recording a ("batch",) event at every fetch."""
        return _MarkedLoader(loader, self.events)

    def split(self):
        """(syncs before the first batch, [syncs while batch i is processed, up to the next
        fetch or the loader's end], syncs after the loader's end, the locations of all)."""
        before, steps, after, places = 0, [], 0, []
        ended = False
        for event in self.events:
            if event[0] == BATCH:
                steps.append(0)
            elif event[0] == END:
                ended = True
            else:
                places.append(f"{event[1]} at {event[2]}")
                if ended:
                    after += 1
                elif steps:
                    steps[-1] += 1
                else:
                    before += 1
        return before, steps, after, places


class _MarkedLoader:
    def __init__(self, loader, events):
        self.loader, self.events = loader, events

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.events.append((BATCH,))
            yield batch
        self.events.append((END,))
