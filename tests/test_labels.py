"""Label pickles -> validated, cached, memory-mapped columns."""

import multiprocessing
import os
import pickle
import time

import numpy as np
import pytest

from datasets.labels import COLUMNS, load_labels
from tests.tiny_h36m import make_entries, write_pickle
from utils.errors import MetaPoseError


def _many_entries(count, seed=0):
    """`count` entries built from bulk arrays (fast), in the DESIGN 1.1 layout."""
    rng = np.random.default_rng(seed)
    joints_3d = rng.normal(0, 0.3, size=(count, 17, 3)) + np.array([0, 0, 5.0])
    joints_2d = rng.normal(0, 0.5, size=(count, 4, 17, 2))
    boxes = rng.uniform(100, 600, size=(count, 4))
    camera = {"R": np.eye(3), "T": np.zeros((3, 1)), "fx": 1145.0, "fy": 1144.0, "cx": 512.5,
              "cy": 515.4, "k": np.zeros((3, 1)), "p": np.zeros((2, 1))}
    entries = []
    for i in range(count):
        folder = f"s_01_act_{2 + i % 15:02d}_subact_01_ca_{1 + i % 4:02d}"
        entries.append({
            "image": f"{folder}/{folder}_{i + 1:06d}.jpg",
            "joints_3d": joints_3d[i], "joints_2d_gt": joints_2d[i, 0],
            "joints_2d_cpn": joints_2d[i, 1], "joints_2d_gt_crop": joints_2d[i, 2],
            "joints_2d_cpn_crop": joints_2d[i, 3], "joints_vis": np.ones((17, 3)),
            "subject": (1, 5, 6, 7, 8)[i % 5], "action": 2 + i % 15, "subaction": 1 + i % 2,
            "camera_id": i % 4, "image_id": i + 1, "video_id": i // 1000, "camera": camera,
            "center": boxes[i, :2], "scale": boxes[i, 2:] / 200, "box": boxes[i],
            "source": "h36m", "nposes": count,
        })
    return entries


def _cache_folders(folder):
    return sorted(name for name in os.listdir(folder)
                  if ".columns-" in name and os.path.isdir(os.path.join(folder, name)))


def _folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def test_columns_match_entries_and_second_load_is_fast(tmp_path):
    entries = _many_entries(20000)
    path = str(tmp_path / "h36m_train.pkl")
    write_pickle(path, entries)

    start = time.perf_counter()
    first = load_labels(path)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = load_labels(path)
    second_s = time.perf_counter() - start
    (cache,) = _cache_folders(str(tmp_path))
    cache_mb = _folder_bytes(str(tmp_path / cache)) / 1e6
    print(f"\n20000 entries: pickle {os.path.getsize(path) / 1e6:.1f} MB, first load "
          f"{first_s:.3f} s, cached load {second_s:.4f} s, cache {cache_mb:.1f} MB")
    assert second_s * 5 < first_s

    assert set(second) == set(COLUMNS)
    for name, column in second.items():
        assert isinstance(column, np.memmap), name  # shared pages, not per-worker copies
        assert column.dtype != object and len(column) == 20000, name
        np.testing.assert_array_equal(column, first[name])
    assert second["image"].dtype.kind == "S"
    assert second["joints_3d"].shape == (20000, 17, 3) and second["joints_3d"].dtype == np.float32
    for key in ("joints_2d_gt", "joints_2d_cpn", "joints_2d_gt_crop", "joints_2d_cpn_crop"):
        assert second[key].shape == (20000, 17, 2)
    for i in (0, 12345, 19999):
        entry = entries[i]
        assert second["image"][i].decode() == entry["image"]
        np.testing.assert_allclose(second["joints_3d"][i], entry["joints_3d"], rtol=1e-6)
        np.testing.assert_allclose(second["joints_2d_cpn_crop"][i], entry["joints_2d_cpn_crop"],
                                   rtol=1e-6)
        np.testing.assert_allclose(second["center"][i], entry["center"], rtol=1e-6)
        np.testing.assert_allclose(second["scale"][i], entry["scale"], rtol=1e-6)
        for key in ("subject", "action", "subaction", "camera_id", "image_id"):
            assert second[key][i] == entry[key]
    assert second["fx"][0] == pytest.approx(1145.0) and second["cy"][0] == pytest.approx(515.4)


def test_changed_pickle_invalidates_the_cache(tmp_path):
    entries = make_entries(6)
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, entries)
    before = load_labels(path)
    assert before["action"][0] == entries[0]["action"]
    (old_cache,) = _cache_folders(str(tmp_path))

    # Same size and modification time, different content: the hashed bytes notice it.
    stat = os.stat(path)
    entries[0]["action"] = 16 if entries[0]["action"] != 16 else 15
    write_pickle(path, entries)
    assert os.path.getsize(path) == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = load_labels(path)
    assert after["action"][0] == entries[0]["action"]
    assert _cache_folders(str(tmp_path)) != [old_cache]  # rebuilt, stale one removed
    assert len(_cache_folders(str(tmp_path))) == 1


