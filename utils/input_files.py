"""What a path given as an input file really is: a regular file, or the reason it cannot be one.

Every file a user names (configs, checkpoints, label files, prompts files, images, JSON files)
goes through here, so that a folder, a FIFO, a device such as /dev/zero, a dangling link, a loop
of links or a name too long for the file system is reported as what it is instead of "does not
exist" — and so that a FIFO never blocks a read and a device is never read at all.
"""

import errno
import os
import stat

from utils.errors import MetaPoseError

# Longest path shown whole in a message; longer ones are shortened (a label entry can hold an
# image "path" of megabytes).
MAX_SHOWN_PATH = 240


def printable(text):
    """`text` with what cannot be written as UTF-8 spelled out: a byte of a file name that is
    not UTF-8 (Python holds it as a lone surrogate, e.g. '\\udcff') as \\xff, any other lone
    surrogate as \\udXXX. Messages, logs and config.yaml can then always be written."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that no file-name byte gives (e.g. '\\ud800')
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def shown_path(path):
    """`path` for a message: whole when short, else its start and end with the length between;
    bytes that are not UTF-8 spelled out (see `printable`)."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if len(path) > MAX_SHOWN_PATH:
        return f"{printable(path[:160])}...{printable(path[-60:])} ({len(path):,} characters)"
    return printable(path)


def _kind_of_mode(mode):
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def _problem_of_error(path, error):
    if error.errno == errno.ENOENT:
        return ("is a symbolic link to a file that does not exist" if os.path.islink(path)
                else "does not exist")
    if error.errno == errno.ELOOP:
        return "is a loop of symbolic links"
    if error.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    if error.errno == errno.ENOTDIR:
        return "does not exist (a part of its path is a file, not a folder)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot be opened (permission denied)"
    return f"cannot be opened ({error.strerror or error})"


def file_problem(path):
    """None when `path` names a regular file (links followed), else a phrase that completes
    "file 'x' ...", e.g. "does not exist" or "is a FIFO (named pipe), not a regular file"."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as error:  # ValueError: an embedded NUL byte
        if isinstance(error, ValueError):
            return "is not a valid path (it holds a NUL byte)"
        return _problem_of_error(path, error)
    return None if stat.S_ISREG(info.st_mode) else _kind_of_mode(info.st_mode)


class InputFileError(MetaPoseError):
    """A MetaPoseError about an input file; `problem` is the phrase of `file_problem`, so a
    caller can word one case (usually "does not exist") its own way."""

    def __init__(self, what, path, problem, remedy=""):
        super().__init__(f"{what} '{shown_path(path)}' {problem}."
                         + (f" {remedy}" if remedy else ""))
        self.problem = problem


def require_file(path, what, remedy=""):
    """Raises MetaPoseError "<what> '<path>' <problem>. <remedy>" unless `path` is a regular
    file. `what` names the role, e.g. "config file" or "--keypoints file"."""
    problem = file_problem(path)
    if problem is not None:
        raise InputFileError(what, path, problem, remedy)


def read_regular_file(path, what, remedy="", max_bytes=None):
    """The bytes of the regular file `path`.

    Opened without blocking and checked with fstat on the open descriptor before anything is
    read, so a FIFO cannot hang the reader (even if it replaced the file after a check) and a
    device is never read. `max_bytes` refuses larger files before reading them.
    Raises InputFileError naming `what`, the path and the problem, followed by `remedy`.
    """
    def refuse(problem):
        return InputFileError(what, path, problem, remedy)

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        handle = os.open(path, flags)
    except (OSError, ValueError) as error:
        raise refuse(file_problem(path) or (
            _problem_of_error(path, error) if isinstance(error, OSError)
            else "is not a valid path")) from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(_kind_of_mode(info.st_mode))
        if max_bytes is not None and info.st_size > max_bytes:
            raise refuse(f"holds {info.st_size:,} bytes, more than the {max_bytes:,} this "
                         "input may have")
        with os.fdopen(handle, "rb", closefd=True) as stream:
            handle = None
            return stream.read()
    except OSError as error:
        raise refuse(f"cannot be read ({error.strerror or error})") from None
    finally:
        if handle is not None:
            os.close(handle)
