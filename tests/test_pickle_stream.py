"""Streaming a pickled list batch by batch: same objects as pickle.load, bounded memo, safe."""

import os
import pickle

import numpy as np
import pytest

from datasets import pickle_stream
from datasets.pickle_stream import stream_pickled_list
from utils.errors import MetaPoseError


def _entries(count):
    """Label-like dicts with the sharing real pickles have: one camera dict and one joints_vis
    array for many entries, numpy scalars in a tuple, strings and bytes."""
    shared_camera = {"R": np.eye(3), "fx": 1145.0, "k": np.zeros((3, 1))}
    vis = np.ones((17, 3))
    entries = []
    for i in range(count):
        camera = shared_camera if i < count // 2 else {"R": np.eye(3) * 2, "fx": 2.0}
        folder = f"s_01_act_02_subact_01_ca_{1 + i // 500:02d}"
        entries.append({"image": f"{folder}/{folder}_{i + 1:06d}.jpg",
                        "joints_3d": np.full((17, 3), i, np.float64), "camera": camera,
                        "joints_vis": vis, "center": (np.float64(i), np.float64(2.0)),
                        "source": "h36m", "subject": 1, "blob": b"x" * (1 + i % 3),
                        "scale": np.array([i, 1.0], np.float32)})
    return entries


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _stream(path, prune_every, batch_size=300):
    received, restarts = [], []

    def on_batch(items, offset):
        assert offset == len(received) and len(items) <= batch_size
        received.extend(items)

    def on_restart():
        restarts.append(len(received))
        received.clear()

    result, digest = stream_pickled_list(path, on_batch, on_restart, batch_size=batch_size,
                                         prune_every=prune_every)
    return result, digest, received, restarts


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_streamed_items_equal_pickle_load(tmp_path, protocol):
    entries = _entries(3000)
    path = str(tmp_path / "labels.pkl")
    with open(path, "wb") as handle:
        pickle.dump(entries, handle, protocol=protocol)
    count, digest, received, restarts = _stream(path, prune_every=700)
    assert count == len(entries) and not restarts
    assert all(map(_same, pickle.load(open(path, "rb")), received))
    import hashlib
    with open(path, "rb") as handle:
        assert digest == hashlib.blake2b(handle.read(), digest_size=16).hexdigest()


def test_prunes_keep_the_memo_small(tmp_path, monkeypatch):
    path = str(tmp_path / "labels.pkl")
    with open(path, "wb") as handle:
        pickle.dump(_entries(6000), handle, protocol=4)
    sizes = []
    prune = pickle_stream._Collector.prune

    def measured(self):
        prune(self)
        sizes.append(len(self.unpickler.memo.copy()))

    monkeypatch.setattr(pickle_stream._Collector, "prune", measured)
    seen = []  # a consumer that keeps nothing of the entries, like the label conversion

    def on_batch(items, offset):
        seen.append(float(items[-1]["joints_3d"][0, 0]))

    count, _ = stream_pickled_list(path, on_batch, seen.clear, batch_size=300, prune_every=1000)
    assert count == 6000 and seen[-1] == 5999.0 and len(sizes) >= 4
    assert max(sizes) < 100  # keys, globals, dtypes, the shared camera and joints_vis


def test_a_reference_to_a_freed_object_reads_the_file_again(tmp_path, caplog):
    entries = _entries(3000)
    entries[2500]["joints_3d"] = entries[3]["joints_3d"]  # shared across a prune, unseen before
    path = str(tmp_path / "labels.pkl")
    with open(path, "wb") as handle:
        pickle.dump(entries, handle, protocol=4)
    count, _, received, restarts = _stream(path, prune_every=700)
    assert count == 3000 and len(restarts) == 1 and "reading it again" in caplog.text
    assert all(map(_same, entries, received))
    assert received[2500]["joints_3d"] is received[3]["joints_3d"]


def test_python2_byte_strings_and_other_top_level_objects(tmp_path):
    data = pickle.dumps([{"a": np.arange(3.0)}] * 2, protocol=2)
    data = data.replace(b"numpy._core", b"numpy.core")
    path = str(tmp_path / "old.pkl")
    with open(path, "wb") as handle:
        handle.write(data)
    count, _, received, _ = _stream(path, prune_every=1)
    assert count == 2 and np.array_equal(received[1]["a"], np.arange(3.0))
    with open(path, "wb") as handle:
        pickle.dump({"not": "a list"}, handle)
    result, _, received, _ = _stream(path, prune_every=1)
    assert result == {"not": "a list"} and not received


class _RunsCode:
    def __reduce__(self):
        return os.system, ("true",)


def test_unsafe_truncated_and_missing_files(tmp_path):
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as handle:
        pickle.dump([{"a": 1}, _RunsCode()], handle)
    with pytest.raises(MetaPoseError, match="system"):
        _stream(path, prune_every=1)
    data = pickle.dumps(_entries(50))
    with open(path, "wb") as handle:
        handle.write(data[:len(data) // 2])
    with pytest.raises(MetaPoseError, match="evil.pkl"):
        _stream(path, prune_every=10)
    with pytest.raises(MetaPoseError, match="does not exist"):
        _stream(str(tmp_path / "nothing.pkl"), prune_every=10)
    # the collector's name is private to one stream: a file cannot ask for it
    with open(path, "wb") as handle:
        handle.write(b"c__metapose_stream_0\ncollector\n)R.")
    with pytest.raises(MetaPoseError, match="refusing"):
        _stream(path, prune_every=10)


def test_a_failure_of_the_receiver_is_not_called_a_damaged_pickle(tmp_path):
    path = str(tmp_path / "list.pkl")
    with open(path, "wb") as handle:
        pickle.dump(list(range(1000)), handle)

    def on_batch(items, offset):
        if offset >= 600:
            raise ValueError("no entry of mine")
    with pytest.raises(MetaPoseError) as error:
        stream_pickled_list(path, on_batch, lambda: None, batch_size=300)
    message = str(error.value)
    assert "is a valid pickle, but its entries 600 to 899 are not label entries" in message
    assert "ValueError: no entry of mine" in message and "not a valid pickle" not in message
