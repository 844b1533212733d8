"""The --out folder of tools/infer.py: one run at a time, nothing half-written, nothing mixed.

- One writer: the run holds an exclusive lock on the folder itself (flock on the folder's
  descriptor, so no lock file is left behind) from before the model is loaded until it ends; the
  kernel releases it when the process exits or is killed (also by SIGKILL). A second run into the
  same folder stops at once and names the holder (pid, host, start, command), which each run
  records in its staging folder.
- Staged: every output is written into a hidden staging folder `.infer-XXXXXXXX` inside --out
  and moved into place only at the end, predictions.json last and atomically. A run that fails
  removes its staging folder; one that was killed leaves it, and the next run into the folder
  (holding the lock, so no other run is alive there) removes it.
- A failed run leaves no folder it created: --out (and the parents it made) are removed again
  when they are still empty.
"""

import errno
import fcntl
import glob
import json
import os
import shutil

from utils.atomic_files import (TEMPORARY_SUFFIX, atomic_write_text, fsync_folder,
                                make_temporary_folder, write_failure_reason)
from utils.errors import MetaPoseError
from utils.input_files import shown_path
from utils.run_lock import holder_record

STAGE_PREFIX = ".infer-"
HOLDER_FILE = "holder.json"
PREDICTIONS = "predictions.json"


def _created_folders(path):
    """The folders `os.makedirs(path)` would create, deepest first."""
    created, current = [], os.path.abspath(path)
    while not os.path.lexists(current):
        created.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return created


def _holder_of(out_dir):
    """Who holds the lock of `out_dir`, from the holder record in its staging folder."""
    for folder in sorted(glob.glob(os.path.join(glob.escape(out_dir), STAGE_PREFIX + "*"))):
        try:
            with open(os.path.join(folder, HOLDER_FILE), encoding="utf-8") as handle:
                record = json.load(handle)
            command = str(record["command"])
            command = command if len(command) <= 160 else command[:157] + "..."
            return (f"pid {record['pid']} on host {record['host']}, started "
                    f"{record['started']}: {command}")
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "a process that has not yet recorded its name"


class OutputFolder:
    """The locked, staged --out folder of one run (module docstring). Use as a context manager;
    `path(name)` gives where to write an output file, `commit(predictions_text)` moves
    everything into place."""

    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        self.names, self.folder, self._handle = [], None, None
        self._created = _created_folders(self.out_dir)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            self._lock()
            self.stale = self._remove_stale()
            self.folder = make_temporary_folder(self.out_dir, STAGE_PREFIX)
            with open(os.path.join(self.folder, HOLDER_FILE), "w", encoding="utf-8") as handle:
                json.dump(holder_record(), handle)
        except OSError as error:
            self._cleanup()
            reason = write_failure_reason(self.out_dir, error)
            raise MetaPoseError(f"cannot write into the output folder '{shown_path(self.out_dir)}'"
                                f" ({reason}); pass a writable --out.") from None
        except BaseException:
            self._cleanup()
            raise

    def _lock(self):
        handle = os.open(self.out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(handle)
            if error.errno not in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            raise MetaPoseError(
                f"the output folder '{shown_path(self.out_dir)}' is in use by another "
                f"tools/infer.py run ({_holder_of(self.out_dir)}), and one folder takes one run "
                "at a time. Wait for it to end (or stop it), or pass another --out; nothing was "
                "written.") from None
        self._handle = handle

    def _remove_stale(self):
        """Removes what killed runs left (staging folders, temporary files); returns their
        names. Only called while holding the lock."""
        stale = []
        for folder in glob.glob(os.path.join(glob.escape(self.out_dir), STAGE_PREFIX + "*")):
            if os.path.isdir(folder) and not os.path.islink(folder):
                shutil.rmtree(folder, ignore_errors=True)
                stale.append(os.path.basename(folder))
        # the temporary file of an interrupted atomic write of predictions.json (utils/atomic_files)
        pattern = f".{PREDICTIONS}.*{TEMPORARY_SUFFIX}"
        for path in glob.glob(os.path.join(glob.escape(self.out_dir), pattern)):
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                stale.append(os.path.basename(path))
        return stale

    def path(self, name):
        """Where to write the output file `name` (a plain file name) until commit."""
        self.names.append(name)
        return os.path.join(self.folder, name)

    def commit(self, predictions_text):
        """Moves the outputs into --out, predictions.json last (atomically)."""
        for name in self.names:
            if os.path.exists(os.path.join(self.folder, name)):
                os.replace(os.path.join(self.folder, name), os.path.join(self.out_dir, name))
        atomic_write_text(os.path.join(self.out_dir, PREDICTIONS), predictions_text)
        fsync_folder(self.out_dir)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
        self._created = []  # the folder now holds results: it stays

    def _cleanup(self):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        for folder in self._created:  # deepest first; only while empty
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops the lock
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        self._cleanup()
        return False
