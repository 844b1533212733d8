"""PoseFrameDataset (the base of every dataset) on H36M labels: sample fields, crop geometry, flip
conventions, bad images, build_dataset."""

import logging
import os
import pickle
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from datasets import build_dataset
from datasets.flip_draws import flip_decision
from datasets.pose_frames import PoseFrameDataset, blank_image
from datasets.images import crop_from_full_frame, full_frame_to_crop, read_image
from datasets.labels import load_labels
from tests import tiny_h36m
from utils.config import load_config
from utils.errors import MetaPoseError
from utils.flip import (flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop)
from utils.skeleton import FLIP_PERMUTATION


def _config(root, *overrides):
    return load_config(None, [f"data.root={root}", *overrides])


def _dataset(root, split="h36m_train.pkl", **kwargs):
    labels = load_labels(os.path.join(root, split))
    return PoseFrameDataset(labels, os.path.join(root, "images"), **kwargs)


def test_sample_fields_follow_the_contract(tiny_h36m_dir):
    dataset = build_dataset(_config(tiny_h36m_dir, "data.image_size=[64,48]"), "validation")
    assert len(dataset) == 5 and dataset.image_mode == "full" and not dataset.train
    entries = pickle.loads((tiny_h36m_dir / "h36m_validation.pkl").read_bytes())
    for index in range(len(dataset)):
        sample = dataset[index]
        expected = {"image": (torch.uint8, (3, 64, 48)), "keypoints_2d": (torch.float32, (17, 2)),
                    "keypoints_2d_crop": (torch.float32, (17, 2)),
                    "joints_3d": (torch.float32, (17, 3)), "action": (torch.int64, ()),
                    "subject": (torch.int64, ()), "index": (torch.int64, ()),
                    "flip": (torch.bool, ())}
        assert {k: (v.dtype, tuple(v.shape)) for k, v in sample.items()} == expected
        entry = entries[index]
        root_relative = entry["joints_3d"] - entry["joints_3d"][:1]
        np.testing.assert_allclose(sample["joints_3d"].numpy(), root_relative, atol=1e-6)
        assert torch.all(sample["joints_3d"][0] == 0)
        np.testing.assert_allclose(sample["keypoints_2d"].numpy(), entry["joints_2d_cpn"],
                                   atol=1e-6)
        np.testing.assert_allclose(sample["keypoints_2d_crop"].numpy(), entry["joints_2d_cpn_crop"],
                                   atol=1e-4)
        assert sample["action"] == entry["action"] and sample["subject"] == entry["subject"]
        assert sample["index"] == index and not sample["flip"]
    gt = build_dataset(_config(tiny_h36m_dir, "data.keypoints_2d=gt"), "validation")[2]
    np.testing.assert_allclose(gt["keypoints_2d"].numpy(), entries[2]["joints_2d_gt"], atol=1e-6)
    np.testing.assert_allclose(gt["keypoints_2d_crop"].numpy(), entries[2]["joints_2d_gt_crop"],
                               atol=1e-4)
    assert gt["image"].shape == (3, 256, 192)

    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, 3, 64, 48) and batch["flip"].dtype == torch.bool


def test_crop_on_the_fly_equals_the_stored_crop(tmp_path):
    """Full frame cropped by the loader vs the crop rendered directly from the same scene."""
    entries = tiny_h36m.make_entries(3, seed=4)
    full_root, crop_root = tmp_path / "full", tmp_path / "crops"
    full_frame = tiny_h36m.render_full()
    for root, cropped in ((full_root, False), (crop_root, True)):
        tiny_h36m.write_pickle(str(root / "h36m_train.pkl"), entries)
        for entry in entries:
            image = (tiny_h36m.render_crop(entry["center"], entry["scale"]) if cropped
                     else full_frame)
            tiny_h36m.write_jpeg(str(root / "images" / entry["image"]), image)
    on_the_fly = _dataset(str(full_root))  # image_mode auto: decided per image
    stored = _dataset(str(crop_root))
    assert (on_the_fly.image_mode, stored.image_mode) == ("full", "cropped")  # as reported
    for index in range(3):
        a = on_the_fly[index]["image"].float()
        b = stored[index]["image"].float()
        difference = (a - b).abs().mean().item()
        assert difference < 1.0, difference
        # The comparison is sensitive: a crop half a pixel off differs clearly.
        entry = entries[index]
        shifted = torch.from_numpy(tiny_h36m.render_crop(entry["center"], entry["scale"], 0.5))
        assert (a - shifted.permute(2, 0, 1).float()).abs().mean().item() > 2.0

    # Smaller image_size: both paths shrink the same 256x192 crop.
    small_a = _dataset(str(full_root), image_size=(128, 96))[1]["image"].float()
    small_b = _dataset(str(crop_root), image_size=(128, 96))[1]["image"].float()
    assert small_a.shape == (3, 128, 96) and (small_a - small_b).abs().mean().item() < 1.0


