"""Data files written atomically and with the user's umask (shared data folders stay usable).

`tempfile` creates files 0600 and folders 0700; a label pickle, a column cache or a crop made
that way in a group's shared data folder is unreadable to the rest of the group. Everything the
data tools write goes through here: a temporary name beside the target, the permissions an
ordinary `open()` / `mkdir()` would give, fsync, then a rename, so that a crash or an interrupt
never leaves a half-written file under the final name.
"""

import contextlib
import os
import tempfile


def current_umask():
    """The process umask, read without changing it where /proc allows (threads stay safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode():
    """Mode bits a new regular file gets from open(): 0666 minus the umask."""
    return 0o666 & ~current_umask()


def folder_mode():
    """Mode bits a new folder gets from mkdir(): 0777 minus the umask."""
    return 0o777 & ~current_umask()


def make_temporary_folder(parent, prefix):
    """A new folder `parent/<prefix>XXXXXXXX` with ordinary (umask) permissions."""
    os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(folder, folder_mode())
    return folder


def fsync_folder(folder):
    """Makes renames inside `folder` durable (no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yields a file object for a temporary file beside `path`; on a clean exit the file is
    flushed, fsynced, given umask permissions and renamed over `path`; on any exception (or
    interrupt) it is removed and `path` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         dir=folder)
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    fsync_folder(folder)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path) as stream:
        stream.write(data)
