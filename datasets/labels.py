"""H36M label pickles (DESIGN 1.1) as validated columnar numpy arrays, cached as .npy files.

The pickles are lists of one dict per frame; held as Python objects they cost tens of GB and
are copied page by page into every DataLoader worker. `load_labels` converts them once into a
handful of numpy columns, writes each column as an uncompressed .npy file in a cache folder
whose name is derived from the pickle's size, modification time and first/last megabyte, and
afterwards memory-maps those files read-only, so all workers and processes share the pages.
"""

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from datasets.safe_pickle import load_pickle_safely
from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, ALL_SUBJECTS, NUM_JOINTS

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the column layout changes; old caches are then rebuilt
_HASHED_BYTES = 1 << 20

# Per-frame joint arrays: key -> trailing shape.
JOINT_COLUMNS = {
    "joints_3d": (NUM_JOINTS, 3),
    "joints_2d_gt": (NUM_JOINTS, 2),
    "joints_2d_cpn": (NUM_JOINTS, 2),
    "joints_2d_gt_crop": (NUM_JOINTS, 2),
    "joints_2d_cpn_crop": (NUM_JOINTS, 2),
}
INT_COLUMNS = ("subject", "action", "subaction", "camera_id", "image_id")
BOX_COLUMNS = ("center", "scale")  # (x, y) pixels; (w/200, h/200)
CAMERA_COLUMNS = ("fx", "fy", "cx", "cy")  # pixels, from entry["camera"]
REQUIRED_KEYS = frozenset(("image", "camera") + tuple(JOINT_COLUMNS) + INT_COLUMNS + BOX_COLUMNS)

# Every column load_labels returns, with its dtype and shape (N = number of frames):
#   image        |S<width>  (N,)       relative image path, UTF-8 bytes (fixed width, no objects)
#   joints_3d    float32    (N,17,3)   camera frame, metres
#   joints_2d_*  float32    (N,17,2)   normalised screen coordinates (gt, cpn)
#   joints_2d_*_crop float32 (N,17,2)  192x256 crop pixels (gt, cpn)
#   subject, action, subaction, camera_id, image_id  int32 (N,)
#   center, scale float32   (N,2)      person box centre (px) and size / 200
#   fx, fy, cx, cy float32  (N,)       pinhole intrinsics, pixels
COLUMNS = ("image",) + tuple(JOINT_COLUMNS) + INT_COLUMNS + BOX_COLUMNS + CAMERA_COLUMNS

_FIX_HINT = ("Re-create the file with tools/prepare_h36m.py (real H36M) or "
             "tools/make_synthetic.py (synthetic data).")


class _Problem:
    """The first defect found in one check: entry index, key, description."""

    def __init__(self, index, key, text):
        self.index, self.key, self.text = int(index), key, text


def _first(mask):
    """Index of the first True in a bool array, or None."""
    if mask.size == 0 or not mask.any():
        return None
    return int(np.argmax(mask))


def _float_column(values, shape, key, flatten=False):
    """Stacks per-frame numbers of trailing `shape` into float32; returns (array, problem).

    With `flatten`, any per-frame value holding prod(shape) numbers is accepted (a camera's
    `fx` stored as a (1,) array, a `center` stored as (2, 1)).
    """
    count = int(np.prod(shape, dtype=np.int64))
    array = None
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become Inf and are reported
            array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError):
        pass
    if array is not None and flatten and array.ndim >= 1 and array.size == len(values) * count:
        array = array.reshape((len(values),) + shape)
    if array is None or array.shape[1:] != shape:
        for index, value in enumerate(values):
            try:
                item = np.asarray(value, dtype=np.float64)
            except (ValueError, TypeError):
                return None, _Problem(index, key, f"is {type(value).__name__} {value!r:.60}, "
                                                  f"expected numbers of shape {shape}")
            if (item.size != count) if flatten else (item.shape != shape):
                detail = " (17 H36M joints)" if key in JOINT_COLUMNS else ""
                return None, _Problem(index, key, f"has shape {item.shape}, expected "
                                                  f"{shape}{detail}")
        with np.errstate(over="ignore"):  # every value fits, in mixed layouts: one by one
            array = np.stack([np.asarray(value, dtype=np.float32).reshape(shape)
                              for value in values])
    bad = _first(~np.isfinite(array.reshape(len(values), -1)).all(axis=1))
    if bad is not None:
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(array[bad]))[0])
        value = np.asarray(values[bad], dtype=np.float64)[where]
        at = f" at position {where}" if where else ""
        return None, _Problem(bad, key, f"holds a non-finite value (NaN, Inf or beyond "
                                        f"float32): {value}{at}")
    return array, None


