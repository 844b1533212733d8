"""Unpickling a label list batch by batch, so that a multi-GB list of dicts never exists at once.

The unpickler builds a pickled list with EMPTY_LIST and then adds its items with APPENDS, about
a thousand at a time; for an object that is not a list it calls `obj.extend(items)` instead
(PEP 307). The reader below rewrites the list's EMPTY_LIST opcode, the first one of the file,
into a call that creates a collector, so the items arrive at the collector in batches, which it
hands to a callback and drops.

The unpickler's memo also keeps every object it built, since later opcodes may refer back to
any of them. Every `prune_every` entries the collector replaces the memo by one that holds only
what later entries may still share (see `_Collector.prune`: objects with two holders, such as
dict keys or a camera dict shared by many entries, classes, functions, dtypes, short strings,
the values of the last entries), so the objects of consumed entries are freed and memory stays
bounded by one period of entries. Should a later opcode still refer to a dropped object, the
unpickler stops ("Memo value not found") and `stream_pickled_list` reads the file again without
pruning: a pickle it cannot stream costs memory, never correctness.

Everything goes through the allow-list unpickler of datasets/safe_pickle.py (nothing in a label
file can run code), and the bytes read are hashed on the way (the cache key of labels.py).
"""

import gc
import hashlib
import io
import itertools
import logging
import operator
import pickle
import secrets
import struct
import sys

import numpy as np

from datasets.safe_pickle import RestrictedUnpickler, require_label_file, unpickling_failure
from utils.errors import MetaPoseError

logger = logging.getLogger(__name__)

_PROTO, _FRAME, _EMPTY_LIST, _MARK, _LIST = b"\x80", b"\x95", b"]", b"(", b"l"
_READ_CHUNK = 1 << 20
_KEPT_TYPES = (type, np.dtype, type(len), type(lambda: None))
_SHORT_STRING = 40  # shorter strings survive a prune (keys; per-frame image paths are longer)


