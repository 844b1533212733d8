"""Converts the raw Human3.6M release into the label pickles (and optional crops) of docs/method.md §1.1.

    python tools/prepare_h36m.py --raw /data/h36m --out data [--crop] [--subsample 1]

Inputs (under --raw unless given explicitly):
    3D poses in each camera's coordinates, millimetres: CDF files with a variable 'Pose' of shape
        (1, T, 96) = 32 joints x (x, y, z) per frame, named '<Recording>.<camera>.cdf' (e.g.
        'Directions 1.54138969.cdf'), in either layout:
            S1/MyPoseFeatures/D3_Positions_mono/*.cdf   the official archive, extracted as is
            S1/Poses_D3_Positions_mono/*.cdf            the H36M-Toolbox's `extracted/` folder
        (the same files: the toolbox only moves them; point --raw at `extracted/`).
    camera parameters (--cameras; default RAW/cameras.json, else RAW/cameras.h5):
        cameras.h5, the file many H36M projects ship: groups subject<s>/camera<c> (c = 1..4 in
            the order 54138969, 55011271, 58860488, 60457274; checked against a `Name` dataset
            when present) with datasets R (stored transposed), T (3x1 camera centre, world mm),
            f (2x1), c (2x1), k (3x1), p (2x1). Needs h5py.
        or cameras.json: {"S1": {"54138969": {"R": 3x3, "T": 3 numbers, "fx": .., "fy": ..,
            "cx": .., "cy": .., "k": [k1, k2, k3], "p": [p1, p2], "width": 1000,
            "height": 1002}, ...}, ...}; subjects "S1" or "1", cameras by name or index "0".."3";
            k, p (zero), width, height (the camera's video size) may be omitted.
        X_cam = R @ (X_world - T). Only the intrinsics and distortion enter the 2D labels; R and
        T are copied into each entry's `camera`.
        The distortion is the H36M release's model (datasets/camera.py `project`), on the
        normalised point (a, b) = (X / Z, Y / Z), r2 = a^2 + b^2:
            radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3, tangential = p1 b + p2 a,
            (a, b) <- (a, b) * (radial + tangential) + (p2, p1) * r2,
        so k and p are in the order of cameras.h5 (k = [k1, k2, k3], p = [p1, p2]).
        VideoPose3D's `tangential_distortion` holds the same two numbers the other way round:
        copy its `radial_distortion` into k and its `tangential_distortion` REVERSED into p. A
        cameras.json with VideoPose3D's key names is refused with that advice. Checked per
        camera: R is a rotation, T finite, fx, fy > 0, the principal point inside the frame,
        k 3 and p 2 finite numbers, and a distortion that moves no frame corner by more than
        half its distance from the principal point (k or p in wrong units or places); the order
        of p1 and p2 cannot be checked from the numbers.
    data_2d_h36m_cpn_ft_h36m_dbb.npz (--cpn): VideoPose3D's CPN detections, positions_2d =
        {subject 'S1': {recording 'Directions 1': [4 arrays (T', 17, 2) in pixels, one per
        camera in the order above]}}. Only load a file you trust (it needs allow_pickle).
        --no-cpn copies the ground truth instead (same frames; not for real runs).
    the extracted full frames (--images; needed by --crop, optional otherwise):
        <sequence>/<sequence>_000001.jpg, <sequence> = s_01_act_02_subact_01_ca_01, 1-based.

What the release lacks is skipped and counted, never fatal: S11 'Directions' (VideoPose3D's CPN
file has no entry for it, the video of camera 54138969 is missing; skipped with and without
--no-cpn, so both give the same frames), recordings whose pose file or CPN entry is missing, CPN
sequences shorter than the poses (cut to the shorter; in the release they are longer), and frames
whose image is missing under --images. The skips are printed per reason, and the frames per
split and subject next to the expected 1,559,752 training / 543,344 validation entries.

Resumable: each recording's result is kept in OUT/.prepare_h36m/ (written atomically), so a
rerun after a crash or an interrupt redoes only the unfinished recordings, and the pickles are
written (incrementally, never the whole list in memory) only when every recording is done, under
a temporary name that becomes OUT/h36m_train.pkl / OUT/h36m_validation.pkl when complete. The
same inputs give byte-identical pickles.

Outputs: OUT/h36m_train.pkl (subjects 1, 5, 6, 7, 8) and OUT/h36m_validation.pkl (9, 11), lists
of dicts with the keys of docs/method.md §1.1 (joints_3d in metres, 2D joints as normalised screen
coordinates and 192x256 crop pixels, the box from the root joint); with --crop also the 256x192
crops, in --crop-dir (default: images/ beside OUT, the published layout). 2D ground truth is
the projection of the 3D joints with the camera's distortion.

Action names -> (action id, subaction): the two recordings of each action are numbered
differently per subject ('Directions 1' / 'Directions', 'Eating 2' / 'Eating', ...). Subaction
1 is "<Name> 1" and subaction 2 is "<Name>" except for the exceptions of SEQUENCE_EXCEPTIONS,
which follow the official H36M metadata. 'TakingPhoto' is read as 'Photo' and 'WalkingDog' as
'WalkDog' (S1's file names). Files whose name maps to no sequence (e.g. '_ALL') are listed and
skipped. Ids: 2 Directions, 3 Discussion, 4 Eating, 5 Greeting, 6 Phoning, 7 Posing,
8 Purchases, 9 Sitting, 10 SittingDown, 11 Smoking, 12 Photo, 13 Waiting, 14 Walking,
15 WalkDog, 16 WalkTogether.
"""