def _int_column(values, key):
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        array = np.empty(0)
    if array.shape == (len(values), 1):  # numpy scalars stored as (1,) arrays
        array = array[:, 0]
    if array.shape != (len(values),) or array.dtype.kind not in "biuf":
        for index, value in enumerate(values):
            if np.size(value) != 1 or np.asarray(value).dtype.kind not in "biuf":
                return None, _Problem(index, key, f"is {value!r:.60}, expected an integer")
        array = np.array([np.ravel(value)[0] for value in values])  # mixed scalars and (1,)
    if array.dtype.kind == "f":
        bad = _first(~np.isfinite(array) | (array != np.round(array)))
        if bad is not None:
            return None, _Problem(bad, key, f"is {array[bad]!r}, expected an integer")
    return array.astype(np.int32), None


def _image_column(values):
    encoded = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes) or not value:
            return None, _Problem(index, "image", f"is {value!r:.60}, expected a non-empty "
                                                  "relative image path")
        encoded.append(value)
    return np.array(encoded, dtype=np.bytes_), None


def _camera_columns(cameras):
    columns = {}
    for name in CAMERA_COLUMNS:
        values = []
        for index, camera in enumerate(cameras):
            if not isinstance(camera, dict) or name not in camera:
                return None, _Problem(index, "camera", f"lacks '{name}' (expected a dict with R, "
                                                       "T, fx, fy, cx, cy, k, p)")
            values.append(camera[name])
        array, problem = _float_column(values, (), f"camera.{name}", flatten=True)
        if problem is not None:
            return None, problem
        columns[name] = array
    return columns, None


def _structure_problem(entries):
    """The first entry that is not a dict or lacks a required key, or None."""
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return _Problem(index, "-", f"is a {type(entry).__name__}, expected a dict per frame")
        if not REQUIRED_KEYS <= entry.keys():
            missing = sorted(REQUIRED_KEYS - entry.keys())
            return _Problem(index, missing[0], "is missing (required keys: "
                                               f"{', '.join(sorted(REQUIRED_KEYS))})")
    return None


def entries_to_columns(entries, source="<labels>"):
    """Validates a list of per-frame label dicts and converts it into columns (see COLUMNS).

    Args:
        entries: list of dicts in the DESIGN 1.1 format.
        source: file name used in error messages.
    Returns:
        dict column name -> numpy array with N = len(entries) rows.
    Raises:
        MetaPoseError naming `source`, the index and the key of the FIRST bad entry (not a dict,
        missing key, wrong joint count or shape, NaN/Inf, unknown subject or action).
    """
    if not isinstance(entries, (list, tuple)):
        raise MetaPoseError(f"label file '{source}' holds a {type(entries).__name__}, expected a "
                            f"list with one dict per frame (DESIGN 1.1). {_FIX_HINT}")
    if len(entries) == 0:
        raise MetaPoseError(f"label file '{source}' holds an empty list: it has no frames. "
                            f"{_FIX_HINT}")
    problems = []
    structure = _structure_problem(entries)
    if structure is not None:  # columns can only be built from the entries before it
        problems.append(structure)
        entries = entries[:structure.index]
    columns = {}
    if entries:
        columns = _build_columns(entries, problems)
    if problems:
        first = min(problems, key=lambda p: p.index)
        raise MetaPoseError(
            f"label file '{source}': entry {first.index}, key '{first.key}' {first.text}. "
            f"This is the first bad entry. {_FIX_HINT}")
    return columns


