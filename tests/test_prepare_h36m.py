"""tools/prepare_h36m.py on a tiny fake raw H36M tree written here (CDF poses, cameras, CPN)."""

import json
import os
import pickle
import subprocess
import sys

import cv2
import numpy as np
import pytest
from cdflib.cdfwrite import CDF

from datasets.camera import (
    H36M_FRAME_SIZES, crop_from_full_frame, full_frame_to_crop, pixels_to_screen, project,
    world_to_camera,
)
from datasets.synthetic import _Sequence, make_background, make_camera
from tools import prepare_h36m
from utils.errors import MetaPoseError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 7  # frames per recording
CAMERAS_USED = (0, 2)  # camera ids with pose files in the fake tree
# subject -> [(file name, expected action, expected subaction)]
RECORDINGS = {
    1: [("Directions 1", 2, 1), ("Directions", 2, 2), ("TakingPhoto 1", 12, 1),
        ("Eating 2", 4, 1)],
    9: [("SittingDown", 10, 1), ("Discussion 2", 3, 2)],
}
SUBSAMPLE = 2
KEPT = len(range(0, FRAMES, SUBSAMPLE))


def _write_cdf(path, poses_32):
    cdf = CDF(path, delete=True)
    cdf.write_var({"Variable": "Pose", "Data_Type": CDF.CDF_DOUBLE, "Num_Elements": 1,
                   "Rec_Vary": True, "Dim_Sizes": [len(poses_32), 96]},
                  var_data=poses_32.reshape(1, len(poses_32), 96))
    cdf.close()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A fake release: {subject: {(name, camera_id): (T, 17, 3) mm}}, CPN pixels likewise."""
    root = str(tmp_path_factory.mktemp("h36m_raw"))
    rng = np.random.default_rng(0)
    cameras, cpn, poses, detections = {}, {}, {}, {}
    for subject, recordings in RECORDINGS.items():
        folder = os.path.join(root, f"S{subject}", "MyPoseFeatures", "D3_Positions_mono")
        os.makedirs(folder)
        cameras[f"S{subject}"] = {}
        for camera_id, name in enumerate(prepare_h36m.CAMERA_NAMES):
            camera = make_camera(7, subject, camera_id)
            params = {key: value.tolist() if isinstance(value, np.ndarray) else value
                      for key, value in camera.items()}
            key = name if camera_id % 2 == 0 else str(camera_id)  # both key styles
            cameras[f"S{subject}"][key] = params
        cpn[f"S{subject}"] = {}
        for number, (name, action, subaction) in enumerate(RECORDINGS[subject]):
            sequence = _Sequence(7, subject, action, subaction)
            per_camera = []
            for camera_id in range(4):
                camera = make_camera(7, subject, camera_id)
                world = np.stack([sequence.pose_at(1 + 9 * t) for t in range(FRAMES)])
                joints = world_to_camera(world, camera["R"], camera["T"])
                poses_32 = rng.normal(0, 300, (FRAMES, 32, 3)) + joints[:, :1]
                poses_32[:, list(prepare_h36m.H36M_TO_17)] = joints
                if camera_id in CAMERAS_USED:
                    cdf_name = f"{name}.{prepare_h36m.CAMERA_NAMES[camera_id]}.cdf"
                    _write_cdf(os.path.join(folder, cdf_name), poses_32)
                poses[(subject, name, camera_id)] = joints
                detected = project(joints, camera["fx"], camera["fy"], camera["cx"],
                                   camera["cy"]) + rng.normal(0, 3, (FRAMES, 17, 2))
                detections[(subject, name, camera_id)] = detected
                # three extra frames: the tool must cut detections to the mocap length
                per_camera.append(np.concatenate([detected, np.zeros((3, 17, 2))]))
            cpn[f"S{subject}"][prepare_h36m.canonical_name(name)] = per_camera
        _write_cdf(os.path.join(folder, "_ALL 1.54138969.cdf"), np.zeros((2, 32, 3)))
    with open(os.path.join(root, "cameras.json"), "w") as handle:
        json.dump(cameras, handle)
    np.savez_compressed(os.path.join(root, prepare_h36m.CPN_FILE),
                        positions_2d=np.array(cpn, dtype=object),
                        metadata=np.array({"layout_name": "h36m"}, dtype=object))
    # full frames of S9 for --crop
    for name, action, subaction in RECORDINGS[9]:
        for camera_id in CAMERAS_USED:
            background = make_background(7, 9, camera_id)
            for frame in range(0, FRAMES, SUBSAMPLE):
                relative = prepare_h36m.image_name(9, action, subaction, camera_id, frame + 1)
                path = os.path.join(root, "images", relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image = background.copy()
                cv2.putText(image, f"{name} {frame}", (300, 500), 0, 2.0, (255, 255, 255), 3)
                cv2.imwrite(path, image)
    return root, poses, detections


def _load(path):
    try:
        from datasets.labels import load_labels
    except ImportError:
        load_labels = None
    with open(path, "rb") as handle:
        entries = pickle.load(handle)
    if load_labels is not None:  # the loader must accept the file too
        columns = load_labels(path, cache_dir=os.path.join(os.path.dirname(path), "cache"))
        assert len(columns["image"]) == len(entries)
    return entries


def test_sequence_table_covers_every_recording():
    for subject in (1, 5, 6, 7, 8, 9, 11):
        names = prepare_h36m.sequence_names(subject)
        assert len(names) == 30
        assert sorted(names.values()) == [(a, s) for a in range(2, 17) for s in (1, 2)]
    assert prepare_h36m.sequence_names(1)["Eating 2"] == (4, 1)
    assert prepare_h36m.sequence_names(5)["SittingDown 1"] == (10, 2)
    assert prepare_h36m.canonical_name("WalkingDog 1") == "WalkDog 1"


def test_prepare_fake_release(raw, tmp_path, capsys):
    root, poses, detections = raw
    out = str(tmp_path / "out")
    assert prepare_h36m.main(["--raw", root, "--out", out, "--subsample", str(SUBSAMPLE),
                              "--subjects", "1,9"]) == 0
    printed = capsys.readouterr().out
    assert "1,559,752" in printed and "543,344" in printed and "_ALL 1.54138969.cdf" in printed
    for split, subject in (("train", 1), ("validation", 9)):
        entries = _load(os.path.join(out, f"h36m_{split}.pkl"))
        assert len(entries) == len(RECORDINGS[subject]) * len(CAMERAS_USED) * KEPT
        assert f"{split}: {len(entries):,} entries" in printed
        expected = {name: (action, subaction) for name, action, subaction in RECORDINGS[subject]}
        names = {(a, s): n for n, (a, s) in expected.items()}
        assert {(e["action"], e["subaction"]) for e in entries} == set(expected.values())
        assert len({e["video_id"] for e in entries}) == len(expected) * len(CAMERAS_USED)
        with open(os.path.join(root, "cameras.json")) as handle:
            cameras = json.load(handle)[f"S{subject}"]
        for entry in entries:
            name = names[(entry["action"], entry["subaction"])]
            frame = entry["image_id"] - 1
            assert frame % SUBSAMPLE == 0 and entry["nposes"] == FRAMES
            camera_id = entry["camera_id"]
            assert camera_id in CAMERAS_USED and entry["subject"] == subject
            assert entry["image"] == prepare_h36m.image_name(
                subject, entry["action"], entry["subaction"], camera_id, frame + 1)
            joints = poses[(subject, name, camera_id)][frame]
            np.testing.assert_allclose(entry["joints_3d"], joints / 1000.0, atol=1e-9)
            camera_key = prepare_h36m.CAMERA_NAMES[camera_id] if camera_id % 2 == 0 \
                else str(camera_id)
            params = cameras[camera_key]
            camera = entry["camera"]
            assert camera["fx"] == params["fx"] and camera["T"].shape == (3, 1)
            gt = project(joints, camera["fx"], camera["fy"], camera["cx"], camera["cy"],
                         camera["k"], camera["p"])
            size = H36M_FRAME_SIZES[camera_id]
            np.testing.assert_allclose(entry["joints_2d_gt"], pixels_to_screen(gt, *size))
            detected = detections[(subject, name, camera_id)][frame]
            np.testing.assert_allclose(entry["joints_2d_cpn"],
                                       pixels_to_screen(detected, *size))
            np.testing.assert_allclose(entry["joints_2d_cpn_crop"],
                                       full_frame_to_crop(detected, entry["center"],
                                                          entry["scale"]))
            np.testing.assert_allclose(entry["joints_2d_gt_crop"],
                                       full_frame_to_crop(gt, entry["center"], entry["scale"]))
            np.testing.assert_allclose(entry["scale"][0] * 200,
                                       2000.0 / joints[0, 2] * camera["fx"])


def test_crop_and_no_cpn(raw, tmp_path):
    root, poses, _ = raw
    out = str(tmp_path / "crops")
    prepare_h36m.main(["--raw", root, "--out", out, "--subsample", str(SUBSAMPLE),
                       "--subjects", "9", "--crop", "--no-cpn"])
    assert not os.path.exists(os.path.join(out, "h36m_train.pkl"))
    entries = _load(os.path.join(out, "h36m_validation.pkl"))
    assert len(entries) == len(RECORDINGS[9]) * len(CAMERAS_USED) * KEPT
    for entry in entries:
        np.testing.assert_array_equal(entry["joints_2d_cpn"], entry["joints_2d_gt"])
        crop = cv2.imread(os.path.join(out, "images", entry["image"]))
        assert crop.shape == (256, 192, 3)
        frame = cv2.imread(os.path.join(root, "images", entry["image"]))
        expected = crop_from_full_frame(frame, entry["center"], entry["scale"])
        assert np.abs(crop.astype(float) - expected).mean() < 3.0


def test_errors(raw, tmp_path):
    root, _, _ = raw
    out = str(tmp_path / "out")
    with pytest.raises(MetaPoseError, match="does not exist"):
        prepare_h36m.main(["--raw", str(tmp_path / "missing"), "--out", out])
    with pytest.raises(MetaPoseError, match="S5"):  # no S5 folder in the fake tree
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "5", "--no-cpn",
                           "--cameras", os.path.join(root, "cameras.json")])
    with pytest.raises(MetaPoseError, match="--no-cpn"):
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1",
                           "--cpn", str(tmp_path / "none.npz")])
    broken = str(tmp_path / "cameras.json")
    with open(os.path.join(root, "cameras.json")) as handle:
        cameras = json.load(handle)
    del cameras["S1"]["58860488"]
    with open(broken, "w") as handle:
        json.dump(cameras, handle)
    with pytest.raises(MetaPoseError, match="58860488"):
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1", "--cameras", broken])
    with pytest.raises(MetaPoseError, match="--images"):  # S1 has no frames for --crop
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1", "--crop"])


def test_command_line_exit_status(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_h36m.py"),
                             "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
