"""Label pickles -> validated, cached, memory-mapped columns."""

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import stat
import time

import numpy as np
import pytest

from datasets.labels import COLUMNS, load_labels
from tests.tiny_h36m import make_entries, write_pickle
from utils.errors import MetaPoseError


def _many_entries(count, seed=0):
    """`count` entries built from bulk arrays (fast), in the layout and units of docs/method.md §1.1."""
    rng = np.random.default_rng(seed)
    template = np.stack([np.zeros(3)] + [rng.normal(0, 0.25, 3) for _ in range(16)])
    joints_3d = template + rng.normal(0, 0.02, size=(count, 17, 3)) + np.array([0, 0, 5.0])
    screen = rng.normal(0, 0.3, size=(count, 2, 17, 2))
    crop = rng.uniform(20, 170, size=(count, 2, 17, 2))
    boxes = rng.uniform(100, 600, size=(count, 4))
    camera = {"R": np.eye(3), "T": np.zeros((3, 1)), "fx": 1145.0, "fy": 1144.0, "cx": 512.5,
              "cy": 515.4, "k": np.zeros((3, 1)), "p": np.zeros((2, 1))}
    entries = []
    for i in range(count):
        folder = f"s_01_act_{2 + i % 15:02d}_subact_01_ca_{1 + i % 4:02d}"
        entries.append({
            "image": f"{folder}/{folder}_{i + 1:06d}.jpg",
            "joints_3d": joints_3d[i], "joints_2d_gt": screen[i, 0],
            "joints_2d_cpn": screen[i, 1], "joints_2d_gt_crop": crop[i, 0],
            "joints_2d_cpn_crop": crop[i, 1], "joints_vis": np.ones((17, 3)),
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


def _same_size_rewrite(path, entries):
    """Rewrites `path` with `entries` keeping its size and modification time."""
    stat_before = os.stat(path)
    write_pickle(path, entries)
    assert os.path.getsize(path) == stat_before.st_size
    os.utime(path, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))


def test_changed_content_with_the_same_size_and_mtime_rebuilds_the_cache(tmp_path):
    """A change in the middle of the file (neither first nor last megabyte), same size and
    mtime: the inode change time says something happened, the content digest tells what."""
    entries = _many_entries(6000)
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, entries)
    assert os.path.getsize(path) > 3 * 2 ** 20
    middle = 3000
    before = load_labels(path)
    assert before["action"][middle] == entries[middle]["action"]
    (old_cache,) = _cache_folders(str(tmp_path))

    entries[middle]["action"] = 16 if entries[middle]["action"] != 16 else 15
    _same_size_rewrite(path, entries)
    after = load_labels(path)
    assert after["action"][middle] == entries[middle]["action"]
    assert _cache_folders(str(tmp_path)) != [old_cache]  # rebuilt, stale one removed
    assert len(_cache_folders(str(tmp_path))) == 1


def _count_conversions(monkeypatch):
    import datasets.labels as labels_module

    calls = []
    convert = labels_module._convert

    def counted(*args):
        calls.append(args[0])
        return convert(*args)

    monkeypatch.setattr(labels_module, "_convert", counted)
    return calls


def test_touched_or_copied_pickle_is_hashed_not_converted(tmp_path, monkeypatch):
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, make_entries(8))
    calls = _count_conversions(monkeypatch)
    load_labels(path)
    os.utime(path)  # new mtime and ctime, same content
    assert len(load_labels(path)["image"]) == 8
    copy = str(tmp_path / "copy" / "labels.pkl")
    os.makedirs(os.path.dirname(copy))
    shutil.copy(path, copy)  # a second path with the same content shares the cache
    assert len(load_labels(copy, cache_dir=str(tmp_path))["image"]) == 8
    assert len(calls) == 1 and len(_cache_folders(str(tmp_path))) == 1


def test_cached_open_trusts_the_metadata_once_it_is_settled(tmp_path, monkeypatch):
    """No hashing while size, mtime, ctime and inode are those recorded well after the ctime."""
    import datasets.label_cache as cache_module

    path = str(tmp_path / "labels.pkl")
    write_pickle(path, make_entries(5))
    load_labels(path)
    (folder,) = _cache_folders(str(tmp_path))
    meta_path = os.path.join(str(tmp_path), folder, "meta.json")
    with open(meta_path) as handle:
        meta = json.load(handle)
    for record in meta["sources"].values():  # as if converted minutes after the pickle was written
        record["recorded_ns"] += 600 * 10 ** 9
    with open(meta_path, "w") as handle:
        json.dump(meta, handle)
    hashed = []
    monkeypatch.setattr(cache_module, "file_digest", lambda *a: hashed.append(a) or "0")
    assert len(load_labels(path)["image"]) == 5 and not hashed


def _damage_truncate(folder):
    path = os.path.join(folder, "joints_3d.npy")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def _damage_remove(folder):
    os.remove(os.path.join(folder, "subject.npy"))


