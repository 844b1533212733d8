"""tools/prepare_3dhp.py on a small fake raw release written here: MATLAB v5 and v7.3 (HDF5)
annotations, calibration files, short MJPG videos and test JPEGs. Counts, problems reported but
not fatal, crop labels that agree with the crops for every camera, full frames, resuming, and the
raw readers' error messages."""

import os
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from datasets.camera import box_from_root, full_frame_to_crop, screen_to_pixels
from datasets.mpi_inf_3dhp import MPIINF3DHPDataset
from datasets.mpi_inf_3dhp_labels import (JOINTS_28_TO_17, MPI_TO_H36M, VNECT_CAMERAS,
                                          load_3dhp_labels)
from datasets.mpi_inf_3dhp_raw import read_calibration, read_train_annotation
from tools.prepare_3dhp import prepare
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (200, 150)          # training (and TS1-TS4) frames, width x height
OUTDOOR_SIZE = (240, 135)  # TS5-TS6 frames (16:9, as 1920x1080)
SEQUENCE_INFO = {(1, 1): (6, 25), (2, 2): (5, 50)}  # valid frames F, fps of the fake sequences
ANNOTATED = {(1, 1): 8, (2, 2): 4}  # S2 Seq2 has fewer annotated frames than F
MISSING_VIDEO, SHORT_VIDEO = (1, 1, 4), (1, 1, 5)  # (subject, sequence, camera)
TEST_VALID = {"TS1": [0, 1, 1, 0, 1, 1], "TS3": [1, 1, 0, 1, 1], "TS5": [1, 1, 1, 1, 0]}
MISSING_TEST_IMAGE = ("TS5", 3)


def intrinsics(camera, size=SIZE):
    """fx, fy, cx, cy: clearly different for every camera (a mix-up moves the box)."""
    fx = 170.0 + 9.0 * camera
    return fx, fx + 1.0, size[0] / 2 - 8 + 2.5 * camera, size[1] / 2 + 6 - 1.5 * camera


def pattern(x, y, frame):
    """(..., 3) RGB of a smooth pattern at full-frame pixels, shifted from frame to frame."""
    red = 128 + 60 * np.sin(2 * np.pi * (x + 5 * frame) / 29.0) + 30 * np.cos(2 * np.pi * y / 37.0)
    green = 128 + 60 * np.cos(2 * np.pi * (x + y) / 41.0 + 0.3 * frame)
    blue = 128 + 50 * np.sin(2 * np.pi * y / 23.0 + 0.2 * frame) + 30 * np.sin(2 * np.pi * x / 53)
    return np.stack([red, green, blue], axis=-1)