import argparse
import collections
import glob
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from datasets.camera import (  # noqa: E402
    H36M_FRAME_SIZES, box_from_root, full_frame_to_crop, pixels_to_screen, project,
)
from utils.atomic_files import atomic_output, name_output_flag  # noqa: E402
from datasets.label_writer import LabelPickleWriter  # noqa: E402
from datasets.labels import TRAIN_FILE, VAL_FILE  # noqa: E402
from datasets.precrop import CropJob, cut_crops  # noqa: E402
from datasets.synthetic import image_name  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.input_files import require_file  # noqa: E402
from utils.json_files import read_json_file  # noqa: E402
from utils.skeleton import (  # noqa: E402
    ALL_SUBJECTS, NUM_JOINTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS,
)

CAMERA_NAMES = ("54138969", "55011271", "58860488", "60457274")  # camera_id 0..3
H36M_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)  # of the 32 joints
EXPECTED_COUNTS = {"train": 1559752, "validation": 543344}  # every frame, all subjects, CPN
CPN_FILE = "data_2d_h36m_cpn_ft_h36m_dbb.npz"
POSE_FOLDERS = (os.path.join("MyPoseFeatures", "D3_Positions_mono"), "Poses_D3_Positions_mono")
SPLIT_FILES = (("train", TRAIN_SUBJECTS, TRAIN_FILE),
               ("validation", VALIDATION_SUBJECTS, VAL_FILE))
WORK_FOLDER = ".prepare_h36m"
PART_VERSION = 1

# (subject, action, subaction) -> why the release cannot give it (skipped in every mode).
KNOWN_GAPS = {
    (11, 2, 2): "known gap of the release: S11 'Directions' (no video for camera 54138969, no "
                "entry in VideoPose3D's CPN file)",
}

# Skip reasons, in the order they are reported.
NO_POSE_FILE = "no 3D pose file for the recording"
NO_CPN = "no CPN detections for the recording"
CPN_SHORTER = "frames beyond the end of the CPN detections"
FRAME_MISSING = "frame image missing under --images"

ACTION_BASE_NAMES = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
    8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo",
    13: "Waiting", 14: "Walking", 15: "WalkDog", 16: "WalkTogether",
}
# (action, subaction) -> recording name where it differs from "<Name> 1" / "<Name>".
SEQUENCE_EXCEPTIONS = {
    1: {(4, 1): "Eating 2", (9, 2): "Sitting 2", (10, 1): "SittingDown 2"},
    5: {(2, 2): "Directions 2", (3, 1): "Discussion 2", (3, 2): "Discussion 3",
        (5, 2): "Greeting 2", (10, 1): "SittingDown", (10, 2): "SittingDown 1",
        (12, 1): "Photo", (12, 2): "Photo 2", (13, 2): "Waiting 2"},
    6: {(4, 2): "Eating 2", (7, 1): "Posing 2", (9, 2): "Sitting 2", (12, 1): "Photo",
        (12, 2): "Photo 1", (13, 1): "Waiting 3"},
    7: {(6, 1): "Phoning 2", (10, 1): "SittingDown", (10, 2): "SittingDown 1",
        (12, 1): "Photo", (12, 2): "Photo 1", (13, 2): "Waiting 2", (14, 2): "Walking 2"},
    8: {(10, 1): "SittingDown", (10, 2): "SittingDown 1", (16, 2): "WalkTogether 2"},
    9: {(3, 2): "Discussion 2", (10, 1): "SittingDown", (10, 2): "SittingDown 1"},
    11: {(3, 2): "Discussion 2", (5, 1): "Greeting 2", (6, 1): "Phoning 3",
         (6, 2): "Phoning 2", (10, 1): "SittingDown", (10, 2): "SittingDown 1",
         (11, 1): "Smoking 2"},
}


def sequence_names(subject):
    """{recording name: (action id, subaction)} of one subject (canonical names, see module doc)."""
    names = {}
    for action, base in ACTION_BASE_NAMES.items():
        for subaction, default in ((1, f"{base} 1"), (2, base)):
            name = SEQUENCE_EXCEPTIONS.get(subject, {}).get((action, subaction), default)
            names[name] = (action, subaction)
    return names


def canonical_name(name):
    """'TakingPhoto 1' -> 'Photo 1', 'WalkingDog' -> 'WalkDog'; other names unchanged."""
    return name.replace("TakingPhoto", "Photo").replace("WalkingDog", "WalkDog")