def _damage_dtype(folder):
    path = os.path.join(folder, "joints_3d.npy")
    np.save(path, np.load(path).astype(np.float64))


def _damage_shape(folder):
    path = os.path.join(folder, "joints_2d_cpn.npy")
    np.save(path, np.load(path)[:, :16])


def _damage_content(folder):
    """Same dtype, shape and size, other values (a replaced file)."""
    path = os.path.join(folder, "joints_3d.npy")
    np.save(path + ".new.npy", np.zeros_like(np.load(path)))
    os.replace(path + ".new.npy", path)


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_remove, _damage_dtype,
                                    _damage_shape, _damage_content])
def test_damaged_cache_is_rebuilt_once(tmp_path, caplog, damage):
    entries = make_entries(7)
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, entries)
    load_labels(path)
    (folder,) = _cache_folders(str(tmp_path))
    damage(os.path.join(str(tmp_path), folder))
    with caplog.at_level(logging.WARNING):
        columns = load_labels(path)
    assert "damaged" in caplog.text
    assert columns["joints_3d"].dtype == np.float32 and columns["joints_2d_cpn"].shape == (7, 17, 2)
    np.testing.assert_allclose(columns["joints_3d"], np.stack([e["joints_3d"] for e in entries]),
                               rtol=1e-6)
    assert [e["subject"] for e in entries] == columns["subject"].tolist()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_labels(path)  # rebuilt for good: no warning at the next start
    assert not caplog.text and isinstance(again["joints_3d"], np.memmap)
    assert len(_cache_folders(str(tmp_path))) == 1


def test_leftover_of_a_killed_conversion_is_removed(tmp_path):
    path = str(tmp_path / "labels.pkl")
    write_pickle(path, make_entries(4))
    leftover = tmp_path / ".labels.pkl.columns.tmp-killed"
    leftover.mkdir()
    (leftover / "joints_3d.npy").write_bytes(b"partial")
    load_labels(path)  # converting
    assert not leftover.exists()
    leftover.mkdir()
    load_labels(path)  # cached start
    assert not leftover.exists()


