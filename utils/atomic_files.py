"""Atomic writes: every file the project writes (checkpoints, metrics, configs, label pickles,
column caches, crops, prompts files) goes through `atomic_output`.

A temporary file `.<name>.<random>.tmp` beside the target receives the data, is fsynced, gets the
permissions an ordinary `open()` would give (the user's umask: `tempfile`'s 0600 would hide runs
and shared data folders from the rest of a group) and is renamed over the target, so a crash or
an interrupt leaves either the old or the new complete file. A full disk, a quota or a
permission problem is one MetaPoseError that says the old file survived; `remove_temporaries`
finds what killed writers left behind.
"""

import contextlib
import errno
import os
import shutil
import tempfile

from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path

TEMPORARY_SUFFIX = ".tmp"
# errno values that mean "the disk (or the user's quota) is full".
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


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


def _os_error_in(error):
    """The OSError behind `error`: itself, or the one a writer (torch.save, numpy) met in a file
    write and replaced by an error of its own; None when there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# Where the running command line asked for output, and with which flag (train.py: --logdir, the
# tools: --out): a failed write there suggests that flag; elsewhere, another folder.
_OUTPUT_FLAGS = {}


def name_output_flag(flag, path):
    """Failed writes to `path` (a file or a folder, and everything under it) will suggest
    another `flag`: a script calls this for its output options once they are parsed."""
    if path:
        _OUTPUT_FLAGS[os.path.abspath(path)] = flag


def output_flag(path):
    """The flag registered by name_output_flag for the closest folder holding `path`, or None."""
    path = os.path.abspath(path)
    while True:
        if path in _OUTPUT_FLAGS:
            return _OUTPUT_FLAGS[path]
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _file_in_the_way(path):
    """The closest existing folder of `path` when it is not a folder (a regular file, say), or
    None: writing below it fails with 'File exists' or 'Not a directory', which hides the cause."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        above = os.path.dirname(parent)
        if above == parent:
            return None
        parent = above
    return None if os.path.isdir(parent) else parent


def write_failure_reason(path, error, blocker=None):
    """Why writing `path` failed, in words: the file that stands where a folder is needed
    (`blocker`, found when not given), else the OS's own reason for `error` (an OSError)."""
    blocker = blocker or _file_in_the_way(path)
    if blocker is not None:
        return f"'{shown_path(blocker)}' is a file, not a folder, so nothing can be written inside it"
    return error.strerror or str(error)


def cannot_write(path, error, remedy="pass a writable path with --out."):
    """The MetaPoseError of a tool whose write of `path` failed with the OSError `error`: what
    failed, why in words (`write_failure_reason`), then `remedy`."""
    return MetaPoseError(f"cannot write '{path}' ({write_failure_reason(path, error)}); {remedy}")


def _write_error(path, error):
    blocker = _file_in_the_way(path)
    reason = write_failure_reason(path, error, blocker)
    kept = (f"the previous '{os.path.basename(path)}' is intact" if os.path.exists(path)
            else "nothing was overwritten")
    flag = output_flag(path)
    if error.errno in _DISK_FULL:
        elsewhere = f"pass {flag} on another disk" if flag else "write to another disk"
        return MetaPoseError(
            f"the disk is full: writing '{path}' failed ({reason}); {kept} and the partial file "
            f"was removed. Free some space (or {elsewhere}), then run again; a training run "
            "continues from its last checkpoint with --resume.")
    elsewhere = f"pass another {flag}" if flag else "write to another folder"
    check = ("Move that file away" if blocker is not None
             else "Check the permissions and the file system of that folder")
    return MetaPoseError(f"cannot write '{path}' ({reason}); {kept}. {check} (or {elsewhere}).")


def _refuse_non_regular_target(path):
    """Raises MetaPoseError when `path` (links followed) exists and is not a regular file: the
    rename of an atomic write would replace a FIFO or a device node with a file."""
    problem = file_problem(path)
    # Only what the path IS counts here (a folder, FIFO, device, socket, loop of links): a
    # missing file is created, and any other trouble shows when the write itself fails.
    if problem is None or not problem.startswith("is ") or "does not exist" in problem:
        return
    flag = output_flag(path)
    elsewhere = f"pass another {flag}" if flag else "write to another path"
    raise MetaPoseError(f"cannot write '{shown_path(path)}': it {problem}, and MetaPose writes its "
                        f"outputs as regular files and will not replace it. Remove it or "
                        f"{elsewhere}.")


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yields a file object for a temporary file beside `path`; on a clean exit the file is
    flushed, fsynced, given umask permissions and renamed over `path`; on any exception (or
    interrupt) it is removed and `path` is untouched.

    Raises:
        MetaPoseError when the file system refuses the write (full disk or quota, permissions),
        or when `path` is something other than a regular file (a FIFO, a device, a folder),
        which a rename would replace.
    """
    _refuse_non_regular_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                             suffix=TEMPORARY_SUFFIX, dir=folder)
        os.fchmod(handle, file_mode())
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        cause = _os_error_in(error)
        if cause is None:
            raise
        raise _write_error(path, cause) from None
    fsync_folder(folder)


def atomic_write(path, write):
    """Calls write(binary file object) and puts the result at `path` atomically."""
    with atomic_output(path) as stream:
        write(stream)


def atomic_write_bytes(path, data):
    """Writes the bytes `data` to `path` atomically."""
    with atomic_output(path) as stream:
        stream.write(data)


def atomic_write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(source, destination):
    """Copies the file `source` to `destination` atomically."""
    with atomic_output(destination) as stream, open(source, "rb") as input_file:
        shutil.copyfileobj(input_file, stream, length=16 * 1024 * 1024)


def remove_temporaries(directory):
    """Removes the temporary files that atomic writes killed midway left in `directory` (only
    call it while no other process writes there, e.g. holding the run's lock); returns their
    paths. The real files beside them are complete: a kill leaves the old or the new one."""
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        full = os.path.join(directory, name)
        if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX) and os.path.isfile(full):
            os.remove(full)
            removed.append(full)
    return removed
