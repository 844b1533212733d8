"""Converts the raw Human3.6M release into the label pickles (and optional crops) of DESIGN 1.1.

    python tools/prepare_h36m.py --raw /data/h36m --out data [--crop] [--subsample 1]

Inputs (under --raw unless given explicitly):
    S1/MyPoseFeatures/D3_Positions_mono/Directions 1.54138969.cdf ...
        3D joints in each camera's coordinates, millimetres: CDF variable 'Pose' of shape
        (1, T, 96) = 32 joints x (x, y, z) per frame (the files of the official release).
    cameras.json (--cameras)
        {"S1": {"54138969": {"R": 3x3, "T": 3 numbers (camera centre, world mm),
                             "fx": .., "fy": .., "cx": .., "cy": .., "k": [k1, k2, k3],
                             "p": [p1, p2], "width": 1000, "height": 1002}, ...}, ...}
        Subjects may be written "S1" or "1"; cameras by their H36M name (54138969, 55011271,
        58860488, 60457274 -> camera_id 0..3) or by the index "0".."3". `k`, `p` (default zero)
        and `width`/`height` (default: the H36M video size of that camera) may be omitted.
        X_cam = R @ (X_world - T). From the `cameras.h5` that many H36M projects ship (groups
        subject<s>/camera<c>, c = 1..4, datasets R, T, f, c, k, p), with h5py:
            out = {}
            with h5py.File("cameras.h5", "r") as f:
                for s in (1, 5, 6, 7, 8, 9, 11):
                    for c in range(1, 5):
                        g = f[f"subject{s}/camera{c}"]
                        out.setdefault(f"S{s}", {})[str(c - 1)] = {
                            "R": g["R"][:].T.tolist(), "T": g["T"][:].ravel().tolist(),
                            "fx": float(g["f"][0, 0]), "fy": float(g["f"][1, 0]),
                            "cx": float(g["c"][0, 0]), "cy": float(g["c"][1, 0]),
                            "k": g["k"][:].ravel().tolist(), "p": g["p"][:].ravel().tolist()}
            json.dump(out, open("cameras.json", "w"))
        (that file stores R transposed, hence `.T`). Only the intrinsics and distortion enter
        the labels; R and T are copied into each entry's `camera`.
    data_2d_h36m_cpn_ft_h36m_dbb.npz (--cpn)
        VideoPose3D's CPN detections: np.load(path, allow_pickle=True)['positions_2d'].item()
        [subject 'S1'][action name, e.g. 'Directions 1'][camera index 0..3] -> (T', 17, 2)
        pixels. Longer detections are cut to the mocap length T. Only load a file you trust:
        this needs allow_pickle. --no-cpn copies the ground truth instead (not for real runs).
    images/<sequence>/<sequence>_000001.jpg (--images; needed with --crop only)
        full video frames; <sequence> = s_01_act_02_subact_01_ca_01, frame numbers 1-based.

Outputs: OUT/h36m_train.pkl (subjects 1, 5, 6, 7, 8) and OUT/h36m_validation.pkl (9, 11),
lists of dicts with the keys of DESIGN 1.1 (joints_3d in metres, 2D joints as normalised
screen coordinates and 192x256 crop pixels, the box from the root joint); with --crop also
OUT/images/<sequence>/<sequence>_<frame>.jpg 256x192 crops. 2D ground truth is the projection
of the 3D joints with the camera's distortion. With --subsample 1 and all subjects the full
release gives 1,559,752 training and 543,344 validation entries (printed for comparison).

Action names -> (action id, subaction): the two recordings of each action are numbered
differently per subject ('Directions 1' / 'Directions', 'Eating 2' / 'Eating', ...). Subaction
1 is "<Name> 1" and subaction 2 is "<Name>" except for the exceptions of SEQUENCE_EXCEPTIONS,
which follow the official H36M metadata. 'TakingPhoto' is read as 'Photo' and 'WalkingDog' as
'WalkDog' (S1's file names). Files whose name maps to no sequence (e.g. '_ALL') are skipped
and listed. Ids: 2 Directions, 3 Discussion, 4 Eating, 5 Greeting, 6 Phoning, 7 Posing,
8 Purchases, 9 Sitting, 10 SittingDown, 11 Smoking, 12 Photo, 13 Waiting, 14 Walking,
15 WalkDog, 16 WalkTogether.
"""

import argparse
import glob
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datasets.camera import (  # noqa: E402
    H36M_FRAME_SIZES, box_from_root, crop_from_full_frame, full_frame_to_crop,
    pixels_to_screen, project,
)
from datasets.synthetic import image_name, write_pickle  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.skeleton import (  # noqa: E402
    ALL_SUBJECTS, NUM_JOINTS, TRAIN_SUBJECTS, VALIDATION_SUBJECTS,
)