def test_cache_is_created_with_the_umask(tmp_path):
    """A shared data folder stays usable by its group (umask 002: group-writable)."""
    previous = os.umask(0o002)
    try:
        path = str(tmp_path / "labels.pkl")
        write_pickle(path, make_entries(3))
        load_labels(path)
    finally:
        os.umask(previous)
    (folder,) = _cache_folders(str(tmp_path))
    folder = os.path.join(str(tmp_path), folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o775
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o664, name
    lock = os.path.join(str(tmp_path), ".labels.pkl.columns.lock")
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o664


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

    convert = labels_module._convert

    def counted(*args):
        with open(counter, "a") as handle:
            handle.write("x")
        return convert(*args)

    labels_module._convert = counted
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


def _numbers_as(kind, shape):
    """A per-frame value of the right shape made of something that is not real numbers."""
    values = np.ones(shape)
    return {"strings": values.astype(str), "objects": values.astype(object),
            "booleans": values.astype(bool), "complex": values.astype(complex)}[kind]


@pytest.mark.parametrize("kind", ["strings", "objects", "booleans", "complex"])
def test_non_numbers_where_numbers_belong_are_refused(tmp_path, kind):
    """Before: numpy turned '1.0', True and objects into floats (and complex lost its imaginary
    part) without a word."""
    _expect_error(tmp_path, _with(2, "joints_2d_cpn_crop", _numbers_as(kind, (17, 2))),
                  "entry 2", "'joints_2d_cpn_crop'", "real numbers")
    entries = make_entries(6)
    entries[3]["camera"] = dict(entries[3]["camera"], fx=_numbers_as(kind, (1,)))
    _expect_error(tmp_path, entries, "entry 3", "camera.fx")


def test_booleans_and_strings_where_integers_belong_are_refused(tmp_path):
    _expect_error(tmp_path, _with(1, "subject", True), "entry 1", "'subject'", "bool")
    _expect_error(tmp_path, _with(4, "action", np.bool_(True)), "entry 4", "'action'")
    _expect_error(tmp_path, _with(2, "camera_id", "1"), "entry 2", "'camera_id'")
    _expect_error(tmp_path, _with(0, "image_id", 2.5), "entry 0", "'image_id'", "integer")
    _expect_error(tmp_path, _with(3, "image_id", 2 ** 40), "entry 3", "32-bit")


def test_wrong_units_are_refused(tmp_path):
    entries = make_entries(6)
    for entry in entries[3:]:  # the plain toolbox's millimetres, from entry 3 on
        entry["joints_3d"] = entry["joints_3d"] * 1000.0
    _expect_error(tmp_path, entries, "entry 3", "'joints_3d'", "millimetres")
    pixels = make_entries(6)
    pixels[1]["joints_2d_cpn"] = (pixels[1]["joints_2d_cpn"] + 1.0) * 500.0
    _expect_error(tmp_path, pixels, "entry 1", "'joints_2d_cpn'", "pixels")
    normalised = make_entries(6)
    normalised[5]["joints_2d_gt_crop"] = normalised[5]["joints_2d_gt_crop"] / 256.0
    _expect_error(tmp_path, normalised, "entry 5", "'joints_2d_gt_crop'", "normalised")
    world = make_entries(6)
    world[2]["joints_3d"] = world[2]["joints_3d"] - np.array([0.0, 0.0, 6.5])
    _expect_error(tmp_path, world, "entry 2", "'joints_3d'", "in front of the camera")


def test_plain_toolbox_output_is_refused(tmp_path):
    """The plain H36M-Toolbox writes joints_2d (pixels) and millimetres, and no CPN keys."""
    entries = make_entries(4)
    for entry in entries:
        entry["joints_2d"] = (entry.pop("joints_2d_gt") + 1.0) * 500.0
        del entry["joints_2d_cpn"], entry["joints_2d_gt_crop"], entry["joints_2d_cpn_crop"]
        entry["joints_3d"] = entry["joints_3d"] * 1000.0
    _expect_error(tmp_path, entries, "entry 0", "plain H36M-Toolbox", "prepare_h36m.py")


@pytest.mark.parametrize("image", ["/etc/passwd", "../../outside.jpg",
                                   "s_01/../../../etc/passwd", "s_01\\..\\..\\x.jpg",
                                   "C:\\images\\a.jpg", "bad\0name.jpg", ""])
def test_image_paths_that_leave_the_image_folder_are_refused(tmp_path, image):
    _expect_error(tmp_path, _with(3, "image", image), "entry 3", "'image'")


def test_streamed_conversion_matches_an_in_memory_one(tmp_path):
    """Batches, memo pruning and the column files give the same columns as converting the
    whole list at once (shared objects and several protocols included)."""
    import datasets.labels as labels_module

    entries = _many_entries(7000, seed=3)
    shared_camera = dict(entries[0]["camera"])
    for entry in entries[100:5000]:
        entry["camera"] = shared_camera  # one object for many entries, as some pickles do
    expected = labels_module.entries_to_columns(entries)
    for protocol in (2, 4):
        path = str(tmp_path / f"p{protocol}.pkl")
        with open(path, "wb") as handle:
            pickle.dump(entries, handle, protocol=protocol)
        old = labels_module.BATCH_ENTRIES, labels_module.PRUNE_ENTRIES
        labels_module.BATCH_ENTRIES, labels_module.PRUNE_ENTRIES = 600, 1500
        try:
            columns = load_labels(path, cache_dir=str(tmp_path / f"cache{protocol}"))
        finally:
            labels_module.BATCH_ENTRIES, labels_module.PRUNE_ENTRIES = old
        assert set(columns) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(columns[name], expected[name], err_msg=name)


@pytest.mark.parametrize("image, words", [
    ("a" * 10_000_000, "is 10,000,000 bytes long, more than the 1,024 an image path may have"),
    ("s_01/" + "b" * 300 + ".jpg", "holds a name of 304 bytes, more than the 255"),
])
def test_an_overlong_image_path_is_refused_briefly_and_nothing_is_cached(tmp_path, image, words):
    """Before: the path was cached at its full width for every frame (a 641 MB cache for 64
    frames) and only reading the image failed, with the whole path in the message."""
    path = str(tmp_path / "bad.pkl")
    with open(path, "wb") as handle:
        pickle.dump(_with(3, "image", image), handle)
    with pytest.raises(MetaPoseError) as error:
        load_labels(path)
    message = str(error.value)
    assert "entry 3, key 'image'" in message and words in message and len(message) < 1000
    assert sorted(os.listdir(tmp_path)) == [".bad.pkl.columns.lock", "bad.pkl"]


@pytest.mark.parametrize("change, words", [
    (lambda entries: entries[2].__setitem__("image", "s_01/a\udcffb.jpg"),
     ["entry 2, key 'image'", "lone UTF-16 surrogates"]),
    (lambda entries: entries[4].__setitem__("camera", dict(entries[4]["camera"], fx=10 ** 400)),
     ["entry 4, key 'camera.fx'", "an integer beyond the range of any float"]),
    (lambda entries: entries[1].__setitem__("center", [3, 10 ** 400]),
     ["entry 1, key 'center'"]),
])
def test_a_valid_pickle_with_values_no_label_holds_names_the_entry(tmp_path, change, words):
    """Before: the conversion's own exception was reported as "not a valid pickle"."""
    entries = make_entries(6)
    change(entries)
    path = str(tmp_path / "bad.pkl")
    with open(path, "wb") as handle:
        pickle.dump(entries, handle)
    with pytest.raises(MetaPoseError) as error:
        load_labels(path)
    for word in words:
        assert word in str(error.value), str(error.value)
    assert "not a valid pickle" not in str(error.value)
