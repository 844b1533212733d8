"""The allow-list unpickler: label-like content loads, anything that could run code is refused."""

import builtins
import collections
import os
import pickle
import subprocess

import numpy as np
import pytest

from datasets.safe_pickle import load_pickle_safely
from utils.errors import MetaPoseError


def _label_like():
    return [{
        "image": "s_09_act_02_subact_01_ca_01/s_09_act_02_subact_01_ca_01_000001.jpg",
        "joints_3d": np.arange(51, dtype=np.float64).reshape(17, 3) / 10,
        "joints_2d_cpn": np.ones((17, 2), dtype=np.float32),
        "subject": 9, "action": np.int64(2), "scale": np.float64(1.5), "ok": True, "none": None,
        "camera": collections.OrderedDict(fx=1145.0, k=np.zeros((3, 1))),
        "misc": (1, 2.5, 3 + 4j, b"bytes", bytearray(b"ba"), {1, 2}, frozenset({3})),
        "dtype": np.dtype("float32"), "strings": np.array(["a", "bc"]),
    }]


def _assert_same(loaded, expected):
    assert isinstance(loaded, list) and len(loaded) == 1
    for key, value in expected[0].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[0][key], value)
            assert loaded[0][key].dtype == value.dtype
        elif isinstance(value, dict):
            assert list(loaded[0][key]) == list(value)
        else:
            assert loaded[0][key] == value


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_loads_label_content_with_every_protocol(tmp_path, protocol):
    path = tmp_path / "labels.pkl"
    expected = _label_like()
    path.write_bytes(pickle.dumps(expected, protocol=protocol))
    _assert_same(load_pickle_safely(str(path)), expected)


def test_loads_numpy_1_module_names(tmp_path):
    """Pickles written by numpy 1.x name numpy.core.multiarray; they must still load."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pickle.dumps([array, np.float64(2.5)], protocol=0)
    if b"numpy._core" in data:
        data = data.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data
    path = tmp_path / "old_numpy.pkl"
    path.write_bytes(data)
    loaded = load_pickle_safely(str(path))
    np.testing.assert_array_equal(loaded[0], array)
    assert loaded[1] == 2.5


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Calls:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([{"image": "a.jpg", "x": _RunsShell(marker)}]))
    # The same payload does run with the plain unpickler (so the test really tests something).
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    with pytest.raises(MetaPoseError) as error:
        load_pickle_safely(str(path))
    message = str(error.value)
    assert str(path) in message
    assert "system" in message and "refusing" in message and "prepare_h36m.py" in message
    assert not marker.exists()


@pytest.mark.parametrize("function,args,name", [
    (builtins.eval, ("1+1",), "builtins.eval"),
    (builtins.exec, ("x = 1",), "builtins.exec"),
    (builtins.getattr, ("text", "upper"), "builtins.getattr"),
    (subprocess.check_output, (["true"],), "subprocess.check_output"),
    (collections.namedtuple, ("P", "a b"), "collections.namedtuple"),
])
def test_refuses_other_globals(tmp_path, function, args, name):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"payload": _Calls(function, *args)}))
    with pytest.raises(MetaPoseError, match=name.replace(".", r"\.")):
        load_pickle_safely(str(path))


def test_missing_truncated_and_garbage_files(tmp_path):
    missing = tmp_path / "nope.pkl"
    with pytest.raises(MetaPoseError, match="nope.pkl"):
        load_pickle_safely(str(missing))

    data = pickle.dumps(_label_like() * 20)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(MetaPoseError, match="truncated.pkl"):
        load_pickle_safely(str(truncated))

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(MetaPoseError, match="empty.pkl"):
        load_pickle_safely(str(empty))

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x89PNG not a pickle at all")
    with pytest.raises(MetaPoseError, match="garbage.pkl"):
        load_pickle_safely(str(garbage))
