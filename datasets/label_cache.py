"""The column cache of a label pickle: one .npy file per column, found fast, never stale.

Layout: `<cache folder>/<pickle name>.columns-<key>/` holds `<column>.npy` for every column of
datasets/label_checks.py and `meta.json`; <key> is the first 16 hex digits of the blake2b-128
digest of the pickle's bytes, so a pickle whose content changed has another cache, whatever its
size and modification time. Hashing 4.6 GB at every start is slow, so `meta.json` also records,
per pickle path, the file's size, mtime, ctime, inode and device: while they are unchanged the
digest is not recomputed. ctime (the inode change time) cannot be set back by any tool (touch,
os.utime and rename all move it forward), so rewriting a pickle and restoring its mtime still
makes the next start hash it; a record made within `RACY_SECONDS` of the file's ctime is not
trusted (ctime has a coarse clock on some file systems).

At every open the columns are checked against the schema (files present, dtype, shape, length)
and against the size/mtime/ctime/inode recorded for each file; a column whose record differs is
hashed and compared with its recorded digest. A damaged cache is removed and rebuilt; leftover
temporary folders of killed conversions are removed; everything is created with the user's
umask.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import time

import numpy as np

from utils.atomic_files import atomic_output, make_temporary_folder
from datasets.label_checks import COLUMN_SPECS, COLUMNS

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the layout changes: caches of another version are then rebuilt
RACY_SECONDS = 3.0
_READ_CHUNK = 8 << 20
_HEADER_BYTES = 128  # reserved .npy header: the row count is only known at the end


# ----------------------------------------------------------------------------------------
# Fingerprints and digests
# ----------------------------------------------------------------------------------------

def fingerprint(path):
    """[size, mtime_ns, ctime_ns, inode, device] of `path` (raises OSError)."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def file_digest(path, offset=0):
    """blake2b-128 hex digest of the bytes of `path` from `offset` on."""
    digest = hashlib.blake2b(digest_size=16)
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        while True:
            count = handle.readinto(view)
            if not count:
                return digest.hexdigest()
            digest.update(view[:count])


def _record(path):
    """A fingerprint record of `path` to keep in meta.json."""
    return {"fingerprint": fingerprint(path), "recorded_ns": time.time_ns()}


def _trusted(record, current):
    """Whether a stored record vouches for a file whose fingerprint is `current`."""
    if not isinstance(record, dict) or record.get("fingerprint") != current:
        return False
    return record.get("recorded_ns", 0) - current[2] >= RACY_SECONDS * 1e9


# ----------------------------------------------------------------------------------------
# Writing columns
# ----------------------------------------------------------------------------------------

