"""H36M label pickles (docs/method.md §1.1) as validated columnar numpy arrays, cached as .npy files.

The pickles are lists of one dict per frame; held as Python objects they cost tens of GB and
are copied page by page into every DataLoader worker. `load_labels` converts a pickle once into
a handful of numpy columns and afterwards memory-maps them read-only, so all workers and
processes share the pages. The conversion streams the pickle (datasets/pickle_stream.py): the
entries are validated and written to the column files batch by batch, so a first start at the
real size (1.56 M entries) needs a few GB, not the list of dicts. The cache and its checks are
in datasets/label_cache.py, the validation in datasets/label_checks.py.
"""

import contextlib
import ctypes
import logging
import os
import time

from datasets import label_cache
from datasets.label_checks import (  # noqa: F401  (re-exported for callers)
    COLUMN_SPECS, COLUMNS, FIX_HINT, JOINT_COLUMNS, REQUIRED_KEYS, convert_batch,
)
from datasets.pickle_stream import stream_pickled_list
from datasets.safe_pickle import require_label_file
from utils.errors import MetaPoseError

logger = logging.getLogger(__name__)

TRAIN_FILE = "h36m_train.pkl"  # the label files tools/prepare_h36m.py writes
VAL_FILE = "h36m_validation.pkl"
BATCH_ENTRIES = 2000  # entries converted at a time
PRUNE_ENTRIES = 40000  # entries between two prunes of the unpickler's memo (memory vs time)


def entries_to_columns(entries, source="<labels>"):
    """Validates a list of per-frame label dicts (in memory) and converts it into columns.

    Args:
        entries: list of dicts in the format of docs/method.md §1.1.
        source: file name used in error messages.
    Returns:
        dict column name -> numpy array with N = len(entries) rows (see COLUMN_SPECS).
    Raises:
        MetaPoseError naming `source`, the index and the key of the first bad entry.
    """
    _check_list(entries, source)
    columns = label_cache.ColumnsInMemory()
    for start in range(0, len(entries), BATCH_ENTRIES):
        columns.add(convert_batch(entries[start:start + BATCH_ENTRIES], start, source))
    return columns.columns()


def _check_list(result, source):
    """Raises for a label file that holds no list, or an empty one (`result`: the list, or
    the number of entries streamed)."""
    if not isinstance(result, (list, tuple, int)) or isinstance(result, bool):
        raise MetaPoseError(f"label file '{source}' holds a {type(result).__name__}, expected a "
                            f"list with one dict per frame (docs/method.md §1.1). {FIX_HINT}")
    if (result if isinstance(result, int) else len(result)) == 0:
        raise MetaPoseError(f"label file '{source}' holds an empty list: it has no frames. "
                            f"{FIX_HINT}")


def _convert(pickle_path, sink):
    """Streams the pickle into `sink` (ColumnFiles or ColumnsInMemory); returns the digest."""
    def on_batch(entries, offset):
        sink.add(convert_batch(entries, offset, pickle_path))

    result, digest = stream_pickled_list(pickle_path, on_batch, sink.reset,
                                         batch_size=BATCH_ENTRIES, prune_every=PRUNE_ENTRIES)
    _check_list(result, pickle_path)
    return digest


def load_labels(pickle_path, cache_dir=None):
    """The frames of an H36M label pickle as columns (see COLUMN_SPECS), converted once and cached.

    Args:
        pickle_path: an `h36m_*.pkl` label file (docs/method.md §1.1).
        cache_dir: folder for the cache; None = next to the pickle.
    Returns:
        dict column name -> numpy array, N rows each. Read-only memory maps when the cache
        could be written (shared between processes), in-memory arrays otherwise.
    Raises:
        MetaPoseError naming the file (missing, corrupt, unsafe) or the first bad entry.
    """
    require_label_file(pickle_path)

    def into_folder(folder):  # streamed: one batch of entries in memory at a time
        sink = label_cache.ColumnFiles(folder)
        try:
            digest = _convert(pickle_path, sink)
            return digest, sink.frames, sink.finish()
        finally:
            sink.close()

    def in_memory():
        sink = label_cache.ColumnsInMemory()
        _convert(pickle_path, sink)
        return sink.columns()

    return _cached(pickle_path, COLUMNS, COLUMN_SPECS, into_folder, in_memory, cache_dir)