# ----------------------------------------------------------------------------------------
# Reading the raw files
# ----------------------------------------------------------------------------------------

def read_pose_cdf(path):
    """(T, 17, 3) float64 joints (mm) of a D3_Positions(_mono) CDF file."""
    import cdflib

    try:
        data = np.asarray(cdflib.CDF(path).varget("Pose"), dtype=np.float64)
    except Exception as error:  # cdflib raises many types for unreadable files
        raise MetaPoseError(f"cannot read the 3D poses of '{path}' ({type(error).__name__}: "
                            f"{error}). It should be a CDF file of the H36M release with a "
                            "variable 'Pose' of shape (1, T, 96); replace the file.") from None
    if data.size == 0 or data.size % 96:
        raise MetaPoseError(f"'{path}': variable 'Pose' has shape {data.shape}, expected "
                            "(1, T, 96) = 32 joints x 3 coordinates per frame.")
    return data.reshape(-1, 32, 3)[:, list(H36M_TO_17)]


def pose_folder(raw, subject):
    """The subject's folder of D3_Positions_mono CDF files in either layout, or None."""
    for relative in POSE_FOLDERS:
        folder = os.path.join(raw, f"S{subject}", relative)
        if os.path.isdir(folder):
            return folder
    return None


def find_recordings(folder, subject):
    """({(action, subaction, camera_id): (recording name, cdf path)}, unrecognised file names)."""
    names = sequence_names(subject)
    recordings, skipped = {}, []
    for path in sorted(glob.glob(os.path.join(folder, "*.cdf"))):
        stem = os.path.basename(path)[:-len(".cdf")]
        recording, _, camera = stem.rpartition(".")
        key = names.get(canonical_name(recording))
        if key is None or camera not in CAMERA_NAMES:
            skipped.append(os.path.basename(path))
            continue
        key = (*key, CAMERA_NAMES.index(camera))
        if key in recordings:
            raise MetaPoseError(f"'{path}' and '{recordings[key][1]}' both map to S{subject} "
                                f"action {key[0]} subaction {key[1]} camera {camera}; remove one.")
        recordings[key] = (recording, path)
    return recordings, skipped


def _subject_key(mapping, subject, what, path):
    for key in (f"S{subject}", str(subject)):
        if key in mapping:
            return mapping[key]
    raise MetaPoseError(f"{what} '{path}' has no entry for subject S{subject} (looked for keys "
                        f"'S{subject}' and '{subject}'; it has {sorted(mapping)[:10]}).")


# VideoPose3D's names for camera parameters (its h36m_cameras_intrinsic_params): refused with
# the advice of the docstring, since its tangential coefficients are in the other order.
VIDEOPOSE3D_KEYS = ("focal_length", "center", "radial_distortion", "tangential_distortion",
                    "res_w", "res_h")
MAX_CORNER_DISTORTION = 0.5  # of a frame corner's distance from the principal point


def _numbers(params, key, count, where, default=None):
    """`params[key]` as `count` finite float64 numbers, else a message naming the key."""
    value = params.get(key, default)
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise MetaPoseError(f"{where}: '{key}' is {value!r}, not numbers.") from None
    if array.size != count:
        raise MetaPoseError(f"{where}: '{key}' has {array.size} values; it needs {count}"
                            + (" ([k1, k2, k3])" if key == "k" else " ([p1, p2], cameras.h5 "
                               "order)" if key == "p" else "") + ".")
    if not np.isfinite(array).all():
        raise MetaPoseError(f"{where}: '{key}' holds a value that is not finite "
                            f"({array.tolist()}).")
    return array


def check_camera(camera, width, height, where):
    """Raises MetaPoseError naming `where` unless the camera dict (R, T, fx, fy, cx, cy, k, p)
    is plausible for a width x height video (see the module docstring)."""
    rotation = camera["R"]
    error = float(np.abs(rotation @ rotation.T - np.eye(3)).max())
    if error > 1e-3 or abs(float(np.linalg.det(rotation)) - 1.0) > 1e-3:
        raise MetaPoseError(f"{where}: R is not a rotation (R R^T differs from the identity by "
                            f"{error:.3g}, det {np.linalg.det(rotation):.3g}); give the 3x3 "
                            "world-to-camera rotation, row by row.")
    if not (camera["fx"] > 0 and camera["fy"] > 0):
        raise MetaPoseError(f"{where}: the focal lengths fx {camera['fx']:g}, fy {camera['fy']:g} "
                            "must be positive (pixels).")
    if not (0 <= camera["cx"] <= width and 0 <= camera["cy"] <= height):
        raise MetaPoseError(f"{where}: the principal point ({camera['cx']:g}, {camera['cy']:g}) "
                            f"lies outside the {width}x{height} frame; cx, cy are pixels of the "
                            "camera's video.")
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5],
                        [width - 0.5, height - 0.5]])
    normalised = (corners - [camera["cx"], camera["cy"]]) / [camera["fx"], camera["fy"]]
    points = np.concatenate([normalised, np.ones((4, 1))], axis=1)
    distorted = project(points, 1.0, 1.0, 0.0, 0.0, camera["k"], camera["p"])
    moved = np.linalg.norm(distorted - normalised, axis=1) / np.linalg.norm(normalised, axis=1)
    if moved.max() > MAX_CORNER_DISTORTION:
        raise MetaPoseError(
            f"{where}: the distortion k {camera['k'].ravel().tolist()}, p "
            f"{camera['p'].ravel().tolist()} moves a corner of the frame by {moved.max():.0%} of "
            "its distance from the principal point, far more than a real lens: check that k is "
            "[k1, k2, k3] and p is [p1, p2] (cameras.h5 order), unscaled.")