class _HashingRawReader(io.RawIOBase):
    """A file whose bytes are `prefix` followed by the rest of `handle`; hashes what it reads
    from `handle` (the prefix stands for bytes already hashed by the caller)."""

    def __init__(self, handle, prefix, digest):
        super().__init__()
        self._handle, self._prefix, self._digest = handle, prefix, digest

    def readable(self):
        return True

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        if self._prefix:
            count = min(len(view), len(self._prefix))
            view[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        count = self._handle.readinto(view)
        if count:
            self._digest.update(view[:count])
        return count

    def drain(self):
        """Hashes the rest of the file (bytes after the pickle's STOP opcode, if any)."""
        while True:
            data = self._handle.read(_READ_CHUNK)
            if not data:
                return
            self._digest.update(data)


def _rewritten_start(handle, digest, token):
    """(prefix, True) where prefix replaces the file's first bytes up to and including the
    top-level EMPTY_LIST with a call creating the collector `token`; (raw start, False) when the
    file does not start a list that way (then it is read whole, without streaming)."""
    call = b"c" + token.encode("ascii") + b"\ncollector\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE
    head = handle.read(2)
    digest.update(head)
    if head[:1] == _PROTO and len(head) == 2:
        nxt = handle.read(1)
        digest.update(nxt)
        if nxt == _FRAME:
            size_bytes = handle.read(8)
            frame = handle.read(struct.unpack("<Q", size_bytes)[0]) if len(size_bytes) == 8 else b""
            digest.update(size_bytes + frame)
            if frame[:1] == _EMPTY_LIST:  # unframe the first frame: frames are optional
                return head + call + frame[1:], True
            return head + nxt + size_bytes + frame, False
        if nxt == _EMPTY_LIST:
            return head + call, True
        return head + nxt, False
    if head[:1] == _EMPTY_LIST:  # protocol 1
        return call + head[1:], True
    if head == _MARK + _LIST:  # protocol 0
        return call, True
    return head, False


class _BatchFailed(Exception):
    """on_batch raised on entries that were unpickled fine: (first index, count, error)."""

    def __init__(self, offset, count, error):
        super().__init__(offset, count, error)
        self.offset, self.count, self.error = offset, count, error


class _Collector:
    """Stands in for the top-level list: receives its items batch by batch (see module doc)."""

    def __init__(self, on_batch, batch_size, prune_every):
        self.on_batch, self.batch_size, self.prune_every = on_batch, batch_size, prune_every
        self.unpickler = None
        self.count = 0  # entries handed on
        self.prunes = 0
        self._pending = []
        self._since_prune = 0
        self._kept = {}  # memo index -> object kept at the last prune

    def extend(self, items):
        self._pending.extend(items)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def append(self, item):
        self.extend([item])

    def flush(self, last=False):
        """Hands the pending items on; prunes the memo when due (not after the last items)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        for start in range(0, len(batch), self.batch_size):
            self._hand_on(batch[start:start + self.batch_size])
        self._since_prune += len(batch)
        if not last and self.prune_every and self._since_prune >= self.prune_every and \
                _within_one_sequence(batch[-2:]):
            del batch
            self.prune()

    def _hand_on(self, items):
        try:
            self.on_batch(items, self.count)
        except MetaPoseError:
            raise
        except Exception as error:  # the receiver's failure, not the pickle's
            raise _BatchFailed(self.count, len(items), error) from error
        self.count += len(items)

    def prune(self):
        """Replaces the unpickler's memo by the objects that later entries may share.

        Kept: objects with two holders besides the memo (a value shared by several entries, a
        dict key, numpy's globals and b"b"; a plain per-entry value has one holder, its entry),
        classes, functions, dtypes and short strings, the objects kept last time that are
        still in the memo, and the most recently memoized objects (a sharing may start in the
        last entries). Written with C-level iteration (map, compress): the memo holds about sixty
        objects per entry.
        """
        memo = self.unpickler.memo.copy()
        keep = {index: obj for index, obj in self._kept.items() if memo.get(index) is obj}
        self._kept = None
        # references: the unpickler's memo, the copy, the iterator's, then the holders (the
        # selected indices are ints: collecting them adds no reference to the objects)
        shared = map(operator.ge, map(sys.getrefcount, memo.values()), itertools.repeat(5))
        typed = map(_KEPT_TYPE_FLAGS.__getitem__, map(type, memo.values()))
        chosen = list(itertools.compress(memo.keys(), map(operator.or_, shared, typed)))
        strings = list(itertools.compress(memo.keys(), map(operator.is_, map(type, memo.values()),
                                                           itertools.repeat(str))))
        chosen += itertools.compress(strings, map(operator.ge, itertools.repeat(_SHORT_STRING),
                                                  map(len, map(memo.__getitem__, strings))))
        keep.update(zip(chosen, map(memo.__getitem__, chosen)))
        del memo, chosen, strings
        # Clearing first frees the old memo array (and the dropped objects) before the new one
        # is written: the arrays are 8 bytes per memo index, hundreds of MB at the real size.
        self.unpickler.memo.clear()
        self.unpickler.memo = _memo_holding(keep)
        self._kept = keep
        self._since_prune = 0
        self.prunes += 1


class _TypeFlags(dict):
    """type -> whether objects of that type are always kept by a prune (filled on first use)."""

    def __missing__(self, kind):
        flag = issubclass(kind, _KEPT_TYPES)
        self[kind] = flag
        return flag


_KEPT_TYPE_FLAGS = _TypeFlags()


def _within_one_sequence(entries):
    """Whether the last two entries show frames of one recording (the same image folder), or
    say nothing about it: then a prune after them cannot cut a sequence's sharing short."""
    images = [entry.get("image") if isinstance(entry, dict) else None for entry in entries]
    if len(images) < 2 or not all(isinstance(image, str) for image in images):
        return True
    return images[0].rpartition("/")[0] == images[1].rpartition("/")[0]


def _memo_holding(objects):
    """An unpickler memo (its proxy object) holding exactly `objects` ({index: object}).

    A memo can only be set from a dict (which CPython 3.11 fills wrongly) or copied from another
    unpickler, so a tiny pickle loaded by a helper unpickler stores each object at its index:
    BINPERSID fetches it, LONG_BINPUT memoizes it at that index, POP drops it from the stack.
    The memo array doubles past the largest index put so far, and the copy is as long as the
    helper's: putting first the smallest index above half the largest keeps both near the
    largest index + 1 (8 bytes a slot, hundreds of MB at the real size).
    """
    items = sorted(objects.items())
    if items:
        largest = items[-1][0]
        first = next(number for number, (index, _) in enumerate(items) if 2 * index >= largest)
        items.insert(0, items.pop(first))
    program = [b"\x80\x02"]
    for number, (index, _) in enumerate(items):
        program.append(b"J" + struct.pack("<i", number) + b"Q" + b"r" + struct.pack("<I", index)
                       + b"0")
    program.append(b"N.")
    helper = pickle.Unpickler(io.BytesIO(b"".join(program)))
    helper.persistent_load = lambda number: items[number][1]
    helper.load()
    return helper.memo


class _StreamingUnpickler(RestrictedUnpickler):
    """The allow-list unpickler that also resolves this stream's private collector name."""

    def __init__(self, handle, path, token, collector, **kwargs):
        super().__init__(handle, path, **kwargs)
        self._token, self._collector = token, collector

    def find_class(self, module, name):
        if module == self._token and name == "collector":
            return lambda: self._collector
        return super().find_class(module, name)


def _stream_once(path, on_batch, batch_size, prune_every, encoding):
    """One pass: (entry count or the unpickled object when it is no list, hex digest, prunes)."""
    digest = hashlib.blake2b(digest_size=16)
    token = f"__metapose_stream_{secrets.token_hex(8)}"
    with open(path, "rb", buffering=0) as raw_handle:
        prefix, streaming = _rewritten_start(raw_handle, digest, token)
        raw = _HashingRawReader(raw_handle, prefix, digest)
        stream = io.BufferedReader(raw, buffer_size=_READ_CHUNK)
        collector = _Collector(on_batch, batch_size, prune_every if streaming else 0)
        unpickler = _StreamingUnpickler(stream, path, token, collector, encoding=encoding)
        collector.unpickler = unpickler
        result = unpickler.load()
        collector.unpickler = None
        del unpickler
        raw.drain()
    if result is collector:
        collector.flush(last=True)
        return collector.count, digest.hexdigest(), collector.prunes
    return result, digest.hexdigest(), 0


def stream_pickled_list(path, on_batch, on_restart, batch_size=2000, prune_every=50000):
    """Unpickles the list in `path` safely, handing its items to `on_batch` in batches.

    Args:
        path: a pickle file (any protocol, Python 2 pickles included).
        on_batch: called as on_batch(items, offset) with consecutive items of the list;
            offset is the index of items[0].
        on_restart: called before the file is read again from the start (after a Python 2
            string decoding error, or when the memo could not be pruned); must forget every
            batch received so far.
        batch_size: items per on_batch call (the last may be shorter).
        prune_every: items between memo prunes; 0 keeps the whole memo.
    Returns:
        (count, digest): the number of items and the blake2b-128 hex digest of the file's
        bytes; when the file holds something other than a list: (that object, digest), and
        on_batch was never called.
    Raises:
        MetaPoseError naming the file when it is missing, truncated, corrupt or unsafe.
    """
    require_label_file(path)
    attempts = [("ASCII", prune_every)]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of new containers would trigger many useless collections
    try:
        while attempts:
            encoding, prune = attempts.pop(0)
            try:
                result, digest, prunes = _stream_once(path, on_batch, batch_size, prune, encoding)
                if prunes:
                    logger.debug("streamed '%s' with %d memo prunes", path, prunes)
                return result, digest
            except UnicodeDecodeError:  # a Python 2 pickle holding byte strings (numpy buffers)
                if encoding == "latin1":
                    raise MetaPoseError(unpickling_failure(path, "it cannot be decoded")) from None
                on_restart()
                attempts.insert(0, ("latin1", prune))
            except pickle.UnpicklingError as error:
                if prune and "memo value not found" in str(error).lower():
                    logger.warning(
                        "label file '%s' refers back to objects that the streaming reader had "
                        "already freed; reading it again while keeping all of them (this needs "
                        "more memory)", path)
                    on_restart()
                    attempts.insert(0, (encoding, 0))
                    continue
                raise MetaPoseError(unpickling_failure(path, error)) from None
            except MetaPoseError:
                raise
            except _BatchFailed as failed:
                raise MetaPoseError(unpickling_failure(path, (
                    f"the file is a valid pickle, but its entries {failed.offset} to "
                    f"{failed.offset + failed.count - 1} are not label entries of the expected "
                    f"format ({type(failed.error).__name__}: {str(failed.error)[:200]})"))) \
                    from None
            except Exception as error:  # pickle reports corruption with many exception types
                raise MetaPoseError(unpickling_failure(path, error)) from None
    finally:
        if gc_was_enabled:
            gc.enable()
    raise AssertionError("unreachable")
