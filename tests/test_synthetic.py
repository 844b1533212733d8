"""Synthetic H36M generator and camera geometry: format, determinism, geometry, image content."""

import os
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.camera import (
    apply_affine, box_from_root, crop_affine, crop_from_full_frame, pixels_to_screen, project,
    screen_to_pixels, world_to_camera,
)
from datasets.synthetic import FRAME_HEIGHT, FRAME_WIDTH, generate_synthetic
from utils.errors import MetaPoseError
from utils.skeleton import (
    ACTION_IDS, CROP_HEIGHT, CROP_WIDTH, PARENTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"image", "joints_3d", "joints_2d_gt", "joints_2d_cpn", "joints_2d_gt_crop",
        "joints_2d_cpn_crop", "subject", "action", "subaction", "camera_id", "image_id",
        "video_id", "camera", "center", "scale", "box", "joints_vis", "source", "nposes"}
ARRAY_SHAPES = {"joints_3d": (17, 3), "joints_2d_gt": (17, 2), "joints_2d_cpn": (17, 2),
                "joints_2d_gt_crop": (17, 2), "joints_2d_cpn_crop": (17, 2), "center": (2,),
                "scale": (2,), "box": (4,), "joints_vis": (17, 3)}
CAMERA_SHAPES = {"R": (3, 3), "T": (3, 1), "k": (3, 1), "p": (2, 1)}
NAME = re.compile(r"^(s_(\d\d)_act_(\d\d)_subact_(\d\d)_ca_(\d\d))/\1_(\d{6})\.jpg$")
TRAIN, VAL = 80, 20


def _read(path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic_crops"))
    summary = generate_synthetic(out, TRAIN, VAL, seed=0)
    print(f"\nsynthetic generation of {TRAIN} + {VAL} crops: {summary['seconds']:.2f} s")
    return out, summary


def _entries(out, split):
    return _read(os.path.join(out, f"h36m_{split}.pkl"))


def test_format_matches_design(crops):
    out, summary = crops
    assert summary["train_frames"] == TRAIN and summary["val_frames"] == VAL
    for split, subjects, count in (("train", TRAIN_SUBJECTS, TRAIN),
                                   ("validation", VALIDATION_SUBJECTS, VAL)):
        entries = _entries(out, split)
        assert isinstance(entries, list) and len(entries) == count
        assert {e["subject"] for e in entries} == set(subjects)
        assert len({e["image"] for e in entries}) == count
        for entry in entries:
            assert type(entry) is dict and set(entry) == KEYS
            for key, shape in ARRAY_SHAPES.items():
                assert isinstance(entry[key], np.ndarray) and entry[key].shape == shape, key
                assert entry[key].dtype == np.float64 and np.isfinite(entry[key]).all(), key
            assert set(entry["camera"]) == {"R", "T", "fx", "fy", "cx", "cy", "k", "p"}
            for key, shape in CAMERA_SHAPES.items():
                assert entry["camera"][key].shape == shape
            for key in ("fx", "fy", "cx", "cy"):
                assert type(entry["camera"][key]) is float
            for key in ("subject", "action", "subaction", "camera_id", "image_id", "video_id",
                        "nposes"):
                assert type(entry[key]) is int, key
            assert entry["action"] in ACTION_IDS and entry["subaction"] in (1, 2)
            assert entry["camera_id"] in (0, 1, 2, 3) and 1 <= entry["image_id"] <= entry["nposes"]
            assert entry["source"] == "h36m" and (entry["joints_vis"] == 1).all()
            match = NAME.match(entry["image"])
            assert match, entry["image"]
            assert [int(g) for g in match.groups()[1:]] == [
                entry["subject"], entry["action"], entry["subaction"], entry["camera_id"] + 1,
                entry["image_id"]]
            assert 1100 < entry["camera"]["fx"] < 1200 and 1100 < entry["camera"]["fy"] < 1200
            assert abs(entry["camera"]["cx"] - 512) < 15 and abs(entry["camera"]["cy"] - 515) < 20
        # frames are spread over actions and cameras even in a small set
        assert len({e["action"] for e in entries}) >= min(count, 15) * 0.6
        assert {e["camera_id"] for e in entries} == {0, 1, 2, 3}
    image = cv2.imread(os.path.join(out, "images", entries[0]["image"]))
    assert image.shape == (CROP_HEIGHT, CROP_WIDTH, 3)


def test_geometry_is_consistent(crops):
    out, _ = crops
    entries = _entries(out, "train") + _entries(out, "validation")
    bones = {}
    for entry in entries:
        camera = entry["camera"]
        joints_mm = entry["joints_3d"] * 1000.0
        root_distance = np.linalg.norm(joints_mm[0]) / 1000.0
        assert 4.0 <= root_distance <= 6.0
        intrinsics = (camera["fx"], camera["fy"], camera["cx"], camera["cy"])
        gt_px = project(joints_mm, *intrinsics, k=camera["k"], p=camera["p"])
        np.testing.assert_allclose(entry["joints_2d_gt"],
                                   pixels_to_screen(gt_px, FRAME_WIDTH, FRAME_HEIGHT), atol=1e-9)
        u, v = entry["joints_2d_gt"][:, 0], entry["joints_2d_gt"][:, 1]
        np.testing.assert_allclose(u, gt_px[:, 0] / FRAME_WIDTH * 2 - 1, atol=1e-12)
        np.testing.assert_allclose(v, gt_px[:, 1] / FRAME_WIDTH * 2 - FRAME_HEIGHT / FRAME_WIDTH,
                                   atol=1e-12)
        center, scale, box = box_from_root(joints_mm[0], *intrinsics)
        np.testing.assert_allclose(entry["center"], center)
        np.testing.assert_allclose(entry["scale"], scale)
        np.testing.assert_allclose(entry["box"], box)
        matrix = crop_affine(entry["center"], entry["scale"])
        for kind in ("gt", "cpn"):
            pixels = screen_to_pixels(entry[f"joints_2d_{kind}"], FRAME_WIDTH, FRAME_HEIGHT)
            crop = pixels @ matrix[:, :2].T + matrix[:, 2]
            np.testing.assert_allclose(entry[f"joints_2d_{kind}_crop"], crop, atol=1e-9)
        error_px = np.linalg.norm(screen_to_pixels(entry["joints_2d_cpn"], FRAME_WIDTH,
                                                   FRAME_HEIGHT) - gt_px, axis=-1)
        assert error_px.mean() < 10.0 and error_px.max() < 60.0
        crop_gt = entry["joints_2d_gt_crop"]
        assert (crop_gt >= 0).all() and (crop_gt[:, 0] < CROP_WIDTH).all() \
            and (crop_gt[:, 1] < CROP_HEIGHT).all()
        # the camera dict is consistent: the root lies in front of it, R is a rotation
        R = camera["R"]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) > 0
        lengths = np.linalg.norm(joints_mm[1:] - joints_mm[list(PARENTS[1:])], axis=-1)
        bones.setdefault(entry["subject"], []).append(lengths)
    for subject, lengths in bones.items():
        lengths = np.stack(lengths)
        assert np.ptp(lengths, axis=0).max() < 1e-6  # rigid bones within a subject
        assert 380 < lengths[0, 1] < 500 and 200 < lengths[0, 11] < 320  # thigh, upper arm


