"""tools/prepare_h36m.py on a fake raw H36M release written here, with the real release's gaps.

The fake tree: S1 in the official archive's layout (S1/MyPoseFeatures/D3_Positions_mono), S9 and
S11 in the H36M-Toolbox's extracted layout (S9/Poses_D3_Positions_mono), the cameras in a
cameras.h5 written with h5py, VideoPose3D-style CPN detections without S11 'Directions' (whose
camera 54138969 has no frames, as in the release), a recording without its pose file, two missing
frames, and CPN sequences three frames longer than the poses.
"""

import json
import os
import pickle
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from datasets.camera import (
    H36M_FRAME_SIZES, box_from_root, crop_from_full_frame, full_frame_to_crop, pixels_to_screen,
    project,
)
from datasets.pose_frames import PoseFrameDataset
from datasets.labels import load_labels
from datasets.synthetic import make_background, make_camera
from tests.fake_h36m_release import write_fake_release
from tests.tiny_h36m import toolbox_zoom
from tools import prepare_h36m
from utils.errors import MetaPoseError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 7  # frames per recording
# subject -> (layout, [(file name, action, subaction, cameras with a pose file)])
RECORDINGS = {
    1: ("official", [("Directions 1", 2, 1, (0, 2)), ("Directions", 2, 2, (0, 2)),
                     ("TakingPhoto 1", 12, 1, (0, 2)), ("Eating 2", 4, 1, (0, 2))]),
    9: ("toolbox", [("SittingDown", 10, 1, (0, 2)), ("Discussion 2", 3, 2, (1,))]),
    11: ("toolbox", [("Directions 1", 2, 1, (0, 3)), ("Directions", 2, 2, (0, 1, 2, 3))]),
}
NO_FRAMES = {(11, "Directions", 0)}  # the release's missing video
MISSING_FRAMES = {(9, "SittingDown", 2): (3, 5)}  # 0-based frames without an image
NO_CPN = {(11, "Directions")}  # VideoPose3D's file has no entry


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The fake release; returns (root, {(subject, name, camera_id): (T, 17, 3) mm poses},
    {same key: (T, 17, 2) CPN pixels})."""
    root = str(tmp_path_factory.mktemp("h36m_raw"))
    poses, detections = write_fake_release(root, RECORDINGS, FRAMES, no_frames=NO_FRAMES,
                                           missing_frames=MISSING_FRAMES, no_cpn=NO_CPN)
    return root, poses, detections


def _expected_frames(subject):
    """{(name, camera_id): kept 0-based frames} of one subject."""
    kept = {}
    for name, action, subaction, cameras in RECORDINGS[subject][1]:
        if (subject, action, subaction) in prepare_h36m.KNOWN_GAPS:
            continue
        for camera_id in cameras:
            missing = MISSING_FRAMES.get((subject, name, camera_id), ())
            kept[(name, camera_id)] = [f for f in range(FRAMES) if f not in missing]
    return kept


def _read(path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    root, _, _ = release
    out = str(tmp_path_factory.mktemp("prepared") / "data")
    return out, _run(root, out)


def _run(root, out, *extra):
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert prepare_h36m.main(["--raw", root, "--out", out, "--workers", "1",
                                  *(extra or ("--subjects", "1,9,11"))]) == 0
    return printed.getvalue()


def test_sequence_table_covers_every_recording():
    for subject in (1, 5, 6, 7, 8, 9, 11):
        names = prepare_h36m.sequence_names(subject)
        assert len(names) == 30
        assert sorted(names.values()) == [(a, s) for a in range(2, 17) for s in (1, 2)]
    assert prepare_h36m.sequence_names(1)["Eating 2"] == (4, 1)
    assert prepare_h36m.sequence_names(5)["SittingDown 1"] == (10, 2)
    assert prepare_h36m.canonical_name("WalkingDog 1") == "WalkDog 1"


def test_fake_release_gives_both_pickles_with_the_gaps_counted(release, prepared):
    root, poses, detections = release
    out, printed = prepared
    print(printed)
    assert "1,559,752" in printed and "543,344" in printed and "_ALL 1.54138969.cdf" in printed
    assert f"S11: {FRAMES * 4:,} frames: known gap of the release" in printed
    assert "S9: 2 frames: frame image missing" in printed
    # 30 sequences x 4 cameras are expected per subject; the fake tree has few pose files
    assert "S1: 112 recordings: no 3D pose file" in printed  # 8 present
    assert "S9: 117 recordings: no 3D pose file" in printed  # 3 present
    assert "S11: 114 recordings: no 3D pose file" in printed  # 2 present + the 4 of the gap
    assert "frames/s" in printed and not os.path.exists(os.path.join(out, ".prepare_h36m"))
    for split, subjects in (("train", (1,)), ("validation", (9, 11))):
        path = os.path.join(out, f"h36m_{split}.pkl")
        entries = _read(path)
        columns = load_labels(path, cache_dir=os.path.join(out, "cache"))  # the loader accepts it
        assert len(columns["image"]) == len(entries)
        expected = sum(len(frames) for subject in subjects
                       for frames in _expected_frames(subject).values())
        assert len(entries) == expected and f"{split}: {expected:,} entries" in printed
        for subject in subjects:
            produced = sum(1 for entry in entries if entry["subject"] == subject)
            assert f"S{subject}" in printed and f"{produced:>10,}" in printed
        names = {(s, a, sa): n for s in subjects for n, a, sa, _ in RECORDINGS[s][1]}
        kept = {(s, *key) for s in subjects for key in _expected_frames(s)}
        seen = set()
        for entry in entries:
            subject, camera_id = entry["subject"], entry["camera_id"]
            name = names[(subject, entry["action"], entry["subaction"])]
            frame = entry["image_id"] - 1
            assert (subject, name, camera_id) in kept and entry["nposes"] == FRAMES
            seen.add((subject, name, camera_id, frame))
            assert entry["image"] == prepare_h36m.image_name(
                subject, entry["action"], entry["subaction"], camera_id, frame + 1)
            joints = poses[(subject, name, camera_id)][frame]
            np.testing.assert_allclose(entry["joints_3d"], joints / 1000.0, atol=1e-9)
            reference = make_camera(7, subject, camera_id)  # what cameras.h5 was written from
            camera = entry["camera"]
            np.testing.assert_allclose(camera["R"], reference["R"])
            assert camera["fx"] == reference["fx"] and camera["T"].shape == (3, 1)
            gt = project(joints, camera["fx"], camera["fy"], camera["cx"], camera["cy"],
                         camera["k"], camera["p"])
            size = H36M_FRAME_SIZES[camera_id]
            np.testing.assert_allclose(entry["joints_2d_gt"], pixels_to_screen(gt, *size))
            detected = detections[(subject, name, camera_id)][frame]
            np.testing.assert_allclose(entry["joints_2d_cpn"], pixels_to_screen(detected, *size))
            center, scale = entry["center"], entry["scale"]
            toolbox = (detected - center) * toolbox_zoom(scale) + np.array([95.5, 127.5])
            np.testing.assert_allclose(entry["joints_2d_cpn_crop"], toolbox, atol=1e-9)
            np.testing.assert_allclose(entry["joints_2d_gt_crop"],
                                       full_frame_to_crop(gt, center, scale))
            np.testing.assert_allclose(scale[0] * 200, 2000.0 / joints[0, 2] * camera["fx"])
        assert len(seen) == len(entries)


def test_no_cpn_gives_the_same_frames(release, prepared, tmp_path):
    root, _, _ = release
    out, _ = prepared
    other = str(tmp_path / "no_cpn")
    _run(root, other, "--no-cpn", "--cameras", os.path.join(root, "cameras.h5"), "--subjects",
         "1,9,11")
    for split in ("train", "validation"):
        with_cpn = _read(os.path.join(out, f"h36m_{split}.pkl"))
        without = _read(os.path.join(other, f"h36m_{split}.pkl"))
        assert [e["image"] for e in with_cpn] == [e["image"] for e in without]
        for entry in without:
            np.testing.assert_array_equal(entry["joints_2d_cpn"], entry["joints_2d_gt"])


def test_crash_then_rerun_gives_byte_identical_pickles(release, prepared, tmp_path,
                                                       monkeypatch):
    """Killed in the middle of the training split: the rerun reads only the unfinished
    recordings and writes the same bytes as the run that never stopped."""
    root, _, _ = release
    out, _ = prepared
    resumed = str(tmp_path / "resumed")
    read = prepare_h36m.read_pose_cdf
    calls = []

    def crash_at_the_seventh(path):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt  # as an interrupt or a kill would stop it
        return read(path)

    monkeypatch.setattr(prepare_h36m, "read_pose_cdf", crash_at_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        _run(root, resumed)
    assert not any(name.endswith(".pkl") for name in os.listdir(resumed))  # nothing half-made
    parts = [name for _, _, files in os.walk(os.path.join(resumed, ".prepare_h36m"))
             for name in files]
    assert len(parts) == 6 and not [name for name in parts if name.endswith(".tmp")]
    monkeypatch.setattr(prepare_h36m, "read_pose_cdf", read)
    printed = _run(root, resumed)
    assert "6 reused from an earlier run" in printed
    for name in ("h36m_train.pkl", "h36m_validation.pkl"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(resumed, name), "rb") as b:
            assert a.read() == b.read(), name


def test_crop_equals_the_loaders_crop_and_the_joints_land_on_the_skeleton(release, tmp_path):
    """--crop writes the toolbox crop: the loader cutting the same full frame on the fly gives
    the same image (mean abs difference < 1), and the crop joints sit on the drawn joints."""
    root, _, _ = release
    out, crops = str(tmp_path / "data"), str(tmp_path / "crops")
    cameras = _json_cameras(root, str(tmp_path / "cameras.json"))
    _run(root, out, "--subjects", "9", "--crop", "--crop-dir", crops, "--cameras", cameras)
    path = os.path.join(out, "h36m_validation.pkl")
    labels = load_labels(path)
    on_the_fly = PoseFrameDataset(labels, os.path.join(root, "images"), image_mode="full")
    stored = PoseFrameDataset(labels, crops, image_mode="auto")
    differences = []
    for index in range(len(on_the_fly)):
        a = on_the_fly[index]["image"].numpy().astype(float)
        b = stored[index]["image"].numpy().astype(float)
        differences.append(np.abs(a - b).mean())
        # at every crop joint the skeleton is drawn: the crop differs from the plain background
        background = cv2.cvtColor(make_background(7, 9, int(labels["camera_id"][index])),
                                  cv2.COLOR_BGR2RGB)
        plain = crop_from_full_frame(background, labels["center"][index],
                                     labels["scale"][index]).transpose(2, 0, 1).astype(float)
        joints = np.rint(labels["joints_2d_gt_crop"][index]).astype(int)
        inside = (joints[:, 0] >= 0) & (joints[:, 0] < 192) & (joints[:, 1] >= 0) & \
            (joints[:, 1] < 256)
        drawn = np.abs(b - plain).max(axis=0)
        assert inside.sum() >= 12 and (drawn[joints[inside, 1], joints[inside, 0]] > 15).all()
        assert np.median(drawn) < 5  # and elsewhere it mostly does not
    print(f"\n--crop vs on-the-fly crop: mean abs difference {np.mean(differences):.3f} "
          f"(max {np.max(differences):.3f})")
    assert np.mean(differences) < 1.0 and np.max(differences) < 1.5  # JPEG quality 95


def _json_cameras(root, path):
    """The cameras.h5 of the fake tree rewritten as a cameras.json (names and indices mixed)."""
    data = {}
    with h5py.File(os.path.join(root, "cameras.h5"), "r") as handle:
        for subject in RECORDINGS:
            data[f"S{subject}"] = {}
            for camera_id, name in enumerate(prepare_h36m.CAMERA_NAMES):
                group = handle[f"subject{subject}/camera{camera_id + 1}"]
                key = name if camera_id % 2 == 0 else str(camera_id)
                data[f"S{subject}"][key] = {
                    "R": group["R"][()].T.tolist(), "T": group["T"][()].ravel().tolist(),
                    "fx": float(group["f"][0, 0]), "fy": float(group["f"][1, 0]),
                    "cx": float(group["c"][0, 0]), "cy": float(group["c"][1, 0]),
                    "k": group["k"][()].ravel().tolist(), "p": group["p"][()].ravel().tolist()}
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path


def test_errors(release, tmp_path):
    root, _, _ = release
    out = str(tmp_path / "out")
    with pytest.raises(MetaPoseError, match="does not exist"):
        prepare_h36m.main(["--raw", str(tmp_path / "missing"), "--out", out])
    with pytest.raises(MetaPoseError, match="S5.*Poses_D3_Positions_mono"):  # no S5 folder
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "5", "--no-cpn"])
    with pytest.raises(MetaPoseError, match="--no-cpn"):
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1",
                           "--cpn", str(tmp_path / "none.npz")])
    with open(_json_cameras(root, str(tmp_path / "cameras.json"))) as handle:
        cameras = json.load(handle)
    del cameras["S1"]["58860488"]
    broken = str(tmp_path / "broken.json")
    with open(broken, "w") as handle:
        json.dump(cameras, handle)
    with pytest.raises(MetaPoseError, match="58860488"):
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1", "--cameras", broken])
    with pytest.raises(MetaPoseError, match="overwrite the full frames"):
        prepare_h36m.main(["--raw", root, "--out", out, "--subjects", "1", "--crop",
                           "--crop-dir", os.path.join(root, "images")])
    assert not os.path.exists(os.path.join(out, "h36m_train.pkl"))


def test_box_is_the_design_box(release):
    """The box of an entry is the 2 x 2 m square around the root (docs/method.md §1.1)."""
    _, poses, _ = release
    joints = poses[(1, "Directions 1", 0)][0]
    camera = make_camera(7, 1, 0)
    center, scale, box = box_from_root(joints[0], camera["fx"], camera["fy"], camera["cx"],
                                       camera["cy"])
    np.testing.assert_allclose(box[2] - box[0], 2000.0 / joints[0, 2] * camera["fx"])
    np.testing.assert_allclose(center, [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def test_command_line_exit_status(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_h36m.py"),
                             "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def _one_camera_file(tmp_path, **changes):
    """A cameras.json of S1 (four plausible H36M-like cameras), camera 54138969 changed."""
    cameras = {}
    for camera_id, name in enumerate(prepare_h36m.CAMERA_NAMES):
        camera = make_camera(7, 1, camera_id)
        cameras[name] = {"R": camera["R"].tolist(), "T": camera["T"].ravel().tolist(),
                         "fx": camera["fx"], "fy": camera["fy"], "cx": camera["cx"],
                         "cy": camera["cy"], "k": camera["k"].ravel().tolist(),
                         "p": camera["p"].ravel().tolist()}
    cameras["54138969"].update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del cameras["54138969"][key]
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps({"S1": cameras}))
    return str(path)


def test_cameras_json_is_checked_and_names_its_order(tmp_path):
    cameras = prepare_h36m.load_cameras(_one_camera_file(tmp_path), [1])
    assert cameras[(1, 0)][0]["p"].shape == (2, 1) and cameras[(1, 0)][1:] == (1000, 1002)
    assert "p1 b + p2 a" in prepare_h36m.__doc__ and "REVERSED" in prepare_h36m.__doc__
    mirror = np.diag([1.0, 1.0, -1.0]) @ make_camera(7, 1, 0)["R"]
    for changes, message in (
            ({"tangential_distortion": [0.001, 0.002]}, "VideoPose3D's names.*reverse order"),
            ({"k": [-0.2, 0.24]}, r"'k' has 2 values; it needs 3 \(\[k1, k2, k3\]\)"),
            ({"p": [0.1, 0.2, 0.3]}, r"'p' has 3 values; it needs 2 \(\[p1, p2\], cameras.h5"),
            ({"k": [-20.0, 240.0, 0.0]}, "moves a corner of the frame by"),
            ({"p": [0.4, -0.3]}, "moves a corner of the frame by"),
            ({"R": (mirror * 2).tolist()}, "R is not a rotation"),
            ({"R": mirror.tolist()}, "R is not a rotation"),
            ({"fx": -1145.0}, "must be positive"),
            ({"cx": 5120.0}, "principal point"),
            ({"fy": None}, "lacks 'fy'"),
            ({"width": 1000.5}, "whole number of pixels"),
            ({"k": [float("nan"), 0, 0]}, "not finite")):
        with pytest.raises(MetaPoseError, match=message):
            prepare_h36m.load_cameras(_one_camera_file(tmp_path, **changes), [1])


def test_a_deeply_nested_or_non_regular_cameras_json_is_refused(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(MetaPoseError, match="nests lists or objects more deeply"):
        prepare_h36m.load_cameras(str(deep), [1])
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(MetaPoseError, match="is a FIFO"):
        prepare_h36m.load_cameras(str(tmp_path / "fifo.json"), [1])
