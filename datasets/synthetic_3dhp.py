"""Synthetic MPI-INF-3DHP (the offline stand-in of docs/method.md §6), in exactly CA-PF's label layout:

    out_dir/data_train_3dhp.npz   S1..S8 x Seq1, Seq2 filmed by the 8 "vnect" cameras (2048x2048)
    out_dir/data_test_3dhp.npz    TS1..TS6 with valid flags; TS1-TS4 2048x2048 (the studio camera
                                  8's intrinsics), TS5-TS6 1920x1080 (outdoor, their own)
    out_dir/images/s_01_seq_01_ca_00/s_01_seq_01_ca_00_000001.jpg   256x192 person crops
    out_dir/images/TS1/TS1_000001.jpg

The performances, skeleton and renderer are those of the synthetic H36M set (datasets/synthetic.py:
H36M-like bodies posed by joint angles within human limits, limbs drawn with depth-dependent width
and shade so the image carries the depth the 2D joints lose). What is 3DHP here: the file layout,
the 17-joint 3DHP order of the arrays (`H36M_TO_MPI`), camera rigs at 3DHP distances (root 3.2-5 m
from the camera, pinhole intrinsics, no distortion), the frame sizes above, only the first frames
of each camera (CA-PF keeps the first F frames of a video), and test sequences whose first frame
and about one in seven others are marked invalid. Invalid test frames carry labels but no image:
nothing reads them.

Everything is a function of `seed` and the frame counts (labels and images; the npz container
itself records its write time).
"""

import math
import os
import time

import cv2
import numpy as np

from datasets.camera import (apply_affine, box_from_root, crop_affine, pixels_to_screen, project,
                             world_to_camera)
from datasets.mpi_inf_3dhp_labels import (H36M_TO_MPI, SEQUENCE_INFO, TEST_FILE,
                                          TEST_FRAME_SIZES, TEST_SEQUENCES, TRAIN_FILE,
                                          TRAIN_FRAME_SIZE, VNECT_CAMERAS, test_image_name,
                                          train_image_name, train_sequence_name,
                                          write_label_file)
from datasets.coco_joints_file import write_coco_file
from datasets.synthetic import (JPEG_QUALITY, Performance, camera_face, coco_joints,
                                make_background, prepare_output, render_crop)
from utils.skeleton import ACTION_IDS

# The performances are drawn from their own random streams (not those of the H36M set).
_SEED_DOMAIN = 0x3D4 << 20
_DOMAIN_ALLOCATION, _DOMAIN_CAMERA, _DOMAIN_VALID = 11, 12, 13
# Bodies (scales, proportions) of datasets/synthetic.py: training subjects S1..S8 take H36M's
# training bodies in turn; the test sequences H36M's validation bodies, unseen in training, each
# with its own activity.
_BODIES = (1, 5, 6, 7, 8)
_TEST_PERFORMANCES = {"TS1": (9, 14), "TS2": (11, 3), "TS3": (9, 6), "TS4": (11, 9),
                      "TS5": (9, 16), "TS6": (11, 13)}
_FRAME_STRIDE = 10  # consecutive synthetic frames are 0.2 s apart (more poses per few frames)
_INVALID_RATE = 0.15
_UP = np.array([0.0, 0.0, 1.0])


def _look_at(centre, target):
    """(3, 3) world -> camera rotation (rows: right, down, forward) of a camera at `centre`."""
    forward = (target - centre) / np.linalg.norm(target - centre)
    right = np.cross(forward, _UP)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(forward, right), forward])


def _rig_intrinsics(camera):
    """fx, fy, cx, cy of studio camera `camera` (0..13) in 2048x2048 frames."""
    rng = np.random.default_rng([0x3D, camera])
    focal = 1500.0 + rng.uniform(-8, 8)
    return focal, focal + rng.uniform(-1, 1), 1024.0 + rng.uniform(-30, 30), \
        1024.0 + rng.uniform(-30, 30)