def test_image_shows_depth(crops):
    """Nearer joints are drawn brighter: brightness at the joints falls with depth."""
    out, _ = crops
    brightness, depth = [], []
    for entry in _entries(out, "train")[:40]:
        image = cv2.imread(os.path.join(out, "images", entry["image"])).astype(np.float64)
        points = np.rint(entry["joints_2d_gt_crop"]).astype(int)
        relative = entry["joints_3d"][:, 2] - entry["joints_3d"][0, 2]
        for joint in range(1, 17):
            x, y = points[joint]
            brightness.append(image[y, x].max())
            depth.append(relative[joint])
    ranks = lambda values: np.argsort(np.argsort(values))  # noqa: E731
    correlation = np.corrcoef(ranks(brightness), ranks(depth))[0, 1]
    assert correlation < -0.5, correlation


def test_deterministic_and_seed_dependent(crops, tmp_path):
    out, _ = crops
    again = str(tmp_path / "again")
    generate_synthetic(again, TRAIN, VAL, seed=0, verbose=False)
    for name in ("h36m_train.pkl", "h36m_validation.pkl"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read()
    for entry in _entries(out, "train")[::7]:
        with open(os.path.join(out, "images", entry["image"]), "rb") as a, \
                open(os.path.join(again, "images", entry["image"]), "rb") as b:
            assert a.read() == b.read()
    other = str(tmp_path / "other")
    generate_synthetic(other, 5, 2, seed=1, verbose=False)
    first = _entries(other, "train")[0]
    assert not any(np.allclose(first["joints_3d"], e["joints_3d"])
                   for e in _entries(out, "train"))


def test_full_frames_crop_to_the_cropped_images(tmp_path):
    cropped, full = str(tmp_path / "cropped"), str(tmp_path / "full")
    generate_synthetic(cropped, 8, 4, seed=3, verbose=False)
    generate_synthetic(full, 8, 4, seed=3, full_frames=True, verbose=False)
    differences = []
    for split in ("train", "validation"):
        labels = _entries(cropped, split)
        with open(os.path.join(cropped, f"h36m_{split}.pkl"), "rb") as a, \
                open(os.path.join(full, f"h36m_{split}.pkl"), "rb") as b:
            assert a.read() == b.read()  # same labels in both modes
        for entry in labels:
            frame = cv2.imread(os.path.join(full, "images", entry["image"]))
            assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
            crop = crop_from_full_frame(frame, entry["center"], entry["scale"])
            stored = cv2.imread(os.path.join(cropped, "images", entry["image"]))
            differences.append(np.abs(crop.astype(float) - stored.astype(float)).mean())
    print(f"\nfull-frame crop vs crop mode: mean abs pixel difference {np.mean(differences):.2f} "
          f"(max over images {np.max(differences):.2f}, 0..255 scale)")
    assert np.mean(differences) < 4.0 and np.max(differences) < 8.0


def test_loader_reads_the_output(crops):
    labels_module = pytest.importorskip("datasets.labels")
    pose_frames = pytest.importorskip("datasets.pose_frames")
    out, _ = crops
    labels = labels_module.load_labels(os.path.join(out, "h36m_validation.pkl"),
                                       cache_dir=os.path.join(out, "cache"))
    entries = _entries(out, "validation")
    np.testing.assert_allclose(labels["joints_3d"], np.stack([e["joints_3d"] for e in entries]),
                               atol=1e-6)
    dataset = pose_frames.PoseFrameDataset(labels, os.path.join(out, "images"),
                                           image_size=(256, 192))
    assert dataset.image_mode == "cropped" and len(dataset) == VAL
    sample = dataset[3]
    assert tuple(sample["image"].shape) == (3, 256, 192)
    assert float(sample["joints_3d"][0].abs().max()) == 0.0


def test_camera_helpers():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-800, 800, (5, 2)), rng.uniform(3000, 6000, (5, 1))], 1)
    pinhole = project(points, 1145.0, 1144.0, 512.0, 515.0)
    np.testing.assert_allclose(pinhole[:, 0], points[:, 0] / points[:, 2] * 1145.0 + 512.0)
    np.testing.assert_allclose(project(points, 1145.0, 1144.0, 512.0, 515.0, k=np.zeros(3),
                                       p=np.zeros(2)), pinhole)
    k, p = np.array([-0.2, 0.25, -0.003]), np.array([-0.001, -0.003])
    a, b = points[:, 0] / points[:, 2], points[:, 1] / points[:, 2]
    r2 = a * a + b * b
    radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
    tangential = p[0] * b + p[1] * a
    expected_x = (a * (radial + tangential) + p[1] * r2) * 1145.0 + 512.0
    expected_y = (b * (radial + tangential) + p[0] * r2) * 1144.0 + 515.0
    np.testing.assert_allclose(project(points, 1145.0, 1144.0, 512.0, 515.0, k, p),
                               np.stack([expected_x, expected_y], 1))
    pixels = rng.uniform(0, 1000, (7, 2))
    np.testing.assert_allclose(screen_to_pixels(pixels_to_screen(pixels, 1000, 1002), 1000, 1002),
                               pixels)
    centers, scales, boxes = box_from_root(points, 1145.0, 1144.0, 512.0, 515.0)
    center, scale, box = box_from_root(points[2], 1145.0, 1144.0, 512.0, 515.0)
    np.testing.assert_allclose(centers[2], center)
    np.testing.assert_allclose(scales[2], scale)
    np.testing.assert_allclose(boxes[2], box)
    np.testing.assert_allclose(scale, [2000 / points[2, 2] * 1145 / 200,
                                       2000 / points[2, 2] * 1144 / 200])
    # the toolbox crop: box centre -> crop centre, the box's first and last pixel centres
    # (box width - 1 apart) -> crop pixels 0 and 191
    matrix = crop_affine(center, scale)
    np.testing.assert_allclose(matrix[:, :2] @ center + matrix[:, 2], [95.5, 127.5])
    np.testing.assert_allclose(matrix[0, 0] * (box[2] - box[0] - 1), 191.0)
    first_and_last = np.array([[box[0] + 0.5, center[1]], [box[2] - 0.5, center[1]]])
    np.testing.assert_allclose(apply_affine(first_and_last, matrix)[:, 0], [0.0, 191.0])
    R = cv2.Rodrigues(np.array([0.1, -0.4, 0.2]))[0]
    T = np.array([[100.0], [-2000.0], [1500.0]])
    world = rng.normal(0, 1000, (4, 3))
    np.testing.assert_allclose(world_to_camera(world, R, T), (R @ (world.T - T)).T)