def _build_columns(entries, problems):
    columns = {}

    def keep(key, result):
        array, problem = result
        if problem is not None:
            problems.append(problem)
        elif isinstance(array, dict):
            columns.update(array)
        else:
            columns[key] = array

    keep("image", _image_column([e["image"] for e in entries]))
    for key, shape in JOINT_COLUMNS.items():
        keep(key, _float_column([e[key] for e in entries], shape, key))
    for key in INT_COLUMNS:
        keep(key, _int_column([e[key] for e in entries], key))
    for key in BOX_COLUMNS:
        keep(key, _float_column([e[key] for e in entries], (2,), key, flatten=True))
    keep("camera", _camera_columns([e["camera"] for e in entries]))

    if "subject" in columns:
        bad = _first(~np.isin(columns["subject"], ALL_SUBJECTS))
        if bad is not None:
            problems.append(_Problem(bad, "subject", f"is {columns['subject'][bad]}, expected one "
                                                     f"of {sorted(ALL_SUBJECTS)}"))
    if "action" in columns:
        actions = columns["action"]
        bad = _first((actions < min(ACTION_IDS)) | (actions > max(ACTION_IDS)))
        if bad is not None:
            problems.append(_Problem(bad, "action", f"is {actions[bad]}, expected an H36M action "
                                                    f"id {min(ACTION_IDS)}..{max(ACTION_IDS)}"))
    if "scale" in columns:
        bad = _first(~(columns["scale"] > 0).all(axis=1))
        if bad is not None:
            problems.append(_Problem(bad, "scale", f"is {columns['scale'][bad].tolist()}, "
                                                   "expected positive box sizes / 200"))
    return columns


def cache_key(pickle_path):
    """16 hex digits from the pickle's size, mtime_ns, first and last megabyte, CACHE_VERSION."""
    stat = os.stat(pickle_path)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"v{CACHE_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(pickle_path, "rb") as handle:
        digest.update(handle.read(_HASHED_BYTES))
        if stat.st_size > _HASHED_BYTES:
            handle.seek(max(stat.st_size - _HASHED_BYTES, _HASHED_BYTES))
            digest.update(handle.read(_HASHED_BYTES))
    return digest.hexdigest()


def cache_path(pickle_path, cache_dir=None):
    """The cache folder for `pickle_path`: <cache_dir or its folder>/<name>.columns-<key>."""
    folder = cache_dir if cache_dir is not None else os.path.dirname(os.path.abspath(pickle_path))
    return os.path.join(folder, f"{os.path.basename(pickle_path)}.columns-{cache_key(pickle_path)}")


def _read_cache(folder, names=COLUMNS):
    """The memory-mapped columns `names` in `folder`, or None when it is absent or incomplete."""
    try:
        with open(os.path.join(folder, "meta.json"), "r", encoding="utf-8") as handle:
            meta = json.load(handle)
        columns = {name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
                   for name in names}
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or any(
            len(array) != meta.get("frames") for array in columns.values()):
        return None
    return columns