def _camera_params(params, path, subject, name, camera_id):
    where = f"camera file '{path}', S{subject} camera {name}"
    if not isinstance(params, dict):
        raise MetaPoseError(f"{where} must be an object of parameters (R, T, fx, fy, cx, cy, k, "
                            f"p), found {type(params).__name__}.")
    foreign = [key for key in VIDEOPOSE3D_KEYS if key in params]
    if foreign:
        raise MetaPoseError(
            f"{where} uses VideoPose3D's names ({', '.join(foreign)}): give fx, fy (its "
            "focal_length), cx, cy (its center), k = its radial_distortion and p = its "
            "tangential_distortion in reverse order (VideoPose3D lists p2, p1; see `python "
            "tools/prepare_h36m.py --help`).")
    missing = [key for key in ("R", "T", "fx", "fy", "cx", "cy") if key not in params]
    if missing:
        raise MetaPoseError(f"{where} lacks {', '.join(repr(k) for k in missing)} (needed: R, T, "
                            "fx, fy, cx, cy; optional k, p, width, height).")
    camera = {"R": _numbers(params, "R", 9, where).reshape(3, 3),
              "T": _numbers(params, "T", 3, where).reshape(3, 1)}
    for key in ("fx", "fy", "cx", "cy"):
        camera[key] = float(_numbers(params, key, 1, where)[0])
    camera["k"] = _numbers(params, "k", 3, where, [0.0, 0.0, 0.0]).reshape(3, 1)
    camera["p"] = _numbers(params, "p", 2, where, [0.0, 0.0]).reshape(2, 1)
    size = []
    for key, default in zip(("width", "height"), H36M_FRAME_SIZES[camera_id]):
        value = float(_numbers(params, key, 1, where, default)[0])
        if not (1 <= value <= 100000 and value == int(value)):
            raise MetaPoseError(f"{where}: '{key}' is {value:g}; it must be a whole number of "
                                "pixels (the camera's video size).")
        size.append(int(value))
    check_camera(camera, size[0], size[1], where)
    return camera, size[0], size[1]


def _json_cameras(path):
    data = read_json_file(path, "camera file", "Pass the cameras.h5 of the H36M projects or a "
                                               "cameras.json (see `python tools/prepare_h36m.py "
                                               "--help`) with --cameras.")
    if not isinstance(data, dict):
        raise MetaPoseError(f"camera file '{path}' must hold an object {{subject: {{camera: "
                            "parameters}}}}.")
    return data


def _h5_cameras(path, subjects):
    """cameras.h5 (groups subject<s>/camera<c>) as the cameras.json structure."""
    try:
        import h5py
    except ImportError:
        raise MetaPoseError(f"reading '{path}' needs h5py (pip install h5py), or convert it to "
                            "the cameras.json of `python tools/prepare_h36m.py --help`.") from None
    data = {}
    try:
        with h5py.File(path, "r") as handle:
            for subject in subjects:
                for number in range(1, 5):
                    group_name = f"subject{subject}/camera{number}"
                    if group_name not in handle:
                        continue
                    group = handle[group_name]
                    camera_id = number - 1
                    if "Name" in group:
                        name = "".join(chr(int(code)) for code in np.ravel(group["Name"][()]))
                        if name.strip("\0 ") in CAMERA_NAMES:
                            camera_id = CAMERA_NAMES.index(name.strip("\0 "))
                    f, c = np.ravel(group["f"][()]), np.ravel(group["c"][()])
                    data.setdefault(f"S{subject}", {})[str(camera_id)] = {
                        "R": np.asarray(group["R"][()]).T, "T": np.ravel(group["T"][()]),
                        "fx": f[0], "fy": f[1], "cx": c[0], "cy": c[1],
                        "k": np.ravel(group["k"][()]), "p": np.ravel(group["p"][()])}
    except (OSError, KeyError, ValueError, IndexError) as error:
        raise MetaPoseError(f"cannot read the cameras from '{path}' ({type(error).__name__}: "
                            f"{error}); expected groups subject<s>/camera<c> with datasets R, T, "
                            "f, c, k, p (the cameras.h5 of the H36M projects).") from None
    return data