def _blob_centroid(image_chw, around, radius=8):
    """Intensity centroid (x, y) of channel 0 in a window around `around` (crop pixels)."""
    channel = image_chw[0].double().numpy()
    x0, y0 = int(round(around[0])), int(round(around[1]))
    window = channel[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


def test_flip_conventions(tmp_path):
    entries = tiny_h36m.make_entries(2, seed=7)
    joint = 13  # left wrist; its flipped twin is the right wrist
    for entry in entries:  # a Gaussian blob on one joint in a black full frame
        ys, xs = np.mgrid[0:tiny_h36m.FRAME_H, 0:tiny_h36m.FRAME_W]
        x, y = tiny_h36m.project(entry["joints_3d"][joint])
        blob = 250 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.5 ** 2))
        image = np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)
        tiny_h36m.write_jpeg(str(tmp_path / "images" / entry["image"]), image)
    tiny_h36m.write_pickle(str(tmp_path / "h36m_train.pkl"), entries)
    dataset = _dataset(str(tmp_path), keypoints_2d="gt", train=True, flip_prob=1.0)
    labels = dataset.labels
    for index in range(2):
        sample = dataset[index]
        assert bool(sample["flip"])
        keypoints, crop = sample["keypoints_2d"].double(), sample["keypoints_2d_crop"].double()
        joints, image = sample["joints_3d"].double(), sample["image"]

        # Flipping twice is the identity.
        assert torch.equal(flip_keypoints_2d(flip_keypoints_2d(keypoints)), keypoints)
        assert torch.equal(flip_keypoints_crop(flip_keypoints_crop(crop)), crop)
        assert torch.equal(flip_joints_3d(flip_joints_3d(joints)), joints)
        assert torch.equal(flip_images(flip_images(image)), image)

        # Mirrored 3D (X -> -X, sides swapped) projects onto the mirrored 2D (u -> -u, sides
        # swapped) through the mirrored camera: principal point cx -> w - cx.
        root = torch.from_numpy(np.array(labels["joints_3d"][index][0], dtype=np.float64))
        mirrored_root = root * torch.tensor([-1.0, 1.0, 1.0])
        mirrored_3d = (flip_joints_3d(joints) + mirrored_root).numpy()
        mirrored_cx = tiny_h36m.FRAME_W - tiny_h36m.CX
        projected = tiny_h36m.to_screen(tiny_h36m.project(mirrored_3d, cx=mirrored_cx))
        np.testing.assert_allclose(projected, flip_keypoints_2d(keypoints).numpy(), atol=1e-5)
        # ... and the check has teeth: the unmirrored principal point or no swap both fail.
        wrong_camera = tiny_h36m.to_screen(tiny_h36m.project(mirrored_3d))
        assert np.abs(wrong_camera - projected).max() > 1e-3
        unswapped = flip_keypoints_2d(keypoints).numpy()[list(FLIP_PERMUTATION)]
        assert np.abs(unswapped - projected).max() > 1e-2
        np.testing.assert_allclose(tiny_h36m.to_screen(tiny_h36m.project(
            (joints + root).numpy())), keypoints.numpy(), atol=1e-5)

        # Crop pixels: the blob sits on the joint's crop coordinate, and after mirroring the
        # image it sits on the flipped coordinate x -> 191 - x of the swapped twin joint.
        centroid = _blob_centroid(image, crop[joint].numpy())
        np.testing.assert_allclose(centroid, crop[joint].numpy(), atol=0.05)
        flipped_crop = flip_keypoints_crop(crop)
        twin = FLIP_PERMUTATION[joint]
        flipped_centroid = _blob_centroid(flip_images(image), flipped_crop[twin].numpy())
        np.testing.assert_allclose(flipped_centroid, flipped_crop[twin].numpy(), atol=0.05)
        assert abs(flipped_crop[twin, 0].item() - (191 - crop[joint, 0].item())) < 1e-9


def test_crop_functions_agree_with_an_independent_formula():
    center, scale = np.array([401.3, 512.8]), np.array([1.7, 1.7])
    points = np.array([[401.3, 512.8], [300.0, 450.5], [0.0, 0.0]])
    np.testing.assert_allclose(full_frame_to_crop(points, center, scale),
                               tiny_h36m.to_crop(points, center, scale), atol=1e-9)
    np.testing.assert_allclose(full_frame_to_crop(center, center, scale), [95.5, 127.5])
    frame = np.zeros((1002, 1000, 3), dtype=np.uint8)
    assert crop_from_full_frame(frame, center, scale).shape == (256, 192, 3)