def make_camera(seed, key, camera, frame_size):
    """A camera dict R (3,3), T (3,1) world mm centre (X_cam = R @ (X - T)), fx, fy, cx, cy for
    the unit `key` (a tuple), filmed by studio camera `camera` (0..13) or, with camera None, the
    outdoor camera of TS5/TS6 (1920x1080)."""
    rng = np.random.default_rng([seed, _DOMAIN_CAMERA, *key, 99 if camera is None else camera])
    if camera is None:
        azimuth, radius, height = rng.uniform(0, 2 * np.pi), rng.uniform(3800, 4600), \
            rng.uniform(1100, 1500)
        fx = fy = 1680.0
        cx, cy = frame_size[0] / 2.0 + rng.uniform(-15, 15), frame_size[1] / 2.0 + \
            rng.uniform(-15, 15)
    else:
        azimuth = math.radians(40.0 * camera + rng.uniform(-5, 5))
        radius = rng.uniform(3700, 4300)
        height = (900.0, 1500.0, 2100.0)[camera % 3] + rng.uniform(-100, 100)
        fx, fy, cx, cy = _rig_intrinsics(camera)
    centre = np.array([radius * math.cos(azimuth), radius * math.sin(azimuth), height])
    target = np.array([rng.uniform(-100, 100), rng.uniform(-100, 100), rng.uniform(850, 1000)])
    return {"R": _look_at(centre, target), "T": centre.reshape(3, 1), "fx": fx, "fy": fy,
            "cx": cx, "cy": cy}


def _background(seed, key, camera, frame_size):
    """Full-frame BGR background of one unit, enlarged from the H36M generator's backgrounds."""
    image = make_background(seed, int(np.prod([k + 1 for k in key])) % 100000,
                            0 if camera is None else camera)
    return cv2.resize(image, frame_size, interpolation=cv2.INTER_LINEAR)


def _film(seed, performance, camera, frame_size, frames, background, image_names, out_dir,
          coco):
    """The label arrays (3DHP joint order) of `frames` (1-based) of one unit, and their crops
    written as JPEGs for the frames in `image_names` (frame -> relative path), whose COCO-17
    crop joints are appended to `coco` as (relative path, (17, 2))."""
    width, height = frame_size
    intrinsics = (camera["fx"], camera["fy"], camera["cx"], camera["cy"])
    posed = [performance.pose_at(1 + (f - 1) * _FRAME_STRIDE, with_face=True) for f in frames]
    joints_mm = np.stack([world_to_camera(joints, camera["R"], camera["T"])
                          for joints, _ in posed])
    faces_mm = np.stack([world_to_camera(face, camera["R"], camera["T"]) for _, face in posed])
    pixels = project(joints_mm, *intrinsics)                                    # (T, 17, 2)
    face_pixels = project(faces_mm, *intrinsics)                                # (T, 5, 2)
    centers, scales, _ = box_from_root(joints_mm[:, 0], *intrinsics)
    crops = np.stack([apply_affine(pixels[i], crop_affine(centers[i], scales[i]))
                      for i in range(len(frames))])
    for i, frame in enumerate(frames):
        if frame not in image_names:
            continue
        depth_m = (joints_mm[i, :, 2] - joints_mm[i, 0, 2]) / 1000.0
        matrix = crop_affine(centers[i], scales[i])
        face = camera_face(faces_mm[i], joints_mm[i, 0, 2], camera["fx"], face_pixels[i])
        image = render_crop(background, matrix, pixels[i], depth_m,
                            camera["fx"] / joints_mm[i, :, 2], face)
        coco.append((image_names[frame], coco_joints(crops[i], apply_affine(face[0], matrix))))
        path = os.path.join(out_dir, "images", image_names[frame])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {path}")
        with open(path, "wb") as handle:
            handle.write(encoded.tobytes())
    order = list(H36M_TO_MPI)
    return {
        "data_2d": pixels_to_screen(pixels, width, height)[:, order].astype(np.float32),
        "data_2d_crop": crops[:, order].astype(np.float32),
        "data_3d": joints_mm[:, order].astype(np.float32),
        "center": centers.astype(np.float32), "scale": scales.astype(np.float32),
    }


def _spread(seed, split_code, units, frames):
    """How many frames each of `units` gets: a seeded order cycled, so even a few frames reach
    many sequences and cameras."""
    order = np.random.default_rng([seed, _DOMAIN_ALLOCATION, split_code]).permutation(len(units))
    counts = np.zeros(len(units), dtype=np.int64)
    np.add.at(counts, order[np.arange(frames) % len(units)], 1)
    return dict(zip(units, counts.tolist()))


def _train_layout(seed, frames, out_dir, coco):
    units = [(subject, sequence, camera) for subject, sequence in sorted(SEQUENCE_INFO)
             for camera in VNECT_CAMERAS]
    counts = _spread(seed, 0, units, frames)
    layout = {}
    for (subject, sequence, camera), count in counts.items():
        if not count:
            continue
        body = _BODIES[(subject - 1) % len(_BODIES)]
        action = ACTION_IDS[(2 * (subject - 1) + sequence - 1) % len(ACTION_IDS)]
        performance = Performance(seed + _SEED_DOMAIN, body, action, sequence)
        key = (subject, sequence)
        rig = make_camera(seed, key, camera, TRAIN_FRAME_SIZE)
        numbers = list(range(1, count + 1))
        names = {f: train_image_name(subject, sequence, camera, f) for f in numbers}
        arrays = _film(seed, performance, rig, TRAIN_FRAME_SIZE, numbers,
                       _background(seed, key, camera, TRAIN_FRAME_SIZE), names, out_dir, coco)
        name = train_sequence_name(subject, sequence)
        layout.setdefault(name, [{}, SEQUENCE_INFO[key][1]])[0][str(camera)] = arrays
    return layout