def load_cameras(path, subjects):
    """{(subject, camera_id): (camera dict, width, height)} from cameras.json or cameras.h5:
    camera dict R (3,3), T (3,1), fx, fy, cx, cy, k (3,1), p (2,1)."""
    require_file(path, "camera file", "Pass the cameras.h5 of the H36M projects or a "
                                      "cameras.json (see `python tools/prepare_h36m.py --help`) "
                                      "with --cameras.")
    is_h5 = path.lower().endswith((".h5", ".hdf5"))
    data = _h5_cameras(path, subjects) if is_h5 else _json_cameras(path)
    cameras = {}
    for subject in subjects:
        per_subject = _subject_key(data, subject, "camera file", path)
        if not isinstance(per_subject, dict):
            raise MetaPoseError(f"camera file '{path}': subject S{subject} must map camera names "
                                "to parameter objects.")
        for camera_id, name in enumerate(CAMERA_NAMES):
            params = per_subject.get(name, per_subject.get(str(camera_id)))
            if params is None:
                raise MetaPoseError(f"camera file '{path}': subject S{subject} has no camera "
                                    f"'{name}' (or '{camera_id}'); all four H36M cameras are "
                                    "needed.")
            cameras[(subject, camera_id)] = _camera_params(params, path, subject, name, camera_id)
    return cameras


def load_cpn(path):
    """positions_2d of the VideoPose3D detections file: {subject: {action: [4 x (T, 17, 2)]}}."""
    require_file(path, "CPN detection file", f"Pass --cpn with VideoPose3D's {CPN_FILE}, or "
                 "--no-cpn to copy the ground truth into joints_2d_cpn (then the labels have no "
                 "detector noise).")
    try:
        positions = np.load(path, allow_pickle=True)["positions_2d"].item()
    except Exception as error:  # zip, pickle and key errors alike
        raise MetaPoseError(f"cannot read 'positions_2d' from the CPN file '{path}' "
                            f"({type(error).__name__}: {error}).") from None
    if not isinstance(positions, dict):
        raise MetaPoseError(f"CPN file '{path}': positions_2d is a {type(positions).__name__}, "
                            "expected {subject: {action: [per-camera arrays]}}.")
    return positions