def test_flip_draws_are_deterministic_per_seed_epoch_index(tiny_h36m_dir):
    def flips(dataset, epoch):
        dataset.set_epoch(epoch)
        return [bool(dataset[i]["flip"]) for i in range(len(dataset))]

    a = _dataset(str(tiny_h36m_dir), train=True, flip_prob=0.5, seed=3, blank_images=True)
    b = _dataset(str(tiny_h36m_dir), train=True, flip_prob=0.5, seed=3, blank_images=True)
    assert flips(a, 4) == flips(b, 4) and flips(a, 0) == flips(b, 0)
    draws = np.array([[flip_decision(3, epoch, index, 0.5) for index in range(400)]
                      for epoch in range(3)])
    assert 0.4 < draws.mean() < 0.6
    assert (draws[0] != draws[1]).any() and (draws[1] != draws[2]).any()
    assert not any(flip_decision(3, 0, i, 0.5) != flip_decision(3, 0, i, 0.5) for i in range(50))
    assert [flip_decision(4, 0, i, 0.5) for i in range(64)] != list(draws[0, :64])
    assert not any(flips(_dataset(str(tiny_h36m_dir), train=True, flip_prob=0.0), 1))
    assert all(flips(_dataset(str(tiny_h36m_dir), train=True, flip_prob=1.0), 1))
    assert not any(flips(_dataset(str(tiny_h36m_dir), train=False, flip_prob=1.0), 1))


def test_blank_images_read_nothing(tiny_h36m_dir):
    os.rename(tiny_h36m_dir / "images", tiny_h36m_dir / "moved")
    dataset = build_dataset(_config(tiny_h36m_dir, "data.blank_images=true",
                                    "data.image_size=[32,24]"), "train")
    sample = dataset[3]
    assert sample["image"].shape == (3, 32, 24)
    # the normalisation's mean colour: a blank image is ~0 where the network sees it, not the
    # black image (-2.1 after normalisation) that drives a frozen trunk's features far out of
    # the range it was trained on
    from utils.geometry import normalize_images

    normalised = normalize_images(sample["image"][None])
    assert float(normalised.abs().max()) < 0.01, normalised.abs().max()
    assert sample["image"].flatten(1).unique(dim=1).shape[1] == 1  # one colour


def test_bad_images(tiny_h36m_dir, caplog):
    labels = load_labels(str(tiny_h36m_dir / "h36m_train.pkl"))
    images = tiny_h36m_dir / "images"
    missing = images / labels["image"][2].decode()
    corrupt = images / labels["image"][4].decode()
    os.remove(missing)
    corrupt.write_bytes(b"\xff\xd8 definitely not a complete JPEG")

    strict = PoseFrameDataset(labels, str(images), skip_bad_images=False)
    assert len(strict) == 6
    with pytest.raises(MetaPoseError, match=str(missing)):
        strict[2]
    with pytest.raises(MetaPoseError, match=str(corrupt)):
        strict[4]

    with caplog.at_level(logging.WARNING):
        lenient = PoseFrameDataset(labels, str(images), skip_bad_images=True, train=True)
        assert len(lenient) == 5 and lenient.num_skipped == 1
        assert "skipping 1 of 6 frames" in caplog.text
        # Position 3 is label row 4 (row 2 dropped): corrupt, so the next good frame comes back.
        sample = lenient[3]
    assert int(sample["index"]) == 4 and lenient.num_skipped_while_loading == 1
    np.testing.assert_allclose(sample["joints_3d"].numpy(),
                               labels["joints_3d"][5] - labels["joints_3d"][5][:1], atol=1e-6)
    assert str(corrupt) in caplog.text