def _npy_header(dtype, shape, size=_HEADER_BYTES):
    """A version 1.0 .npy header of exactly `size` bytes (the format pads it with spaces)."""
    text = (f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, "
            f"'fortran_order': False, 'shape': {tuple(shape)!r}, }}").encode("latin1")
    padding = size - 10 - len(text) - 1
    if padding < 0:
        raise ValueError(f"shape {shape} does not fit a {size}-byte header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size - 10) + text + b" " * padding + b"\n"


class ColumnFiles:
    """Receives converted batches of columns and writes each column straight into its .npy file
    in `folder` (so a conversion holds one batch in memory, not the whole label set). `specs`:
    name -> (dtype, trailing shape); the `image` column (bytes of any width) is gathered."""

    def __init__(self, folder, specs=COLUMN_SPECS):
        self.folder, self.specs = folder, specs
        self._handles, self._digests, self._images, self.frames = {}, {}, [], 0
        for name in specs:
            if name != "image":
                self._handles[name] = open(os.path.join(folder, f"{name}.npy"), "wb")
                self._handles[name].write(b"\0" * _HEADER_BYTES)
                self._digests[name] = hashlib.blake2b(digest_size=16)

    def add(self, columns):
        for name, handle in self._handles.items():
            data = np.ascontiguousarray(columns[name], dtype=self.specs[name][0])
            handle.write(memoryview(data).cast("B"))
            self._digests[name].update(memoryview(data).cast("B"))
        self._images.append(columns["image"])
        self.frames += len(columns["image"])

    def reset(self):
        for name, handle in self._handles.items():
            handle.seek(_HEADER_BYTES)
            handle.truncate()
            self._digests[name] = hashlib.blake2b(digest_size=16)
        self._images, self.frames = [], 0

    def finish(self):
        """Completes the files; returns {column: {"offset", "blake2b"}} for meta.json."""
        info = {}
        for name, handle in self._handles.items():
            handle.seek(0)
            handle.write(_npy_header(self.specs[name][0], (self.frames,) + self.specs[name][1]))
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            info[name] = {"offset": _HEADER_BYTES, "blake2b": self._digests[name].hexdigest()}
        width = max([1] + [column.dtype.itemsize for column in self._images])
        images = np.concatenate([column.astype(f"S{width}") for column in self._images]) \
            if self._images else np.zeros(0, dtype="S1")
        self._images = []
        path = os.path.join(self.folder, "image.npy")
        np.save(path, images)
        offset = os.path.getsize(path) - images.nbytes
        info["image"] = {"offset": offset, "blake2b": file_digest(path, offset)}
        self._handles = {}
        return info

    def close(self):
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def write_columns(folder, columns):
    """Writes in-memory columns (name -> array) as .npy files; returns their meta.json records."""
    info = {}
    for name, array in columns.items():
        path = os.path.join(folder, f"{name}.npy")
        array = np.ascontiguousarray(array)
        np.save(path, array)
        offset = os.path.getsize(path) - array.nbytes
        info[name] = {"offset": offset, "blake2b": file_digest(path, offset)}
    return info


class ColumnsInMemory:
    """The same interface for a cache that cannot be written: the columns stay in memory."""

    def __init__(self, names=COLUMNS):
        self.names = names
        self._batches, self.frames = [], 0

    def add(self, columns):
        self._batches.append(columns)
        self.frames += len(columns["image"])

    def reset(self):
        self._batches, self.frames = [], 0

    def columns(self):
        result = {}
        for name in self.names:  # one column at a time: the batches' copies are freed as it goes
            parts = [batch.pop(name) for batch in self._batches]
            if name == "image":
                width = max(part.dtype.itemsize for part in parts)
                parts = [part.astype(f"S{width}") for part in parts]
            result[name] = np.concatenate(parts)
        self._batches = []
        return result

    def close(self):
        self._batches = []


# ----------------------------------------------------------------------------------------
# Finding, checking and publishing caches
# ----------------------------------------------------------------------------------------

def folder_prefix(pickle_path):
    return f"{os.path.basename(pickle_path)}.columns-"


def temporary_prefix(pickle_path):
    return f".{os.path.basename(pickle_path)}.columns.tmp-"


def lock_path(parent, pickle_path):
    return os.path.join(parent, f".{os.path.basename(pickle_path)}.columns.lock")


def candidate_folders(parent, pickle_path):
    """The cache folders of pickles named like `pickle_path` in `parent` (sorted)."""
    prefix = folder_prefix(pickle_path)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [os.path.join(parent, name) for name in sorted(names)
            if name.startswith(prefix) and os.path.isdir(os.path.join(parent, name))]


def read_meta(folder):
    """meta.json of a cache folder as a dict, or None when missing, unreadable or outdated."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return None
    return meta


def write_meta(folder, meta):
    with atomic_output(os.path.join(folder, "meta.json"), "w") as handle:
        json.dump(meta, handle, indent=1)


def load_column(path):
    """A column file memory-mapped read-only (an empty one, which cannot be mapped, loaded)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        array = np.load(path, allow_pickle=False)
        if array.size:
            raise
        return array


def open_columns(folder, meta, names, specs=None):
    """The memory-mapped columns `names` of a cache folder, or None when any is missing,
    truncated, of another dtype or shape than recorded (or than `specs`: name -> (dtype,
    trailing shape)), or differs from its recorded digest. Column records that changed but whose
    content still matches (a copied cache) are refreshed."""
    frames = meta.get("frames")
    recorded = meta.get("columns")
    if not isinstance(frames, int) or not isinstance(recorded, dict):
        return None
    columns, refreshed = {}, False
    for name in names:
        path = os.path.join(folder, f"{name}.npy")
        info = recorded.get(name)
        if not isinstance(info, dict):
            return None
        try:
            current = fingerprint(path)
            array = load_column(path)
        except (OSError, ValueError):
            return None
        if array.dtype.str != info.get("dtype") or list(array.shape) != info.get("shape") or \
                not array.shape or array.shape[0] != frames:
            return None
        if specs is not None and name in specs:
            dtype, trailing = specs[name]
            good_dtype = array.dtype.kind == "S" if name == "image" else array.dtype == dtype
            if not good_dtype or array.shape[1:] != trailing:
                return None
        if info.get("fingerprint") != current:
            try:
                if file_digest(path, info.get("offset", 0)) != info.get("blake2b"):
                    return None
            except OSError:
                return None
            info["fingerprint"], refreshed = current, True
        columns[name] = array
    if refreshed:
        with contextlib.suppress(OSError):
            write_meta(folder, meta)
    return columns


def find_by_fingerprint(parent, pickle_path, names, specs=None):
    """(columns, folder) of the cache whose record vouches for the label file as it is now, or
    (None, folder of a damaged cache or None). No hashing of the file, no lock."""
    source = os.path.abspath(pickle_path)
    try:
        current = fingerprint(source)
    except OSError:
        return None, None
    for folder in candidate_folders(parent, pickle_path):
        meta = read_meta(folder)
        if meta is None or not _trusted(meta.get("sources", {}).get(source), current):
            continue
        columns = open_columns(folder, meta, names, specs)
        return (columns, folder) if columns is not None else (None, folder)
    return None, None


def find_by_digest(parent, pickle_path, digest, names, specs=None):
    """(columns, None) of the cache made from content `digest`, recording the pickle's
    fingerprint in it (a touched or copied pickle); (None, folder) when that cache is damaged;
    (None, None) when there is none."""
    folder = os.path.join(parent, folder_prefix(pickle_path) + digest[:16])
    meta = read_meta(folder) if os.path.isdir(folder) else None
    if meta is None or meta.get("digest") != digest:
        return None, None
    columns = open_columns(folder, meta, names, specs)
    if columns is None:
        return None, folder
    meta.setdefault("sources", {})[os.path.abspath(pickle_path)] = _record(pickle_path)
    with contextlib.suppress(OSError):
        write_meta(folder, meta)
    return columns, None


def publish(temporary, parent, pickle_path, digest, frames, column_info, record):
    """Completes a converted cache: meta.json, then the rename to its final name (an older,
    damaged folder of that name is replaced). Returns the final folder. Call under the lock."""
    columns = {}
    for name, info in column_info.items():
        path = os.path.join(temporary, f"{name}.npy")
        array = load_column(path)
        columns[name] = dict(info, fingerprint=fingerprint(path), dtype=array.dtype.str,
                             shape=list(array.shape))
        del array
    meta = {"version": CACHE_VERSION, "frames": int(frames), "digest": digest,
            "columns": columns,
            "sources": {os.path.abspath(pickle_path): record} if record else {}}
    write_meta(temporary, meta)
    folder = os.path.join(parent, folder_prefix(pickle_path) + digest[:16])
    if os.path.lexists(folder):
        remove_folder(folder)
    os.rename(temporary, folder)
    return folder


def remove_folder(folder):
    """Removes a cache folder (or whatever else stands under its name)."""
    if os.path.isdir(folder) and not os.path.islink(folder):
        shutil.rmtree(folder)
    elif os.path.lexists(folder):
        os.remove(folder)


def remove_leftovers(parent, pickle_path):
    """Removes temporary folders of conversions that were killed (call under the lock)."""
    prefix = temporary_prefix(pickle_path)
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if name.startswith(prefix):
                logger.info("removing '%s', left by an interrupted label conversion", name)
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def has_leftovers(parent, pickle_path):
    prefix = temporary_prefix(pickle_path)
    with contextlib.suppress(OSError):
        return any(name.startswith(prefix) for name in os.listdir(parent))
    return False


def remove_stale(parent, pickle_path, keep):
    """Removes the other caches of this pickle: outdated ones and those used by it alone."""
    source = os.path.abspath(pickle_path)
    for folder in candidate_folders(parent, pickle_path):
        if os.path.abspath(folder) == os.path.abspath(keep):
            continue
        meta = read_meta(folder)
        if meta is None or set(meta.get("sources", {})) <= {source}:
            remove_folder(folder)


@contextlib.contextmanager
def conversion_lock(parent, pickle_path, blocking=True):
    """Lets one process at a time convert a pickle (the others then read its cache). Yields
    True when held (False: non-blocking and busy). Raises OSError when the lock file cannot be
    created (read-only folder)."""
    os.makedirs(parent, exist_ok=True)
    handle = open(lock_path(parent, pickle_path), "a")  # noqa: SIM115 (closed below)
    try:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): convert unlocked
            yield True
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()  # releases the lock


def new_temporary(parent, pickle_path):
    return make_temporary_folder(parent, temporary_prefix(pickle_path))