CAMERA_NAMES = ("54138969", "55011271", "58860488", "60457274")  # camera_id 0..3
H36M_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)  # of the 32 joints
EXPECTED_COUNTS = {"train": 1559752, "validation": 543344}  # all frames, all subjects
CPN_FILE = "data_2d_h36m_cpn_ft_h36m_dbb.npz"

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


def _subject_key(mapping, subject, what, path):
    for key in (f"S{subject}", str(subject)):
        if key in mapping:
            return mapping[key]
    raise MetaPoseError(f"{what} '{path}' has no entry for subject S{subject} (looked for keys "
                        f"'S{subject}' and '{subject}'; it has {sorted(mapping)[:10]}).")


def load_cameras(path, subjects):
    """{(subject, camera_id): camera dict} with R (3,3), T (3,1), fx, fy, cx, cy, k (3,1),
    p (2,1), width, height, read from the cameras.json described in the module docstring."""
    if not os.path.isfile(path):
        raise MetaPoseError(f"camera file '{path}' does not exist. Write the cameras.json "
                            "described in `python tools/prepare_h36m.py --help` (per subject and "
                            "camera: R, T, fx, fy, cx, cy, k, p) and pass it with --cameras.")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise MetaPoseError(f"camera file '{path}' is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise MetaPoseError(f"camera file '{path}' must hold an object {{subject: {{camera: "
                            "parameters}}}}.")
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


def _camera_params(params, path, subject, name, camera_id):
    where = f"camera file '{path}', S{subject} camera {name}"
    try:
        camera = {
            "R": np.asarray(params["R"], dtype=np.float64).reshape(3, 3),
            "T": np.asarray(params["T"], dtype=np.float64).reshape(3, 1),
            "fx": float(params["fx"]), "fy": float(params["fy"]),
            "cx": float(params["cx"]), "cy": float(params["cy"]),
            "k": np.asarray(params.get("k", [0.0, 0.0, 0.0]), dtype=np.float64).reshape(3, 1),
            "p": np.asarray(params.get("p", [0.0, 0.0]), dtype=np.float64).reshape(2, 1),
        }
    except KeyError as error:
        raise MetaPoseError(f"{where} lacks {error} (needed: R, T, fx, fy, cx, cy; optional k, "
                            "p, width, height).") from None
    except (TypeError, ValueError) as error:
        raise MetaPoseError(f"{where}: {error} (R is 3x3, T 3 numbers, k 3, p 2).") from None
    width, height = H36M_FRAME_SIZES[camera_id]
    return camera, int(params.get("width", width)), int(params.get("height", height))


def load_cpn(path):
    """positions_2d of the VideoPose3D detections file: {subject: {action: [4 x (T, 17, 2)]}}."""
    if not os.path.isfile(path):
        raise MetaPoseError(f"CPN detection file '{path}' does not exist. Pass --cpn with "
                            f"VideoPose3D's {CPN_FILE}, or --no-cpn to copy the ground truth "
                            "into joints_2d_cpn (then the labels have no detector noise).")
    try:
        positions = np.load(path, allow_pickle=True)["positions_2d"].item()
    except Exception as error:  # zip, pickle and key errors alike
        raise MetaPoseError(f"cannot read 'positions_2d' from the CPN file '{path}' "
                            f"({type(error).__name__}: {error}).") from None
    if not isinstance(positions, dict):
        raise MetaPoseError(f"CPN file '{path}': positions_2d is a {type(positions).__name__}, "
                            "expected {subject: {action: [per-camera arrays]}}.")
    return positions


def _cpn_for(cpn, cpn_path, subject, file_name, camera_id, length):
    per_subject = _subject_key(cpn, subject, "CPN file", cpn_path)
    names = [file_name, canonical_name(file_name),
             file_name.replace("Photo", "TakingPhoto").replace("WalkDog", "WalkingDog")]
    for name in names:
        if name in per_subject:
            break
    else:
        raise MetaPoseError(f"CPN file '{cpn_path}' has no action '{file_name}' for S{subject} "
                            f"(it has {sorted(per_subject)}).")
    try:
        keypoints = np.asarray(per_subject[name][camera_id], dtype=np.float64)
    except (IndexError, KeyError, TypeError, ValueError) as error:
        raise MetaPoseError(f"CPN file '{cpn_path}': S{subject} '{name}' camera {camera_id} "
                            f"cannot be read ({error}).") from None
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
        raise MetaPoseError(f"CPN file '{cpn_path}': S{subject} '{name}' camera {camera_id} has "
                            f"shape {keypoints.shape}, expected (T, 17, 2).")
    if len(keypoints) < length:
        print(f"warning: CPN file '{cpn_path}': S{subject} '{name}' camera {camera_id} has "
              f"{len(keypoints)} frames but the 3D poses have {length}; keeping the first "
              f"{len(keypoints)} frames of this recording.", flush=True)
    return keypoints[:length]


def find_recordings(raw, subject):
    """[(action, subaction, camera_id, recording name, cdf path)] of one subject, and the
    list of skipped file names."""
    folder = os.path.join(raw, f"S{subject}", "MyPoseFeatures", "D3_Positions_mono")
    if not os.path.isdir(folder):
        raise MetaPoseError(f"folder '{folder}' does not exist. --raw must be the folder holding "
                            f"S1, S5, ... of the H36M release, each with "
                            "MyPoseFeatures/D3_Positions_mono/*.cdf (or use --subjects).")
    names = sequence_names(subject)
    recordings, skipped, seen = [], [], {}
    for path in sorted(glob.glob(os.path.join(folder, "*.cdf"))):
        stem = os.path.basename(path)[:-len(".cdf")]
        recording, _, camera = stem.rpartition(".")
        key = names.get(canonical_name(recording))
        if key is None or camera not in CAMERA_NAMES:
            skipped.append(os.path.basename(path))
            continue
        camera_id = CAMERA_NAMES.index(camera)
        if (*key, camera_id) in seen:
            raise MetaPoseError(f"'{path}' and '{seen[(*key, camera_id)]}' both map to S{subject} "
                                f"action {key[0]} subaction {key[1]} camera {camera}; remove one.")
        seen[(*key, camera_id)] = path
        recordings.append((*key, camera_id, recording, path))
    if not recordings:
        raise MetaPoseError(f"folder '{folder}' holds no recognised '<Action>.<camera>.cdf' "
                            "file (e.g. 'Directions 1.54138969.cdf').")
    return sorted(recordings), skipped


# ----------------------------------------------------------------------------------------
# Building the labels
# ----------------------------------------------------------------------------------------

def recording_entries(subject, action, subaction, camera_id, video_id, joints_mm, cpn_px,
                      camera, width, height, subsample):
    """Label dicts (DESIGN 1.1) for every `subsample`-th frame of one recording.

    Args:
        joints_mm: (T, 17, 3) camera-frame joints, millimetres.
        cpn_px: (T, 17, 2) detected joints in pixels, or None to copy the ground truth.
        camera: dict R, T, fx, fy, cx, cy, k, p; width, height: frame size in pixels.
    """
    intrinsics = (camera["fx"], camera["fy"], camera["cx"], camera["cy"])
    frames = np.arange(0, len(joints_mm), subsample)
    joints = joints_mm[frames]
    gt_px = project(joints, *intrinsics, k=camera["k"], p=camera["p"])
    det_px = gt_px if cpn_px is None else cpn_px[frames]
    centers, scales, boxes = box_from_root(joints[:, 0], *intrinsics)
    gt_screen = pixels_to_screen(gt_px, width, height)
    det_screen = pixels_to_screen(det_px, width, height)
    entries = []
    for row, frame in enumerate(frames.tolist()):
        center, scale = centers[row], scales[row]
        entries.append({
            "image": image_name(subject, action, subaction, camera_id, frame + 1),
            "joints_3d": joints[row] / 1000.0,
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
            "camera": {key: (value.copy() if isinstance(value, np.ndarray) else value)
                       for key, value in camera.items()},
            "center": center.copy(),
            "scale": scale.copy(),
            "box": boxes[row].copy(),
            "joints_vis": np.ones((NUM_JOINTS, 3)),
            "source": "h36m",
            "nposes": int(len(joints_mm)),
        })
    return entries


def write_crops(entries, frames_dir, out_images):
    """Writes the 256x192 crop of every entry's full frame under `out_images`."""
    for entry in entries:
        source = os.path.join(frames_dir, entry["image"])
        frame = cv2.imread(source, cv2.IMREAD_COLOR) if os.path.isfile(source) else None
        if frame is None:
            raise MetaPoseError(f"frame '{source}' is missing or unreadable; --crop needs every "
                                f"frame of the labels under --images '{frames_dir}' "
                                "(extract them from the videos first, or drop --crop).")
        target = os.path.join(out_images, entry["image"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        crop = crop_from_full_frame(frame, entry["center"], entry["scale"])
        if not cv2.imwrite(target, crop, [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise MetaPoseError(f"cannot write '{target}'; check that --out is writable.")


def prepare(raw, out, cameras_path, cpn_path, images_dir, crop, subsample, subjects):
    """Converts the release; returns {"train": count, "validation": count}."""
    start = time.perf_counter()
    if not os.path.isdir(raw):
        raise MetaPoseError(f"raw H36M folder '{raw}' does not exist (--raw).")
    if crop and os.path.abspath(images_dir) == os.path.abspath(os.path.join(out, "images")):
        raise MetaPoseError(f"--crop would overwrite the full frames in '{images_dir}' with "
                            "crops; choose an --out whose images folder differs from --images.")
    cameras = load_cameras(cameras_path, subjects)
    cpn = None if cpn_path is None else load_cpn(cpn_path)
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split, split_subjects, file_name in (
            ("train", TRAIN_SUBJECTS, "h36m_train.pkl"),
            ("validation", VALIDATION_SUBJECTS, "h36m_validation.pkl")):
        chosen = [subject for subject in split_subjects if subject in subjects]
        if not chosen:
            continue
        entries, video_id = [], 0
        for subject in chosen:
            recordings, skipped = find_recordings(raw, subject)
            if skipped:
                print(f"S{subject}: skipped {len(skipped)} file(s) that name no H36M sequence: "
                      f"{', '.join(skipped[:8])}{' ...' if len(skipped) > 8 else ''}")
            for action, subaction, camera_id, recording, path in recordings:
                joints_mm = read_pose_cdf(path)
                cpn_px = None
                if cpn is not None:
                    cpn_px = _cpn_for(cpn, cpn_path, subject, recording, camera_id,
                                      len(joints_mm))
                    joints_mm = joints_mm[:len(cpn_px)]
                camera, width, height = cameras[(subject, camera_id)]
                new = recording_entries(subject, action, subaction, camera_id, video_id,
                                        joints_mm, cpn_px, camera, width, height, subsample)
                if crop:
                    write_crops(new, images_dir, os.path.join(out, "images"))
                entries.extend(new)
                video_id += 1
        path = os.path.join(out, file_name)
        write_pickle(entries, path)
        counts[split] = len(entries)
        print(f"{split}: {len(entries):,} entries from subjects "
              f"{', '.join(f'S{s}' for s in chosen)} -> {path} "
              f"({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    _report(counts, subjects, subsample, crop, images_dir, out, start)
    return counts


def _report(counts, subjects, subsample, crop, images_dir, out, start):
    full = set(subjects) == set(ALL_SUBJECTS)
    expected = ", ".join(f"{split} {count:,}" for split, count in EXPECTED_COUNTS.items())
    if full and subsample == 1:
        verdict = "matches" if counts == EXPECTED_COUNTS else "DIFFERS FROM (check the inputs)"
        print(f"expected for the full release: {expected} -> this build {verdict} it")
    else:
        print(f"expected for the full release with --subsample 1 and all subjects: {expected} "
              f"(this build: subsample {subsample}, subjects {sorted(subjects)})")
    if crop:
        print(f"crops written under {os.path.join(out, 'images')} (256x192)")
    else:
        print(f"images are referenced relative to an images folder (e.g. {images_dir}); "
              "point data.root / data.image_dir at the extracted frames or crops")
    print(f"done in {time.perf_counter() - start:.1f} s")


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert the raw Human3.6M release into MetaPose label pickles (DESIGN 1.1).",
        epilog="Input formats and the action-name mapping: see the docstring at the top of "
               "tools/prepare_h36m.py.")
    parser.add_argument("--raw", required=True, help="folder with S1, S5, ... of the release")
    parser.add_argument("--out", required=True, help="output folder for the pickles (and crops)")
    parser.add_argument("--cameras", help="cameras.json (default RAW/cameras.json)")
    parser.add_argument("--cpn", help=f"VideoPose3D CPN detections (default RAW/{CPN_FILE})")
    parser.add_argument("--no-cpn", action="store_true",
                        help="no detections: copy the ground-truth 2D joints into joints_2d_cpn")
    parser.add_argument("--images", help="extracted full frames (default RAW/images)")
    parser.add_argument("--crop", action="store_true",
                        help="also write 256x192 person crops of the frames to OUT/images")
    parser.add_argument("--subsample", type=positive_int, default=1,
                        help="keep every N-th frame (default 1: all frames)")
    parser.add_argument("--subjects", type=_subjects, default=list(ALL_SUBJECTS),
                        help="comma-separated subjects (default 1,5,6,7,8,9,11)")
    args = parser.parse_args(argv)
    if args.no_cpn and args.cpn:
        parser.error("--cpn and --no-cpn exclude each other")
    return args


def main(argv=None):
    args = parse_args(argv)
    cpn = None if args.no_cpn else (args.cpn or os.path.join(args.raw, CPN_FILE))
    prepare(args.raw, args.out, args.cameras or os.path.join(args.raw, "cameras.json"), cpn,
            args.images or os.path.join(args.raw, "images"), args.crop, args.subsample,
            args.subjects)
    return 0


if __name__ == "__main__":
    run_cli(main)