def _valid_flags(seed, name, valid_frames):
    """0/1 per frame: frame 1 and about one in seven others invalid, `valid_frames` valid."""
    rng = np.random.default_rng([seed, _DOMAIN_VALID, TEST_SEQUENCES.index(name)])
    flags = [0]
    while sum(flags) < valid_frames:
        flags.append(0 if rng.uniform() < _INVALID_RATE else 1)
    return np.array(flags, dtype=np.uint8)


def _test_layout(seed, frames, out_dir, coco):
    counts = _spread(seed, 1, list(TEST_SEQUENCES), frames)
    layout = {}
    for name in TEST_SEQUENCES:
        if not counts[name]:
            continue
        valid = _valid_flags(seed, name, counts[name])
        numbers = list(range(1, len(valid) + 1))
        key = (100 + TEST_SEQUENCES.index(name),)
        frame_size = TEST_FRAME_SIZES[name]
        studio = frame_size == TRAIN_FRAME_SIZE
        rig = make_camera(seed, key, 8 if studio else None, frame_size)
        body, action = _TEST_PERFORMANCES[name]
        performance = Performance(seed + _SEED_DOMAIN, body, action, 1)
        names = {f: test_image_name(name, f) for f, flag in zip(numbers, valid) if flag}
        arrays = _film(seed, performance, rig, frame_size, numbers,
                       _background(seed, key, 8 if studio else None, frame_size), names, out_dir,
                       coco)
        arrays["valid"] = valid
        layout[name] = arrays
    return layout


def generate_synthetic_3dhp(out_dir, train_frames, val_frames, seed, train_file=TRAIN_FILE,
                            test_file=TEST_FILE, verbose=True):
    """Writes a synthetic MPI-INF-3DHP set in CA-PF's layout (module docstring).

    Args:
        out_dir: output folder (created).
        train_frames: training samples (camera frames), spread over the 16 sequences x 8
            cameras (>= 1).
        val_frames: VALID test frames, spread over TS1-TS6 (>= 1); invalid frames come on top.
        seed: non-negative integer; the same arguments give the same labels and images.
        train_file, test_file: label file names inside `out_dir`.
        verbose: print counts, sizes and time.
    Returns:
        dict train_frames, val_frames (valid), val_invalid, seconds, train_file, val_file,
        image_dir.
    Raises:
        MetaPoseError for non-positive counts, a negative seed or an unwritable folder.
    """
    start = time.perf_counter()
    prepare_output(out_dir, train_frames, val_frames, seed)
    coco = {"train": [], "test": []}
    train = _train_layout(int(seed), int(train_frames), out_dir, coco["train"])
    test = _test_layout(int(seed), int(val_frames), out_dir, coco["test"])
    paths = {"train": os.path.join(out_dir, train_file), "test": os.path.join(out_dir, test_file)}
    write_label_file(paths["train"], train)
    write_label_file(paths["test"], test)
    for split, rows in coco.items():
        write_coco_file(paths[split], [name for name, _ in rows], [joints for _, joints in rows])
    invalid = sum(int((1 - unit["valid"]).sum()) for unit in test.values())
    summary = {"train_frames": sum(len(unit["data_2d"]) for cameras, _ in train.values()
                                   for unit in cameras.values()),
               "val_frames": sum(int(unit["valid"].sum()) for unit in test.values()),
               "val_invalid": invalid, "train_file": paths["train"], "val_file": paths["test"],
               "image_dir": os.path.join(out_dir, "images"),
               "seconds": time.perf_counter() - start}
    if verbose:
        print(f"synthetic MPI-INF-3DHP train: {summary['train_frames']} frames of {len(train)} "
              f"sequences -> {paths['train']} ({os.path.getsize(paths['train']) / 1e6:.1f} MB)")
        print(f"synthetic MPI-INF-3DHP test: {summary['val_frames']} valid + {invalid} invalid "
              f"frames of {len(test)} sequences -> {paths['test']}")
        print(f"synthetic MPI-INF-3DHP written to {out_dir} (256x192 crops) in "
              f"{summary['seconds']:.1f} s", flush=True)
    return summary