def test_bad_images_in_evaluation_count_every_frame_once(tiny_h36m_dir, caplog):
    """Before: a corrupt validation JPEG was replaced by the next frame, which the evaluation
    then counted twice (and the bad frame not at all)."""
    labels = load_labels(str(tiny_h36m_dir / "h36m_validation.pkl"))
    images = tiny_h36m_dir / "images"
    (images / labels["image"][1].decode()).write_bytes(b"\xff\xd8 a cut JPEG")
    os.remove(images / labels["image"][3].decode())
    with caplog.at_level(logging.WARNING):
        dataset = PoseFrameDataset(labels, str(images), skip_bad_images=True, train=False,
                              image_size=(64, 48))
        batches = list(torch.utils.data.DataLoader(dataset, batch_size=2))
    indices = torch.cat([batch["index"] for batch in batches]).tolist()
    assert indices == list(range(len(labels["image"])))  # every frame exactly once
    joints = torch.cat([batch["joints_3d"] for batch in batches]).numpy()
    expected = np.asarray(labels["joints_3d"]) - np.asarray(labels["joints_3d"])[:, :1]
    np.testing.assert_allclose(joints, expected, atol=1e-6)  # with its own labels
    images_out = torch.cat([batch["image"] for batch in batches])
    blank = torch.from_numpy(blank_image(images_out[1].shape[1:])).permute(2, 0, 1)
    assert torch.equal(images_out[1], blank) and torch.equal(images_out[3], blank)
    assert int(images_out[0].abs().sum()) > 0
    assert dataset.num_skipped == 1 and "counts once" in caplog.text
    assert "blank images of the mean colour" in caplog.text  # what they are given, in words


