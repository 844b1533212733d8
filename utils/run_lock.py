"""One writer per run directory: an exclusive lock on `<run dir>/.lock`, which names its holder.

The lock is taken before anything else is written into the directory and held until the process
ends; the kernel releases it when the holder exits or is killed (also by SIGKILL), so a lock is
never stale. The ranks of one multi-process run share it: rank 0, the only writer, holds it.
It is a POSIX record lock (fcntl.lockf) rather than a flock: forked children such as DataLoader
workers do not inherit it, so a killed holder's workers cannot keep the directory locked.
"""

import errno
import fcntl
import json
import os
import socket
import sys
import time

from utils.errors import MetaPoseError

LOCK_NAME = ".lock"


class RunLock:
    """The held lock of one run directory; `release()` (or the end of the process) frees it."""

    def __init__(self, root):
        self.path = os.path.join(root, LOCK_NAME)
        self._handle = None

    @classmethod
    def acquire(cls, root):
        """Locks `root` (an existing folder) for this process.

        Raises:
            MetaPoseError naming the holder (pid, host, start time, command) when another
            process holds it.
        """
        lock = cls(root)
        handle = os.open(lock.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(handle)
                raise
            holder = _read_holder(handle)
            os.close(handle)
            raise MetaPoseError(
                f"run directory '{root}' is in use by another process ({holder}), and one run "
                "directory takes one writer. Wait for that run to end (or stop it), or pass "
                "--run-name NAME to write elsewhere; nothing was written.") from None
        except BaseException:
            os.close(handle)
            raise
        os.ftruncate(handle, 0)
        os.write(handle, (json.dumps(holder_record()) + "\n").encode("utf-8"))
        lock._handle = handle
        return lock

    @property
    def held(self):
        return self._handle is not None

    def release(self):
        if self._handle is not None:
            os.close(self._handle)  # closing the descriptor drops the lock
            self._handle = None


def holder_record():
    """Who holds a lock: pid, host, start time and command line of this process."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}


def _read_holder(handle):
    try:
        os.lseek(handle, 0, os.SEEK_SET)
        record = json.loads(os.read(handle, 65536).decode("utf-8"))
        command = record["command"]
        if len(command) > 160:
            command = command[:157] + "..."
        return (f"pid {record['pid']} on host {record['host']}, started {record['started']}: "
                f"{command}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name into the lock"
