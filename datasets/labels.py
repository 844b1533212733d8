"""H36M label pickles (DESIGN 1.1) as validated columnar numpy arrays, cached as .npy files.

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

BATCH_ENTRIES = 2000  # entries converted at a time
PRUNE_ENTRIES = 40000  # entries between two prunes of the unpickler's memo (memory vs time)


def entries_to_columns(entries, source="<labels>"):
    """Validates a list of per-frame label dicts (in memory) and converts it into columns.

    Args:
        entries: list of dicts in the DESIGN 1.1 format.
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
                            f"list with one dict per frame (DESIGN 1.1). {FIX_HINT}")
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


def _convert_in_memory(pickle_path, reason):
    logger.warning("could not write the label cache for '%s' (%s); converting the labels in "
                   "memory. Set data.cache_dir to a writable folder to share them between "
                   "workers and processes.", pickle_path, reason)
    sink = label_cache.ColumnsInMemory()
    _convert(pickle_path, sink)
    columns = sink.columns()
    _return_freed_memory()
    return columns


def _convert_into_cache(pickle_path, parent):
    """Converts the pickle into a new cache folder under `parent` (call under the lock);
    returns the memory-mapped columns."""
    start = time.perf_counter()
    before = label_cache.fingerprint(pickle_path)
    recorded_ns = time.time_ns()
    temporary = label_cache.new_temporary(parent, pickle_path)
    sink = label_cache.ColumnFiles(temporary)
    try:
        digest = _convert(pickle_path, sink)
        column_info = sink.finish()
        unchanged = label_cache.fingerprint(pickle_path) == before
        record = {"fingerprint": before, "recorded_ns": recorded_ns} if unchanged else None
        folder = label_cache.publish(temporary, parent, pickle_path, digest, sink.frames,
                                     column_info, record)
    finally:
        sink.close()
        if os.path.lexists(temporary):  # the conversion failed: nothing half-written stays
            label_cache.remove_folder(temporary)
        _return_freed_memory()  # the unpickled entries are gone
    label_cache.remove_stale(parent, pickle_path, keep=folder)
    columns = label_cache.open_columns(folder, label_cache.read_meta(folder))
    if columns is None:
        raise MetaPoseError(f"the label cache '{folder}' written just now cannot be read back; "
                            "check the disk (free space, errors) or set data.cache_dir to "
                            "another folder.")
    logger.info("converted %d frames of '%s' into the column cache '%s' in %.1f s",
                len(columns["image"]), pickle_path, folder, time.perf_counter() - start)
    return columns


def load_labels(pickle_path, cache_dir=None):
    """The frames of an H36M label pickle as columns (see COLUMN_SPECS), converted once and cached.

    Args:
        pickle_path: an `h36m_*.pkl` label file (DESIGN 1.1).
        cache_dir: folder for the cache; None = next to the pickle.
    Returns:
        dict column name -> numpy array, N rows each. Read-only memory maps when the cache
        could be written (shared between processes), in-memory arrays otherwise.
    Raises:
        MetaPoseError naming the file (missing, corrupt, unsafe) or the first bad entry.
    """
    require_label_file(pickle_path)
    parent = cache_dir if cache_dir is not None else \
        os.path.dirname(os.path.abspath(pickle_path))
    columns, _ = label_cache.find_by_fingerprint(parent, pickle_path)
    if columns is not None:
        if label_cache.has_leftovers(parent, pickle_path):
            with contextlib.suppress(OSError), \
                    label_cache.conversion_lock(parent, pickle_path, blocking=False) as held:
                if held:  # nobody is converting: the temporary folder is from a killed run
                    label_cache.remove_leftovers(parent, pickle_path)
        return columns
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(label_cache.conversion_lock(parent, pickle_path))
        except OSError as error:  # the cache folder cannot be created or written
            return _convert_in_memory(pickle_path, error)
        return _load_locked(pickle_path, parent)


def _load_locked(pickle_path, parent):
    """The columns from a valid cache, after rebuilding it if needed (call under the lock)."""
    label_cache.remove_leftovers(parent, pickle_path)
    columns, damaged = label_cache.find_by_fingerprint(parent, pickle_path)
    if columns is None and damaged is None and label_cache.candidate_folders(parent, pickle_path):
        # perhaps only the metadata changed (touched, copied, moved): compare the content
        columns, damaged = label_cache.find_by_digest(parent, pickle_path,
                                                      label_cache.file_digest(pickle_path))
    if columns is not None:  # another process converted it meanwhile, or the content matched
        return columns
    if damaged is not None:
        logger.warning("the label cache '%s' is damaged (a column is missing, truncated or was "
                       "replaced); rebuilding it", damaged)
        label_cache.remove_folder(damaged)
    try:
        return _convert_into_cache(pickle_path, parent)
    except OSError as error:
        return _convert_in_memory(pickle_path, error)


def _return_freed_memory():
    """Hands the heap freed by the unpickled entries back to the OS (glibc), so that it is not
    carried in this process's RSS and inherited by forked workers; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