def test_image_errors_and_mode_mismatch(tmp_path, tiny_h36m_dir):
    with pytest.raises(MetaPoseError, match="nothing.jpg"):
        read_image(str(tmp_path / "nothing.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    with pytest.raises(MetaPoseError, match="broken.jpg.*decoded"):
        read_image(str(broken))
    for skip in (False, True):  # a wrong mode concerns every frame: never silently skipped
        forced = _dataset(str(tiny_h36m_dir), image_mode="cropped", skip_bad_images=skip)
        with pytest.raises(MetaPoseError, match="image_mode=full"):
            forced[0]


def test_build_dataset_missing_empty_and_synthetic(tmp_path, monkeypatch):
    with pytest.raises(MetaPoseError) as error:
        build_dataset(_config(tmp_path), "train")
    message = str(error.value)
    assert "h36m_train.pkl" in message and "prepare_h36m.py" in message
    assert "make_synthetic.py" in message

    calls = []

    def fake_generate(out_dir, train_frames, val_frames, seed, full_frames=False, verbose=True,
                      train_file="h36m_train.pkl", val_file="h36m_validation.pkl"):
        calls.append((out_dir, train_frames, val_frames, seed, full_frames, train_file, val_file))
        tiny_h36m.write_dataset(out_dir, train_frames, val_frames, full_frames=full_frames)
        return {"train_file": os.path.join(out_dir, train_file),  # what the generator returns
                "val_file": os.path.join(out_dir, val_file)}

    fake = types.ModuleType("datasets.synthetic")
    fake.generate_synthetic = fake_generate
    monkeypatch.setitem(sys.modules, "datasets.synthetic", fake)
    config = _config(tmp_path / "gen", "data.synthetic.enabled=true",
                     "data.synthetic.train_frames=4", "data.synthetic.val_frames=3",
                     "data.synthetic.seed=5", "data.image_size=[32,24]")
    with pytest.raises(MetaPoseError):  # other ranks never generate
        build_dataset(config, "validation", rank=1)
    assert not calls
    dataset = build_dataset(config, "validation", rank=0)
    assert len(dataset) == 3 and calls == [(str(tmp_path / "gen"), 4, 3, 5, False,
                                             "h36m_train.pkl", "h36m_validation.pkl")]
    assert len(build_dataset(config, "train", rank=1)) == 4 and len(calls) == 1

    tiny_h36m.write_pickle(str(tmp_path / "empty" / "h36m_validation.pkl"), [])
    with pytest.raises(MetaPoseError, match="empty"):
        build_dataset(_config(tmp_path / "empty"), "validation")


def test_pickled_dataset_reopens_memory_maps(tiny_h36m_dir):
    dataset = _dataset(str(tiny_h36m_dir), image_size=(32, 24))
    data = pickle.dumps(dataset)
    assert len(data) < 10_000  # file names, not the columns
    clone = pickle.loads(data)
    assert isinstance(clone.labels["joints_3d"], np.memmap)
    for key in ("image", "joints_3d", "keypoints_2d_crop"):
        assert torch.equal(clone[1][key], dataset[1][key])


def test_jpeg_reads_as_rgb(tmp_path):
    rgb = np.zeros((8, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    path = str(tmp_path / "red.png")
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert read_image(path)[0, 0].tolist() == [200, 0, 0]


def test_auto_image_mode_decides_for_every_image(tmp_path):
    """Before: the first image decided the mode of the whole split, so one crop among full
    frames (or the reverse) was cut wrongly or stopped the run."""
    entries = tiny_h36m.make_entries(4, seed=5)
    tiny_h36m.write_pickle(str(tmp_path / "h36m_train.pkl"), entries)
    for index, entry in enumerate(entries):  # crops at rows 0 and 3, full frames at 1 and 2
        crop = index in (0, 3)
        image = tiny_h36m.render_crop(entry["center"], entry["scale"]) if crop \
            else tiny_h36m.render_full()
        tiny_h36m.write_jpeg(str(tmp_path / "images" / entry["image"]), image)
    dataset = _dataset(str(tmp_path))
    for index, entry in enumerate(entries):
        expected = torch.from_numpy(tiny_h36m.render_crop(entry["center"], entry["scale"]))
        difference = (dataset[index]["image"].float() - expected.permute(2, 0, 1).float())
        assert difference.abs().mean().item() < 1.0, index
    with pytest.raises(MetaPoseError, match="size of a stored crop"):
        _dataset(str(tmp_path), image_mode="full", skip_bad_images=True)[0]


def test_image_paths_are_confined_to_the_image_folder(tiny_h36m_dir):
    """Paths in (possibly replaced) label columns never reach files outside the image folder."""
    labels = dict(load_labels(str(tiny_h36m_dir / "h36m_train.pkl")))
    labels["image"] = np.array([b"../h36m_train.pkl", b"/etc/passwd"] + list(labels["image"][2:]))
    dataset = PoseFrameDataset(labels, str(tiny_h36m_dir / "images"), image_mode="full", train=True)
    for row in (0, 1):
        with pytest.raises(MetaPoseError, match="relative to the image folder"):
            dataset[row]
    for skip in (False, True):  # not an unreadable image: never skipped silently
        with pytest.raises(MetaPoseError, match="row 0 .* relative to the image folder"):
            PoseFrameDataset(labels, str(tiny_h36m_dir / "images"), skip_bad_images=skip,
                             train=True)


def _read_in_thread(path):
    import threading

    outcome = {}

    def target():
        try:
            read_image(path)
        except MetaPoseError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    return thread, outcome


def test_fifo_and_device_are_refused_without_hanging(tmp_path):
    """Before: reading a FIFO blocked the worker forever, and /dev/zero was read until memory
    ran out."""
    fifo = str(tmp_path / "fifo.jpg")
    os.mkfifo(fifo)
    thread, outcome = _read_in_thread(fifo)
    if thread.is_alive():  # unblock the reader so that the test process can exit
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("reading a FIFO blocked")
    assert "is a FIFO (named pipe), not a regular file" in outcome["error"]
    device = str(tmp_path / "zero.jpg")
    os.symlink("/dev/zero", device)
    thread, outcome = _read_in_thread(device)
    assert not thread.is_alive() and "a device, not a regular file" in outcome["error"]


def test_published_layout_is_the_default(tmp_path):
    """Pickles in <root>/data, images in <root>/images (the published README's tree)."""
    entries = tiny_h36m.make_entries(3, seed=2, subjects=(9, 11))
    tiny_h36m.write_pickle(str(tmp_path / "data" / "h36m_validation.pkl"), entries)
    for entry in entries:
        tiny_h36m.write_jpeg(str(tmp_path / "images" / entry["image"]), tiny_h36m.render_full())
    dataset = build_dataset(_config(tmp_path / "data"), "validation")
    assert os.path.abspath(dataset.image_dir) == str(tmp_path / "images")
    assert dataset[0]["image"].float().mean() > 10
    # an images folder inside data.root (synthetic sets) wins; data.image_dir overrides both
    os.makedirs(tmp_path / "data" / "images")
    blank = "data.blank_images=true"  # (the folder is empty)
    assert build_dataset(_config(tmp_path / "data", blank), "validation").image_dir == \
        os.path.join(str(tmp_path / "data"), "images")
    other = build_dataset(_config(tmp_path / "data", blank,
                                  f"data.image_dir={tmp_path / 'images'}"), "validation")
    assert other.image_dir == str(tmp_path / "images")


def test_missing_image_folder_names_where_it_looked(tmp_path):
    tiny_h36m.write_pickle(str(tmp_path / "data" / "h36m_validation.pkl"),
                           tiny_h36m.make_entries(2, subjects=(9,)))
    with pytest.raises(MetaPoseError) as error:
        build_dataset(_config(tmp_path / "data"), "validation")
    message = str(error.value)
    assert f"'{tmp_path / 'images'}' does not exist" in message
    assert str(tmp_path / "data" / "images") in message and "data.image_dir" in message
    with pytest.raises(MetaPoseError, match=str(tmp_path / "data" / "elsewhere")):
        build_dataset(_config(tmp_path / "data", "data.image_dir=elsewhere"), "validation")