def test_cache_dir_and_unwritable_fallback(tmp_path):
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, make_entries(3))
    cache_dir = tmp_path / "cache"
    columns = load_labels(path, cache_dir=str(cache_dir))
    assert len(_cache_folders(str(cache_dir))) == 1 and not _cache_folders(str(tmp_path))
    assert len(columns["image"]) == 3

    blocked = tmp_path / "file_not_folder"
    blocked.write_text("x")
    columns = load_labels(path, cache_dir=str(blocked / "sub"))  # cannot be created
    assert len(columns["joints_3d"]) == 3 and not isinstance(columns["joints_3d"], np.memmap)


def _convert_in_child(path, counter, queue):
    import datasets.labels as labels_module

    convert = labels_module.entries_to_columns

    def counted(*args):
        with open(counter, "a") as handle:
            handle.write("x")
        return convert(*args)

    labels_module.entries_to_columns = counted
    queue.put(float(load_labels(path)["joints_3d"].sum()))


def test_concurrent_processes_share_one_conversion(tmp_path):
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, _many_entries(3000))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    counter = str(tmp_path / "conversions")
    children = [context.Process(target=_convert_in_child, args=(path, counter, queue))
                for _ in range(3)]
    for child in children:
        child.start()
    sums = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert len(set(sums)) == 1 and len(_cache_folders(str(tmp_path))) == 1
    with open(counter) as handle:
        assert handle.read() == "x"  # converted once; the others waited and read the cache
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert float(load_labels(path)["joints_3d"].sum()) == sums[0]


def _expect_error(tmp_path, entries, *fragments):
    path = str(tmp_path / "bad.pkl")
    with open(path, "wb") as handle:
        pickle.dump(entries, handle)
    with pytest.raises(MetaPoseError) as error:
        load_labels(path)
    message = str(error.value)
    assert "bad.pkl" in message
    for fragment in fragments:
        assert fragment in message, message
    assert not _cache_folders(str(tmp_path))  # nothing cached for a bad file


def _with(index, key, value, count=6):
    entries = make_entries(count)
    if value is KeyError:
        del entries[index][key]
    else:
        entries[index][key] = value
    return entries


def test_validation_errors_name_file_index_and_key(tmp_path):
    _expect_error(tmp_path, [], "empty")
    _expect_error(tmp_path, {"image": "a.jpg"}, "dict", "list")
    _expect_error(tmp_path, make_entries(3)[:2] + ["oops"], "entry 2", "str")
    _expect_error(tmp_path, _with(4, "joints_2d_cpn", KeyError), "entry 4", "'joints_2d_cpn'",
                  "missing")
    _expect_error(tmp_path, _with(1, "joints_3d", np.zeros((16, 3))), "entry 1", "'joints_3d'",
                  "(16, 3)", "17")
    _expect_error(tmp_path, _with(2, "joints_2d_gt_crop", np.full((17, 2), np.nan)), "entry 2",
                  "'joints_2d_gt_crop'", "NaN")
    inf = make_entries(6)
    inf[3]["joints_3d"][5, 1] = np.inf
    _expect_error(tmp_path, inf, "entry 3", "'joints_3d'", "non-finite")
    _expect_error(tmp_path, _with(5, "subject", 3), "entry 5", "'subject'",
                  "[1, 5, 6, 7, 8, 9, 11]")
    _expect_error(tmp_path, _with(0, "action", 1), "entry 0", "'action'", "2..16")
    _expect_error(tmp_path, _with(2, "action", 17), "entry 2", "'action'")
    _expect_error(tmp_path, _with(3, "subject", "S1"), "entry 3", "'subject'")
    _expect_error(tmp_path, _with(1, "scale", np.array([0.0, 1.0])), "entry 1", "'scale'")
    _expect_error(tmp_path, _with(4, "image", 7), "entry 4", "'image'")
    _expect_error(tmp_path, _with(2, "camera", {"fx": 1.0}), "entry 2", "'camera'", "fy")
    nan_camera = make_entries(6)
    nan_camera[4]["camera"] = dict(nan_camera[4]["camera"], cx=float("nan"))
    _expect_error(tmp_path, nan_camera, "entry 4", "camera.cx")


def test_reports_the_first_bad_entry(tmp_path):
    entries = make_entries(8)
    del entries[6]["center"]  # structural problem late ...
    entries[4]["subject"] = 2  # ... a value problem earlier ...
    entries[3]["joints_2d_cpn"] = np.full((17, 2), np.inf)  # ... and the first one
    _expect_error(tmp_path, entries, "entry 3", "'joints_2d_cpn'")
    entries[3]["joints_2d_cpn"] = np.zeros((17, 2))
    _expect_error(tmp_path, entries, "entry 4", "'subject'")
    entries[4]["subject"] = 1
    _expect_error(tmp_path, entries, "entry 6", "'center'")