def cpn_for(cpn, cpn_path, subject, recording, camera_id):
    """(T', 17, 2) float64 CPN pixels of one recording and camera, or None when the file has
    no entry for it (a skip, not an error)."""
    per_subject = cpn.get(f"S{subject}", cpn.get(str(subject)))
    if not isinstance(per_subject, dict):
        return None
    for name in (recording, canonical_name(recording),
                 recording.replace("Photo", "TakingPhoto").replace("WalkDog", "WalkingDog")):
        if name in per_subject:
            break
    else:
        return None
    cameras = per_subject[name]
    if not isinstance(cameras, (list, tuple)) or camera_id >= len(cameras) or \
            cameras[camera_id] is None:
        return None
    try:
        keypoints = np.asarray(cameras[camera_id], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise MetaPoseError(f"CPN file '{cpn_path}': S{subject} '{name}' camera {camera_id} "
                            f"cannot be read ({error}).") from None
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
        raise MetaPoseError(f"CPN file '{cpn_path}': S{subject} '{name}' camera {camera_id} has "
                            f"shape {keypoints.shape}, expected (T, 17, 2).")
    return keypoints


# ----------------------------------------------------------------------------------------
# Building the labels
# ----------------------------------------------------------------------------------------

def recording_entries(subject, action, subaction, camera_id, video_id, joints_mm, cpn_px,
                      camera, width, height, frames, nposes):
    """Label dicts (docs/method.md §1.1) of the given frames of one recording.

    Args:
        joints_mm: (T, 17, 3) camera-frame joints, millimetres, and cpn_px (T, 17, 2) detected
            pixels or None (the ground truth is copied); rows are the 0-based frames `frames`.
        camera: dict R, T, fx, fy, cx, cy, k, p (shared by the entries); width, height: frame
            size in pixels; nposes: frames of the recording.
    """
    intrinsics = (camera["fx"], camera["fy"], camera["cx"], camera["cy"])
    gt_px = project(joints_mm, *intrinsics, k=camera["k"], p=camera["p"])
    det_px = gt_px if cpn_px is None else cpn_px
    centers, scales, boxes = box_from_root(joints_mm[:, 0], *intrinsics)
    gt_screen = pixels_to_screen(gt_px, width, height)
    det_screen = pixels_to_screen(det_px, width, height)
    joints_vis = np.ones((NUM_JOINTS, 3))
    entries = []
    for row, frame in enumerate(frames.tolist()):
        center, scale = centers[row], scales[row]
        entries.append({
            "image": image_name(subject, action, subaction, camera_id, frame + 1),
            "joints_3d": joints_mm[row] / 1000.0,
            "joints_2d_gt": gt_screen[row],
            "joints_2d_cpn": det_screen[row],
            "joints_2d_gt_crop": full_frame_to_crop(gt_px[row], center, scale),
            "joints_2d_cpn_crop": full_frame_to_crop(det_px[row], center, scale),
            "subject": int(subject),
            "action": int(action),
            "subaction": int(subaction),
            "camera_id": int(camera_id),
            "image_id": frame + 1,
            "video_id": int(video_id),
            "camera": camera,
            "center": center.copy(),
            "scale": scale.copy(),
            "box": boxes[row].copy(),
            "joints_vis": joints_vis,
            "source": "h36m",
            "nposes": int(nposes),
        })
    return entries


class _Preparation:
    """The state of one run: inputs, options, the work folder and the skip counts."""

    def __init__(self, raw, out, cameras_path, cpn_path, images_dir, crop_dir, subsample,
                 subjects, workers):
        self.raw, self.out, self.subsample, self.subjects = raw, out, subsample, subjects
        self.cameras_path, self.cpn_path = cameras_path, cpn_path
        self.images_dir, self.crop_dir, self.workers = images_dir, crop_dir, workers
        self.work = os.path.join(out, WORK_FOLDER)
        self.cameras = load_cameras(cameras_path, subjects)
        self.cpn = None if cpn_path is None else load_cpn(cpn_path)
        self.cpn_signature = None if cpn_path is None else _file_signature(cpn_path)
        self.skips = collections.defaultdict(lambda: collections.Counter())  # subject -> reason
        self.skipped_files = {}
        self.produced = collections.Counter()  # subject -> entries
        self.reused = 0
        self.computed = 0

    # -- one recording -----------------------------------------------------------------------

    def part_path(self, subject, action, subaction, camera_id):
        return os.path.join(self.work, f"S{subject}", f"act{action:02d}_sub{subaction}_"
                                                       f"cam{camera_id}.npz")

    def signature(self, cdf_path):
        """What a recording's result depends on: a part made from other inputs is redone."""
        return json.dumps({"version": PART_VERSION, "cdf": _file_signature(cdf_path),
                           "cpn": self.cpn_signature, "subsample": self.subsample,
                           "images": None if self.images_dir is None else
                           os.path.abspath(self.images_dir),
                           "crop": None if self.crop_dir is None else
                           os.path.abspath(self.crop_dir)}, sort_keys=True)

    def prepare_recording(self, subject, key, recording, cdf_path):
        """Writes (or reuses) the part file of one recording; returns its path."""
        action, subaction, camera_id = key
        path = self.part_path(subject, action, subaction, camera_id)
        signature = self.signature(cdf_path)
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as part:
                    if str(part["signature"]) == signature:
                        self.reused += 1
                        return path
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from other inputs: redone below
        joints_mm = read_pose_cdf(cdf_path)
        nposes = len(joints_mm)
        skips = collections.Counter()
        cpn_px = None
        if self.cpn is not None:
            cpn_px = cpn_for(self.cpn, self.cpn_path, subject, recording, camera_id)
            if cpn_px is None:
                skips[NO_CPN] += nposes
                joints_mm = joints_mm[:0]
            else:
                length = min(len(cpn_px), nposes)
                skips[CPN_SHORTER] += nposes - length
                joints_mm, cpn_px = joints_mm[:length], cpn_px[:length]
        frames = np.arange(0, len(joints_mm), self.subsample)
        if self.images_dir is not None and len(frames):
            present = np.array([os.path.isfile(os.path.join(
                self.images_dir, image_name(subject, action, subaction, camera_id, frame + 1)))
                for frame in frames.tolist()], dtype=bool)
            skips[FRAME_MISSING] += int((~present).sum())
            frames = frames[present]
        joints_mm = joints_mm[frames]
        cpn_px = None if cpn_px is None else cpn_px[frames]
        if self.crop_dir is not None and len(frames):
            self._crop(subject, key, joints_mm, frames)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_output(path) as handle:
            np.savez(handle, signature=np.array(signature), joints_mm=joints_mm,
                     cpn_px=np.zeros((0, NUM_JOINTS, 2)) if cpn_px is None else cpn_px,
                     has_cpn=np.array(cpn_px is not None), frames=frames,
                     nposes=np.array(nposes), skips=np.array(json.dumps(skips)))
        self.computed += 1
        return path

    def _crop(self, subject, key, joints_mm, frames):
        action, subaction, camera_id = key
        camera = self.cameras[(subject, camera_id)][0]
        centers, scales, _ = box_from_root(joints_mm[:, 0], camera["fx"], camera["fy"],
                                           camera["cx"], camera["cy"])
        names = [image_name(subject, action, subaction, camera_id, frame + 1)
                 for frame in frames.tolist()]
        counts, failures = cut_crops(CropJob(names, centers, scales, self.images_dir,
                                             self.crop_dir), self.workers, progress=False)
        if counts["missing frame"] or counts["unreadable frame"]:
            outcome, frame, message = failures[0]
            raise MetaPoseError(f"--crop: {outcome} '{frame}'{f' ({message})' if message else ''}"
                                f"; --crop needs every frame of the labels under --images "
                                f"'{self.images_dir}'.")

    # -- the splits --------------------------------------------------------------------------

    def recordings_of(self, subject):
        """[(key, recording name or None, cdf path or None)] of every expected recording."""
        folder = pose_folder(self.raw, subject)
        found, skipped = find_recordings(folder, subject)
        self.skipped_files[subject] = skipped
        expected = []
        for name, (action, subaction) in sorted(sequence_names(subject).items(),
                                                key=lambda item: item[1]):
            for camera_id in range(len(CAMERA_NAMES)):
                key = (action, subaction, camera_id)
                recording, path = found.get(key, (name, None))
                expected.append((key, recording, path))
        return expected

    def run_split(self, split_subjects):
        """Prepares every recording of these subjects; returns [(subject, key, part path)]."""
        parts = []
        for subject in split_subjects:
            for key, recording, path in self.recordings_of(subject):
                gap = KNOWN_GAPS.get((subject, key[0], key[1]))
                if gap is not None:
                    self.skips[subject][gap] += _frames_in(path)
                    continue
                if path is None:
                    self.skips[subject][NO_POSE_FILE] += 1
                    continue
                parts.append((subject, key, self.prepare_recording(subject, key, recording, path)))
        return parts

    def write_split(self, parts, path):
        """Writes one split's pickle from its part files; returns the number of entries."""
        video_id = 0
        with LabelPickleWriter(path) as writer:
            for subject, (action, subaction, camera_id), part_path in parts:
                with np.load(part_path, allow_pickle=False) as part:
                    frames = part["frames"]
                    for reason, count in json.loads(str(part["skips"])).items():
                        self.skips[subject][reason] += count
                    if len(frames):
                        camera, width, height = self.cameras[(subject, camera_id)]
                        entries = recording_entries(
                            subject, action, subaction, camera_id, video_id, part["joints_mm"],
                            part["cpn_px"] if bool(part["has_cpn"]) else None, camera, width,
                            height, frames, int(part["nposes"]))
                        writer.write_recording(entries)
                        self.produced[subject] += len(entries)
                video_id += 1
        return writer.count


def _frames_in(cdf_path):
    """Frames of a pose file (for the skip counts; 0 when there is none)."""
    return 0 if cdf_path is None else len(read_pose_cdf(cdf_path))


def _file_signature(path):
    info = os.stat(path)
    return [os.path.abspath(path), info.st_size, info.st_mtime_ns]


def prepare(raw, out, cameras_path, cpn_path, images_dir, crop_dir, subsample, subjects,
            workers=1):
    """Converts the release; returns {"train": count, "validation": count} of the splits made."""
    start = time.perf_counter()
    if not os.path.isdir(raw):
        raise MetaPoseError(f"raw H36M folder '{os.path.abspath(raw)}' does not exist (--raw).")
    missing = [subject for subject in subjects if pose_folder(raw, subject) is None]
    if missing:
        looked = " or ".join(os.path.join(f"S{missing[0]}", folder) for folder in POSE_FOLDERS)
        raise MetaPoseError(
            f"no pose folder for subject(s) {', '.join(f'S{s}' for s in missing)} under "
            f"'{os.path.abspath(raw)}' (looked for {looked}). --raw must be the folder holding "
            "S1, S5, ... of the release (or the toolbox's extracted/ folder); choose subjects "
            "with --subjects.")
    if crop_dir is not None and images_dir is None:
        raise MetaPoseError("--crop needs the extracted full frames: pass --images (default "
                            "RAW/images when it exists).")
    if crop_dir is not None and os.path.abspath(crop_dir) == os.path.abspath(images_dir):
        raise MetaPoseError(f"--crop would overwrite the full frames in '{images_dir}' with "
                            "crops; choose a --crop-dir other than --images.")
    state = _Preparation(raw, out, cameras_path, cpn_path, images_dir, crop_dir, subsample,
                         subjects, workers)
    os.makedirs(out, exist_ok=True)
    chosen_splits = [(split, [s for s in split_subjects if s in subjects], name)
                     for split, split_subjects, name in SPLIT_FILES]
    chosen_splits = [item for item in chosen_splits if item[1]]
    split_parts = {split: state.run_split(split_subjects)
                   for split, split_subjects, _ in chosen_splits}
    counts = {}
    for split, split_subjects, name in chosen_splits:
        path = os.path.join(out, name)
        counts[split] = state.write_split(split_parts[split], path)
        print(f"{split}: {counts[split]:,} entries from subjects "
              f"{', '.join(f'S{s}' for s in split_subjects)} -> {path} "
              f"({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    shutil.rmtree(state.work, ignore_errors=True)
    _report(state, counts, chosen_splits, time.perf_counter() - start)
    return counts


def _report(state, counts, chosen_splits, seconds):
    for subject, names in sorted(state.skipped_files.items()):
        if names:
            print(f"S{subject}: ignored {len(names)} file(s) that name no H36M sequence: "
                  f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    print("skipped (frames, or recordings where no pose file exists):")
    any_skip = False
    for subject in sorted(state.skips):
        for reason, count in sorted(state.skips[subject].items()):
            if count:
                unit = "recordings" if reason == NO_POSE_FILE else "frames"
                print(f"  S{subject}: {count:,} {unit}: {reason}")
                any_skip = True
    if not any_skip:
        print("  nothing")
    full = set(state.subjects) == set(ALL_SUBJECTS) and state.subsample == 1
    print(f"{'split':<11} {'subject':<8} {'frames':>10} {'expected':>10}")
    for split, split_subjects, _ in chosen_splits:
        for subject in split_subjects:
            print(f"{split:<11} {f'S{subject}':<8} {state.produced[subject]:>10,} {'':>10}")
        expected = f"{EXPECTED_COUNTS[split]:,}" if full else "-"
        print(f"{split:<11} {'all':<8} {counts[split]:>10,} {expected:>10}")
    expected = ", ".join(f"{split} {count:,}" for split, count in EXPECTED_COUNTS.items())
    if full:
        verdict = "matches" if counts == EXPECTED_COUNTS else "DIFFERS FROM (check the inputs)"
        print(f"expected for the full release with CPN keypoints: {expected} -> this build "
              f"{verdict} it")
    else:
        print(f"expected for the full release with CPN keypoints: {expected} (this build: "
              f"subsample {state.subsample}, subjects {sorted(state.subjects)})")
    frames = sum(counts.values())
    print(f"{state.computed} recordings prepared, {state.reused} reused from an earlier run; "
          f"{frames:,} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):,.0f} frames/s)")
    if state.crop_dir is not None:
        print(f"crops under {os.path.abspath(state.crop_dir)} (256x192)")


def _subjects(text):
    try:
        subjects = sorted({int(part.strip().lstrip("Ss")) for part in text.split(",") if part})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated subjects such as 1,5,9, got "
                                         f"{text!r}") from None
    unknown = [s for s in subjects if s not in ALL_SUBJECTS]
    if not subjects or unknown:
        raise argparse.ArgumentTypeError(f"subjects must be among {list(ALL_SUBJECTS)}, got "
                                         f"{text!r}")
    return subjects


def build_parser():
    parser = argparse.ArgumentParser(
        description="Convert the raw Human3.6M release into MetaPose label pickles (docs/method.md §1.1).",
        epilog="Input layouts, skipped gaps, resuming and the action-name mapping: see the "
               "docstring at the top of tools/prepare_h36m.py.")
    parser.add_argument("--raw", required=True, help="folder with S1, S5, ... of the release")
    parser.add_argument("--out", required=True, help="output folder for the pickles")
    parser.add_argument("--cameras", help="cameras.h5 or cameras.json (default RAW/cameras.json, "
                                          "else RAW/cameras.h5)")
    parser.add_argument("--cpn", help=f"VideoPose3D CPN detections (default RAW/{CPN_FILE})")
    parser.add_argument("--no-cpn", action="store_true",
                        help="no detections: copy the ground-truth 2D joints into joints_2d_cpn")
    parser.add_argument("--images", help="extracted full frames (default RAW/images if it "
                                         "exists); frames missing there are skipped")
    parser.add_argument("--crop", action="store_true",
                        help="also write the 256x192 person crops of the frames")
    parser.add_argument("--crop-dir", help="where --crop writes (default: images/ beside OUT)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="processes cutting crops (default: one per CPU)")
    parser.add_argument("--subsample", type=positive_int, default=1,
                        help="keep every N-th frame (default 1: all frames)")
    parser.add_argument("--subjects", type=_subjects, default=list(ALL_SUBJECTS),
                        help="comma-separated subjects (default 1,5,6,7,8,9,11)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_cpn and args.cpn:
        parser.error("--cpn and --no-cpn exclude each other")
    if args.crop_dir and not args.crop:
        parser.error("--crop-dir needs --crop")
    return args


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    raw = args.raw
    cpn = None if args.no_cpn else (args.cpn or os.path.join(raw, CPN_FILE))
    cameras = args.cameras
    if cameras is None:
        cameras = os.path.join(raw, "cameras.json")
        if not os.path.isfile(cameras) and os.path.isfile(os.path.join(raw, "cameras.h5")):
            cameras = os.path.join(raw, "cameras.h5")
    images = args.images
    if images is None and os.path.isdir(os.path.join(raw, "images")):
        images = os.path.join(raw, "images")
    crop_dir = None
    if args.crop:
        crop_dir = args.crop_dir or os.path.join(
            os.path.dirname(os.path.abspath(args.out)), "images")
        name_output_flag("--crop-dir", crop_dir)
    prepare(raw, args.out, cameras, cpn, images, crop_dir, args.subsample, args.subjects,
            args.workers)
    return 0


if __name__ == "__main__":
    run_cli(main)