def _write_cache(columns, folder, source):
    """Writes the columns into a temporary folder beside `folder`, then renames it into place."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        for name, array in columns.items():
            np.save(os.path.join(temporary, f"{name}.npy"), np.ascontiguousarray(array))
        meta = {"version": CACHE_VERSION, "frames": int(len(next(iter(columns.values())))),
                "source": os.path.abspath(source), "columns": list(columns)}
        with open(os.path.join(temporary, "meta.json"), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1)
        try:
            os.rename(temporary, folder)
        except OSError:  # another process finished the same cache first: keep theirs
            if _read_cache(folder, list(columns)) is None:
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _remove_stale_caches(pickle_path, keep):
    """Deletes older caches (and their lock files) of this pickle in its own folder."""
    folder = os.path.dirname(os.path.abspath(pickle_path))
    prefix = f"{os.path.basename(pickle_path)}.columns-"
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(prefix) and path != keep and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif (name.startswith("." + prefix) and name.endswith(".lock")
              and name != os.path.basename(_lock_path(keep))):
            with contextlib.suppress(OSError):
                os.remove(path)


def _lock_path(folder):
    return os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.lock")


@contextlib.contextmanager
def _conversion_lock(folder):
    """Lets one process at a time convert a pickle (the others then read its cache): without
    it, every rank of a multi-GPU job would unpickle the multi-GB label list at once."""
    try:
        import fcntl
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        handle = open(_lock_path(folder), "a")  # noqa: SIM115 (closed below)
    except (ImportError, OSError):  # no flock (Windows) or unwritable folder: convert unlocked
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def load_labels(pickle_path, cache_dir=None):
    """The frames of an H36M label pickle as columns (see COLUMNS), converted once and cached.

    Args:
        pickle_path: an `h36m_*.pkl` label file (DESIGN 1.1).
        cache_dir: folder for the cache; None = next to the pickle.
    Returns:
        dict column name -> numpy array, N rows each. Read-only memory maps when the cache
        could be written (shared between processes), in-memory arrays otherwise.
    Raises:
        MetaPoseError naming the file (missing, corrupt, unsafe) or the first bad entry.
    """
    if not os.path.isfile(pickle_path):
        raise MetaPoseError(
            f"label file '{pickle_path}' does not exist. Check data.root and data.train_file / "
            "data.val_file; create real labels with tools/prepare_h36m.py or a synthetic set "
            "with tools/make_synthetic.py.")
    return cached_columns(pickle_path,
                          lambda path: entries_to_columns(load_pickle_safely(path), path),
                          COLUMNS, cache_dir)


def cached_columns(source, build, names, cache_dir=None):
    """Columns `names` of the label file `source`, built once by `build(source)` and cached.

    The cache is the folder `cache_path(source, cache_dir)` of one .npy file per column; later
    calls (any process) memory-map it read-only. One process at a time builds (a file lock), the
    others then read its cache. Every label format (H36M pickles, MPI-INF-3DHP npz files) shares
    this mechanism.

    Args:
        source: an existing label file.
        build: function(source) -> dict name -> numpy array (all with the same number of rows);
            it raises MetaPoseError for a bad file.
        names: the column names `build` returns.
        cache_dir: folder for the cache; None = next to `source`.
    Returns:
        dict name -> numpy array: read-only memory maps, or in-memory arrays when the cache
        could not be written (a warning says so).
    """
    folder = cache_path(source, cache_dir)
    columns = _read_cache(folder, names)
    if columns is not None:
        return columns
    with _conversion_lock(folder):
        columns = _read_cache(folder, names)  # another process may have converted it meanwhile
        if columns is not None:
            return columns
        start = time.perf_counter()
        columns = build(source)
        _return_freed_memory()  # the parsed file is gone
        try:
            _write_cache(columns, folder, source)
        except OSError as error:
            logger.warning("could not write the label cache '%s' (%s); using the labels in "
                           "memory. Set data.cache_dir to a writable folder to share them "
                           "between workers and processes.", folder, error)
            return columns
        if cache_dir is None:
            _remove_stale_caches(source, folder)
        logger.info("converted %d frames of '%s' into the column cache '%s' in %.1f s",
                    len(next(iter(columns.values()))), source, folder,
                    time.perf_counter() - start)
        cached = _read_cache(folder, names)
    return cached if cached is not None else columns


def _return_freed_memory():
    """Hands the heap freed by the unpickled entries back to the OS (glibc), so that it is not
    carried in this process's RSS and inherited by forked workers; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
