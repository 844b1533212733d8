"""Loading label pickles without letting them run code: an allow-list unpickler."""

import functools
import gc
import pickle

from utils.errors import MetaPoseError
from utils.input_files import require_file

# Every global a label pickle (lists of dicts of numbers, strings and numpy arrays) may name.
# Python 2 pickles and protocols 0-2 spell builtins as `__builtin__` and bytes via `_codecs`;
# numpy 1.x writes `numpy.core.*`, numpy 2.x `numpy._core.*`.
_BUILTIN_NAMES = frozenset((
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray",
))
_ALLOWED = frozenset(
    [("builtins", name) for name in _BUILTIN_NAMES]
    + [("__builtin__", name) for name in _BUILTIN_NAMES]
    + [("__builtin__", "unicode"), ("__builtin__", "long")]
    + [("_codecs", "encode"), ("collections", "OrderedDict"),
       ("numpy", "ndarray"), ("numpy", "dtype")]
    + [(module, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("_reconstruct", "scalar")]
    + [("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]
)


_H36M_HINT = ("Re-create the file with tools/prepare_h36m.py (real H36M) or "
              "tools/make_synthetic.py (synthetic data).")


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside `_ALLOWED` before anything is called."""

    def __init__(self, handle, path, hint=_H36M_HINT, **kwargs):
        super().__init__(handle, **kwargs)
        self._path = path
        self._hint = hint

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise MetaPoseError(
                f"label file '{self._path}' tries to import {module}.{name}, which a label file "
                "never needs; refusing to load it (nothing in it was run). Pickles can execute "
                "arbitrary code, so only lists and dicts of numbers, strings and numpy arrays are "
                f"accepted. {self._hint}")
        if module.startswith("numpy.core.") and _has_numpy_core_private():
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


@functools.lru_cache(maxsize=None)
def _has_numpy_core_private():
    try:
        import numpy._core  # noqa: F401  (numpy >= 2.0)
    except ImportError:
        return False
    return True


def _load(handle, path, encoding):
    handle.seek(0)
    return RestrictedUnpickler(handle, path, encoding=encoding).load()


def unpickle_stream_safely(handle, source, hint):
    """One object unpickled from the binary stream `handle` (positioned at a pickle) with the
    same allow-list as `load_pickle_safely`: the object arrays inside .npy/.npz files.

    Args:
        handle: readable binary file object.
        source: the file, for messages.
        hint: sentence telling how to re-create the file, appended to the refusal message.
    Raises:
        MetaPoseError when the stream names a global outside the allow-list (nothing is run);
        pickle's own errors (EOFError, UnpicklingError, ...) for a damaged stream.
    """
    return RestrictedUnpickler(handle, source, hint=hint, encoding="latin1").load()


def load_pickle_safely(path):
    """Unpickles `path` allowing only builtin containers/scalars, numpy arrays and OrderedDict.

    Args:
        path: a pickle file (any protocol, Python 2 pickles included).
    Returns:
        The unpickled object.
    Raises:
        MetaPoseError naming the file when it is missing, unreadable, truncated or corrupt, or
        when it names any other global (for example os.system): then nothing in it is executed.
    """
    require_label_file(path)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of new containers would trigger many useless collections (2-4x slower)
    try:
        with open(path, "rb") as handle:
            try:
                return _load(handle, path, "ASCII")
            except UnicodeDecodeError:  # a Python 2 pickle holding byte strings (numpy buffers)
                return _load(handle, path, "latin1")
    except MetaPoseError:
        raise
    except Exception as error:  # pickle reports corruption with many exception types
        failure = error
    finally:
        if gc_was_enabled:
            gc.enable()
    raise MetaPoseError(unpickling_failure(path, failure)) from None


def require_label_file(path):
    """Raises the MetaPoseError for a label file that does not exist or is not a regular file
    (a folder, FIFO or device: never opened)."""
    require_file(path, "label file", "Check data.root and data.train_file / data.val_file, "
                 "create real labels with tools/prepare_h36m.py, or a synthetic set with "
                 "tools/make_synthetic.py.")


def unpickling_failure(path, error):
    """The message for a label file that cannot be unpickled (`error`: exception or text)."""
    if isinstance(error, str):
        reason = error
    elif isinstance(error, OSError):
        reason = f"it cannot be read ({error})"
    elif isinstance(error, EOFError):
        reason = "it ends early (truncated; was the copy or download interrupted?)"
    else:
        reason = f"it is not a valid pickle ({type(error).__name__}: {error})"
    return (f"label file '{path}' cannot be loaded: {reason}. Re-create it with "
            "tools/prepare_h36m.py (real H36M) or tools/make_synthetic.py (synthetic data).")
