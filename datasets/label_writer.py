"""Writing a label pickle incrementally: one standard pickled list, never held in memory.

`pickle.dump(entries)` needs the whole list (about 20 GB of Python objects for the 1.56 M
training entries). `LabelPickleWriter` writes the same kind of file piece by piece: PROTO 3, an
EMPTY_LIST, then the entries in batches of MARK ... APPENDS, then STOP, which `pickle.load`
reads as one list. One pickler pickles the entries (its memo shares dict keys and repeated
objects between entries as a single dump would) and its memo is cleared after every
recording, so neither the writer nor a reader holds more than one recording's objects. Protocol
3 numbers memo entries explicitly (BINPUT), so entries written after a clear reuse memo slots
correctly; the output is byte-for-byte a function of the entries (deterministic).
"""

import io
import pickle

from utils.atomic_files import atomic_output

_PROTOCOL = 3
_BATCH = 1000  # entries per APPENDS, as pickle.dump does


class LabelPickleWriter:
    """Context manager writing a list of label dicts to `path` (atomically: the file appears
    under its name only once complete)."""

    def __init__(self, path):
        self.path = path
        self.count = 0
        self._output = None
        self._stream = None
        self._buffer = io.BytesIO()
        self._pickler = pickle.Pickler(self._buffer, protocol=_PROTOCOL)
        self._pending = []

    def __enter__(self):
        self._output = atomic_output(self.path)
        self._stream = self._output.__enter__()
        try:
            self._stream.write(pickle.PROTO + bytes([_PROTOCOL]) + pickle.EMPTY_LIST)
        except BaseException as error:
            self._abandon(error)
        return self

    def write(self, entry):
        """Appends one entry (a dict of picklable values)."""
        self._buffer.seek(0)
        self._buffer.truncate()
        self._pickler.dump(entry)
        data = self._buffer.getvalue()
        self._pending.append(data[2:-1])  # without this dump's PROTO and STOP
        self.count += 1
        if len(self._pending) == _BATCH:
            self._flush()

    def write_recording(self, entries):
        """Appends the entries of one recording, then forgets the objects they shared."""
        for entry in entries:
            self.write(entry)
        self._pickler.clear_memo()

    def _flush(self):
        if self._pending:
            self._stream.write(pickle.MARK + b"".join(self._pending) + pickle.APPENDS)
            self._pending = []

    def __exit__(self, kind, value, traceback):
        if kind is None:
            try:
                self._flush()
                self._stream.write(pickle.STOP)
            except BaseException as error:
                self._abandon(error)
        return self._output.__exit__(kind, value, traceback)

    def _abandon(self, error):
        """Hands `error`, met outside the `with` body, to the atomic output (which removes the
        temporary file and turns a full disk into one MetaPoseError), then re-raises it."""
        self._output.__exit__(type(error), error, error.__traceback__)
        raise error


def write_label_pickle(entries, path):
    """Pickles a list of label dicts to `path` atomically with LabelPickleWriter."""
    with LabelPickleWriter(path) as writer:
        writer.write_recording(entries)