def test_bad_arguments(tmp_path):
    with pytest.raises(MetaPoseError, match="train_frames"):
        generate_synthetic(str(tmp_path), 0, 5, seed=0)
    with pytest.raises(MetaPoseError, match="seed"):
        generate_synthetic(str(tmp_path), 5, 5, seed=-1)


def test_command_line(tmp_path, capsys):
    tool = os.path.join(ROOT, "tools", "make_synthetic.py")
    result = subprocess.run([sys.executable, tool, "--out", str(tmp_path / "cli"),
                             "--train-frames", "3", "--val-frames", "2", "--seed", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3 train + 2 validation" in result.stdout
    assert len(_read(str(tmp_path / "cli" / "h36m_validation.pkl"))) == 2
    from tools import make_synthetic
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic.parse_args(["--out", str(tmp_path / "bad"), "--train-frames", "-4"])
    assert exit_info.value.code == 2
    assert "--train-frames" in capsys.readouterr().err


def test_units_are_checked_on_the_synthetic_set(crops, tmp_path):
    """The synthetic set in metres loads; the same labels in millimetres, or with 2D joints in
    pixels, are refused with the key and the likely cause."""
    from datasets.labels import load_labels
    from datasets.synthetic import write_pickle

    out, _ = crops
    entries = _entries(out, "train")
    assert len(load_labels(os.path.join(out, "h36m_train.pkl"),
                           cache_dir=str(tmp_path / "cache"))["image"]) == TRAIN
    millimetres = [dict(entry, joints_3d=entry["joints_3d"] * 1000.0) for entry in entries]
    write_pickle(millimetres, str(tmp_path / "mm.pkl"))
    with pytest.raises(MetaPoseError, match=r"entry 0, key 'joints_3d' .*millimetres"):
        load_labels(str(tmp_path / "mm.pkl"))
    pixels = [dict(entry, joints_2d_gt=screen_to_pixels(entry["joints_2d_gt"], FRAME_WIDTH,
                                                         FRAME_HEIGHT)) for entry in entries]
    write_pickle(pixels, str(tmp_path / "px.pkl"))
    with pytest.raises(MetaPoseError, match=r"entry 0, key 'joints_2d_gt' .*pixels"):
        load_labels(str(tmp_path / "px.pkl"))


def test_full_frame_on_the_fly_crop_equals_the_precrop_and_the_joints(tmp_path):
    """A synthetic full frame cut by the loader on the fly, by tools/precrop_h36m.py and drawn
    directly as a crop agree, and the crop joints sit on blobs drawn at the full-frame joints."""
    from datasets.pose_frames import PoseFrameDataset
    from datasets.labels import load_labels
    from tools import precrop_h36m

    full = str(tmp_path / "full")
    generate_synthetic(full, 6, 3, seed=5, full_frames=True, verbose=False)
    precrop_h36m.main(["--labels", full, "--frames", os.path.join(full, "images"), "--out",
                       str(tmp_path / "crops"), "--workers", "2", "--no-progress"])
    labels = load_labels(os.path.join(full, "h36m_train.pkl"))
    on_the_fly = PoseFrameDataset(labels, os.path.join(full, "images"))
    precropped = PoseFrameDataset(labels, str(tmp_path / "crops"))
    differences = [(on_the_fly[i]["image"].float() - precropped[i]["image"].float()).abs().mean()
                   for i in range(len(on_the_fly))]
    print(f"\non-the-fly vs pre-cropped: mean abs difference {np.mean(differences):.3f}")
    assert np.mean(differences) < 1.0

    # blobs at four well separated joints of each entry, in a black full frame
    blobs_dir = tmp_path / "blobs"
    joints = (3, 6, 10, 16)  # ankles, head, right wrist
    for index in range(len(labels["image"])):
        pixels = screen_to_pixels(labels["joints_2d_gt"][index].astype(np.float64), FRAME_WIDTH,
                                  FRAME_HEIGHT)
        ys, xs = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH]
        frame = np.zeros((FRAME_HEIGHT, FRAME_WIDTH))
        for joint in joints:
            x, y = pixels[joint]
            frame += 250 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 6.0 ** 2))
        path = blobs_dir / labels["image"][index].decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.repeat(np.clip(frame, 0, 255)[..., None], 3, 2).astype(np.uint8))
    crops = PoseFrameDataset(labels, str(blobs_dir))
    checked = 0
    for index in range(len(crops)):
        image = crops[index]["image"][0].double().numpy()
        crop_joints = labels["joints_2d_gt_crop"][index][list(joints)]
        for number, joint in enumerate(joints):
            x0, y0 = crop_joints[number]
            others = np.delete(crop_joints, number, axis=0)
            if not (8 <= x0 < CROP_WIDTH - 8 and 8 <= y0 < CROP_HEIGHT - 8) or \
                    np.linalg.norm(others - crop_joints[number], axis=1).min() < 16:
                continue  # near the crop's edge or another blob
            ys, xs = np.mgrid[int(y0) - 7:int(y0) + 8, int(x0) - 7:int(x0) + 8]
            window = image[ys, xs]
            centroid = np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()
            np.testing.assert_allclose(centroid, [x0, y0], atol=0.08)
            checked += 1
    assert checked >= 10