def cached_columns(source, build, names, cache_dir=None):
    """Columns `names` of the label file `source`, built once by `build(source)` and cached.

    The cache mechanism of `load_labels` (content-keyed folder of .npy files, checked at every
    open, rebuilt when damaged, one builder at a time) for label formats that are read whole,
    such as MPI-INF-3DHP's npz files.

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
    def into_folder(folder):
        digest = label_cache.file_digest(source)
        columns = build(source)
        frames = len(next(iter(columns.values())))
        info = label_cache.write_columns(folder, {name: columns[name] for name in names})
        return digest, frames, info

    return _cached(source, tuple(names), None, into_folder, lambda: build(source), cache_dir)


def _cached(source, names, specs, into_folder, in_memory, cache_dir):
    """The cached columns of `source`: the fast path, else (under the lock) a cache whose content
    digest matches, else a conversion by `into_folder(temporary folder) -> (digest, frames,
    column records)`; `in_memory()` when no cache can be written."""
    parent = cache_dir if cache_dir is not None else os.path.dirname(os.path.abspath(source))
    columns, _ = label_cache.find_by_fingerprint(parent, source, names, specs)
    if columns is not None:
        if label_cache.has_leftovers(parent, source):
            with contextlib.suppress(OSError), \
                    label_cache.conversion_lock(parent, source, blocking=False) as held:
                if held:  # nobody is converting: the temporary folder is from a killed run
                    label_cache.remove_leftovers(parent, source)
        return columns
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(label_cache.conversion_lock(parent, source))
        except OSError as error:  # the cache folder cannot be created or written
            return _in_memory(source, in_memory, error)
        label_cache.remove_leftovers(parent, source)
        columns, damaged = label_cache.find_by_fingerprint(parent, source, names, specs)
        if columns is None and damaged is None and label_cache.candidate_folders(parent, source):
            # perhaps only the metadata changed (touched, copied, moved): compare the content
            columns, damaged = label_cache.find_by_digest(
                parent, source, label_cache.file_digest(source), names, specs)
        if columns is not None:  # another process converted it meanwhile, or the content matched
            return columns
        if damaged is not None:
            logger.warning("the label cache '%s' is damaged (a column is missing, truncated or "
                           "was replaced); rebuilding it", damaged)
            label_cache.remove_folder(damaged)
        try:
            return _convert_into_cache(source, parent, names, specs, into_folder)
        except OSError as error:
            return _in_memory(source, in_memory, error)


def _in_memory(source, in_memory, reason):
    logger.warning("could not write the label cache for '%s' (%s); converting the labels in "
                   "memory. Set data.cache_dir to a writable folder to share them between "
                   "workers and processes.", source, reason)
    columns = in_memory()
    _return_freed_memory()
    return columns


def _convert_into_cache(source, parent, names, specs, into_folder):
    """Converts `source` into a new cache folder under `parent` (call under the lock); returns
    the memory-mapped columns."""
    start = time.perf_counter()
    before = label_cache.fingerprint(source)
    recorded_ns = time.time_ns()
    temporary = label_cache.new_temporary(parent, source)
    try:
        digest, frames, column_info = into_folder(temporary)
        unchanged = label_cache.fingerprint(source) == before
        record = {"fingerprint": before, "recorded_ns": recorded_ns} if unchanged else None
        folder = label_cache.publish(temporary, parent, source, digest, frames, column_info,
                                     record)
    finally:
        if os.path.lexists(temporary):  # the conversion failed: nothing half-written stays
            label_cache.remove_folder(temporary)
        _return_freed_memory()  # the unpickled entries are gone
    label_cache.remove_stale(parent, source, keep=folder)
    columns = label_cache.open_columns(folder, label_cache.read_meta(folder), names, specs)
    if columns is None:
        raise MetaPoseError(f"the label cache '{folder}' written just now cannot be read back; "
                            "check the disk (free space, errors) or set data.cache_dir to "
                            "another folder.")
    logger.info("converted %d frames of '%s' into the column cache '%s' in %.1f s",
                frames, source, folder, time.perf_counter() - start)
    return columns


def _return_freed_memory():
    """Hands the heap freed by the unpickled entries back to the OS (glibc), so that it is not
    carried in this process's RSS and inherited by forked workers; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