def frame_image(frame, size):
    """BGR uint8 frame `frame` (1-based) of the pattern."""
    ys, xs = np.mgrid[0:size[1], 0:size[0]].astype(np.float64)
    rgb = np.clip(np.round(pattern(xs, ys, frame)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def project(joints, fx, fy, cx, cy):
    return joints[..., :2] / joints[..., 2:3] * np.array([fx, fy]) + np.array([cx, cy])


def write_calibration(path, cameras):
    """A camera.calibration file: cameras {id: (size, fx, fy, cx, cy)}."""
    lines = ["Skeletool Camera Calibration File V1.0"]
    for camera, (size, fx, fy, cx, cy) in cameras.items():
        lines += [f"name          {camera}", "  sensor      10 10",
                  f"  size        {size[0]} {size[1]}", "  animated    0",
                  f"  intrinsic   {fx} 0 {cx} 0 0 {fy} {cy} 0 0 0 1 0 0 0 0 1 ",
                  f"  extrinsic   1 0 0 0 0 1 0 0 0 0 1 {-100 * camera} 0 0 0 1 ",
                  "  radial      0"]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def skeleton(rng, frames, joints=28):
    root = np.array([rng.uniform(-150, 150), rng.uniform(-100, 100), rng.uniform(3800, 4200)])
    body = rng.normal(0, 1, (frames, joints, 3)) * np.array([250.0, 330.0, 120.0])
    return root + body


def write_train_sequence(raw, subject, sequence, rng):
    """annot.mat (v5), camera.calibration and videos of one sequence; returns {camera: (pixels
    (T, 28, 2), joints (T, 28, 3))}."""
    folder = os.path.join(raw, f"S{subject}", f"Seq{sequence}")
    os.makedirs(os.path.join(folder, "imageSequence"))
    write_calibration(os.path.join(folder, "camera.calibration"),
                      {c: (SIZE, *intrinsics(c)) for c in range(14)})
    count = ANNOTATED[(subject, sequence)]
    truth, annot2, univ = {}, np.empty((14, 1), dtype=object), np.empty((14, 1), dtype=object)
    for camera in range(14):
        joints = skeleton(rng, count) + np.array([40.0 * camera, 0, 0])
        pixels = project(joints, *intrinsics(camera))
        truth[camera] = (pixels, joints)
        annot2[camera, 0], univ[camera, 0] = pixels.reshape(count, 56), joints.reshape(count, 84)
    scipy.io.savemat(os.path.join(folder, "annot.mat"),
                     {"annot2": annot2, "univ_annot3": univ, "annot3": univ,
                      "cameras": np.arange(14)[None]})
    for camera in VNECT_CAMERAS:
        if (subject, sequence, camera) == MISSING_VIDEO:
            continue
        frames = 4 if (subject, sequence, camera) == SHORT_VIDEO else count
        writer = cv2.VideoWriter(os.path.join(folder, "imageSequence", f"video_{camera}.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), 25, SIZE)
        assert writer.isOpened()
        for frame in range(1, frames + 1):
            writer.write(frame_image(frame, SIZE))
        writer.release()
    return truth


def write_test_sequence(raw, name, rng, hdf5):
    folder = os.path.join(raw, "mpi_inf_3dhp_test_set", name)
    os.makedirs(os.path.join(folder, "imageSequence"))
    valid = np.array(TEST_VALID[name], dtype=np.float64)
    size = OUTDOOR_SIZE if name == "TS5" else SIZE
    camera = intrinsics(0, OUTDOOR_SIZE) if name == "TS5" else intrinsics(8)
    joints = skeleton(rng, len(valid), 17)
    pixels = project(joints, *camera)
    variables = {"annot2": pixels[:, None], "univ_annot3": joints[:, None],
                 "valid_frame": valid[:, None]}  # HDF5 axis order (T, 1, 17, k)
    path = os.path.join(folder, "annot_data.mat")
    if hdf5:
        with h5py.File(path, "w") as handle:
            for key, value in variables.items():
                handle.create_dataset(key, data=value)
    else:  # MATLAB v5 stores the MATLAB axis order (k, 17, 1, T)
        scipy.io.savemat(path, {key: value.transpose() for key, value in variables.items()})
    for frame in range(1, len(valid) + 1):
        if (name, frame) != MISSING_TEST_IMAGE:
            cv2.imwrite(os.path.join(folder, "imageSequence", f"img_{frame:06d}.jpg"),
                        frame_image(frame, size), [cv2.IMWRITE_JPEG_QUALITY, 98])
    return pixels, joints


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("raw_3dhp"))
    rng = np.random.default_rng(0)
    truth = {key: write_train_sequence(raw, *key, rng) for key in SEQUENCE_INFO}
    test_truth = {name: write_test_sequence(raw, name, rng, hdf5=name != "TS3")
                  for name in TEST_VALID}
    outdoor = os.path.join(raw, "outdoor.calibration")
    write_calibration(outdoor, {0: (OUTDOOR_SIZE, *intrinsics(0, OUTDOOR_SIZE))})
    return raw, outdoor, truth, test_truth


def run_prepare(release, out, **options):
    raw, outdoor, _, _ = release
    return prepare(raw, out, outdoor_calibration=outdoor, sequence_info=SEQUENCE_INFO,
                   **options)


@pytest.fixture(scope="module")
def prepared(release, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared_3dhp"))
    return out, run_prepare(release, out, workers=2)


def test_counts_and_reported_problems(prepared):
    out, result = prepared
    assert result["train"] == {"S1 Seq1": 6 * 6 + 4, "S2 Seq2": 8 * 4}
    assert result["test"] == {"TS1": 4, "TS3": 4, "TS5": 4}
    assert result["problems"] == {"missing video": 1, "short video": 1, "short annotation": 8,
                                  "missing sequence": 3, "missing image": 1}
    train = load_3dhp_labels(os.path.join(out, "data_train_3dhp.npz"))
    test = load_3dhp_labels(os.path.join(out, "data_test_3dhp.npz"))
    images = os.path.join(out, "images")
    train_set = MPIINF3DHPDataset(train, images)
    test_set = MPIINF3DHPDataset(test, images)
    assert len(train_set) == 72 and train_set.image_mode == "cropped"
    assert len(test_set) == 12 and test_set.num_invalid == 4
    assert test_set.sequence_names == ("TS1", "TS3", "TS5")
    cameras = train["camera"][train["sequence"] == b"S1 Seq1"]
    assert 4 not in cameras and (cameras == 5).sum() == 4
    for index in range(len(train_set)):  # every written image exists and reads
        assert train_set[index]["image"].shape == (3, 256, 192)


def _bilinear(image, x, y):
    """(3,) value of an (H, W, 3) image at float pixel (x, y)."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    patch = image[y0:y0 + 2, x0:x0 + 2].astype(np.float64)
    return (patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy)
            + patch[1, 0] * (1 - fx) * fy + patch[1, 1] * fx * fy)


def _crop_error(image, crop_points, full_points, frame):
    """Mean |crop(label) - pattern(joint)| over the joints inside both images."""
    errors = []
    for (cx, cy), (x, y) in zip(crop_points, full_points):
        if 1 <= cx < 190 and 1 <= cy < 254 and 1 <= x < SIZE[0] - 2 and 1 <= y < SIZE[1] - 2:
            errors.append(np.abs(_bilinear(image, cx, cy) - pattern(x, y, frame)).mean())
    return float(np.mean(errors))


def test_crop_labels_and_crops_agree_for_every_camera(prepared, release):
    """The defect of CA-PF's preparation (boxes by list position, labels by camera id) would
    move the crop labels off the joints for 5 of 8 cameras; here the pattern at each joint of
    the video frame is found at its crop label, for every camera, and a label computed with
    another camera's intrinsics misses it."""
    out, _ = prepared
    _, _, truth, _ = release
    columns = load_3dhp_labels(os.path.join(out, "data_train_3dhp.npz"))
    dataset = MPIINF3DHPDataset(columns, os.path.join(out, "images"))
    selected = list(JOINTS_28_TO_17)
    right, wrong = {}, {}
    for index in range(len(dataset)):
        row = dataset.frames[index]
        subject, camera, frame = (int(columns[k][row]) for k in ("subject", "camera", "frame"))
        sequence = 1 if subject == 1 else 2
        pixels, joints = (a[frame - 1][selected][list(MPI_TO_H36M)]
                          for a in truth[(subject, sequence)][camera])
        image = dataset[index]["image"].numpy().transpose(1, 2, 0)
        labels = dataset[index]["keypoints_2d_crop"].numpy()
        right.setdefault(camera, []).append(_crop_error(image, labels, pixels, frame))
        other = VNECT_CAMERAS[(VNECT_CAMERAS.index(camera) + 3) % 8]
        center, scale, _ = box_from_root(joints[0], *intrinsics(other))
        misplaced = full_frame_to_crop(pixels, center, scale)
        wrong.setdefault(camera, []).append(_crop_error(image, misplaced, pixels, frame))
        np.testing.assert_allclose(
            screen_to_pixels(dataset[index]["keypoints_2d"].numpy(), *SIZE), pixels, atol=1e-3)
    assert sorted(right) == list(VNECT_CAMERAS)  # camera 4 from S2 Seq2 only
    for camera in right:
        assert np.mean(right[camera]) < 8.0, (camera, np.mean(right[camera]))
        assert np.mean(wrong[camera]) > 2 * np.mean(right[camera]) + 8.0, camera


def test_labels_follow_the_annotations_and_frame_sizes(prepared, release):
    out, _ = prepared
    _, _, truth, test_truth = release
    train = load_3dhp_labels(os.path.join(out, "data_train_3dhp.npz"))
    rows = np.flatnonzero((train["sequence"] == b"S2 Seq2") & (train["camera"] == 7))
    pixels, joints = truth[(2, 2)][7]
    order = np.array(JOINTS_28_TO_17)[list(MPI_TO_H36M)]
    np.testing.assert_allclose(train["joints_3d"][rows], joints[:, order] / 1000.0, rtol=1e-5)
    assert train["frame"][rows].tolist() == [1, 2, 3, 4]
    test = load_3dhp_labels(os.path.join(out, "data_test_3dhp.npz"))
    for name, size in (("TS1", SIZE), ("TS3", SIZE), ("TS5", OUTDOOR_SIZE)):
        rows = np.flatnonzero(test["sequence"] == name.encode())
        pixels, joints = test_truth[name]
        np.testing.assert_allclose(screen_to_pixels(test["joints_2d_gt"][rows], *size),
                                   pixels[:, list(MPI_TO_H36M)], atol=1e-3)
        assert test["valid"][rows].tolist() == [bool(v) for v in TEST_VALID[name]]


def test_full_frames_give_the_same_crops(prepared, release, tmp_path):
    out, _ = prepared
    result = run_prepare(release, str(tmp_path), full_frames=True)
    assert result["train"] == prepared[1]["train"]
    crops = MPIINF3DHPDataset(load_3dhp_labels(os.path.join(out, "data_train_3dhp.npz")),
                              os.path.join(out, "images"))
    full = MPIINF3DHPDataset(load_3dhp_labels(str(tmp_path / "data_train_3dhp.npz")),
                             str(tmp_path / "images"))
    assert full.image_mode == "full" and len(full) == len(crops)
    for index in (0, len(full) // 2, len(full) - 1):
        difference = np.abs(full[index]["image"].numpy().astype(float)
                            - crops[index]["image"].numpy().astype(float))
        assert difference.mean() < 4.0


def test_a_rerun_resumes_and_redoes_only_unfinished_videos(prepared, release, tmp_path):
    raw = release[0]
    out = str(tmp_path / "out")
    shutil.copytree(prepared[0], out)
    labels = dict(np.load(os.path.join(out, "data_train_3dhp.npz"), allow_pickle=True))
    folder = os.path.join(out, "images", "s_01_seq_01_ca_00")
    os.remove(os.path.join(folder, ".done.json"))
    os.remove(os.path.join(folder, "s_01_seq_01_ca_00_000003.jpg"))
    copy = str(tmp_path / "raw")
    shutil.copytree(raw, copy)
    for camera in VNECT_CAMERAS:  # videos are gone, except the one left unfinished
        if camera:
            path = os.path.join(copy, "S1", "Seq1", "imageSequence", f"video_{camera}.avi")
            if os.path.exists(path):
                os.remove(path)
    result = prepare(copy, out, outdoor_calibration=release[1], sequence_info=SEQUENCE_INFO)
    assert result == prepared[1]
    assert os.path.isfile(os.path.join(folder, "s_01_seq_01_ca_00_000003.jpg"))
    again = dict(np.load(os.path.join(out, "data_train_3dhp.npz"), allow_pickle=True))
    assert again.keys() == labels.keys()
    first, second = labels["data"].item(), again["data"].item()
    for name, (cameras, fps) in first.items():
        assert second[name][1] == fps
        for camera, arrays in cameras.items():
            for key, value in arrays.items():
                assert np.array_equal(second[name][0][camera][key], value), (name, camera, key)


def test_command_line_errors(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_3dhp.py"),
                             "--raw", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: raw MPI-INF-3DHP folder" in result.stderr


def test_raw_readers_name_the_problem(tmp_path):
    path = str(tmp_path / "camera.calibration")
    with open(path, "w") as handle:
        handle.write("something else\n")
    with pytest.raises(MetaPoseError, match="does not start with the line"):
        read_calibration(path)
    with open(path, "w") as handle:
        handle.write("Skeletool Camera Calibration File V1.0\nname 3\n  size 10 10\n"
                     "  intrinsic 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(MetaPoseError, match="camera '3' \\(line 2\\) has no 'extrinsic'"):
        read_calibration(path)
    with open(path, "a") as handle:
        handle.write("  extrinsic 1 0 0\n")
    with pytest.raises(MetaPoseError, match="line 5: 'extrinsic' needs 16 numbers"):
        read_calibration(path)
    annotation = str(tmp_path / "annot.mat")
    with h5py.File(annotation, "w") as handle:
        handle.create_dataset("annot2", data=np.zeros((3, 56)))
    with pytest.raises(MetaPoseError, match="MATLAB v7.3"):
        read_train_annotation(annotation)
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0], cells[1, 0] = np.zeros((3, 56)), np.zeros((3, 50))
    scipy.io.savemat(annotation, {"annot2": cells, "univ_annot3": cells})
    with pytest.raises(MetaPoseError, match="camera 0 has annot2 \\(3, 56\\) and univ_annot3"):
        read_train_annotation(annotation)


def test_frame_write_failure_is_one_message_and_leaves_no_temporary(tmp_path):
    from tools.prepare_3dhp import _write_jpeg

    (tmp_path / "blocker").write_text("a file where the image folder should be")
    target = tmp_path / "blocker" / "img_000001.jpg"
    with pytest.raises(MetaPoseError, match="cannot write .*img_000001.jpg"):
        _write_jpeg(str(target), np.zeros((8, 8, 3), np.uint8), 90)
    _write_jpeg(str(tmp_path / "ok.jpg"), np.full((8, 8, 3), 200, np.uint8), 90)
    assert sorted(os.listdir(tmp_path)) == ["blocker", "ok.jpg"]
    assert cv2.imread(str(tmp_path / "ok.jpg")).shape == (8, 8, 3)
