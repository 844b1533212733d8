"""MPI-INF-3DHP label files in Context-Aware PoseFormer's layout (docs/method.md §6), read safely as cached
columns, and written atomically (by tools/prepare_3dhp.py and the synthetic generator).

A label file is `np.savez_compressed(file, data=layout)` of a dict (an object array, so reading it
needs a pickle: only the restricted unpickler of datasets/safe_pickle.py is used):

    training  {"S1 Seq1": [{"0": camera, "1": camera, ...}, fps], ...}
    test      {"TS1": {"data_2d", "data_2d_crop", "data_3d", "valid"}, ...}

where a camera (and a test sequence) holds, for its T frames (image numbers 1..T):

    data_2d       (T, 17, 2) pixels of the w x h frame, as CA-PF's preparation writes them (its
                  loader normalises them), or normalised screen coordinates
                  u = x / w * 2 - 1, v = y / w * 2 - h / w (this repository's files); the unit
                  is detected per file (PIXEL_MEDIAN) and logged, and pixels are normalised
                  with each video's frame size (TRAIN_FRAME_SIZE, TEST_FRAME_SIZES)
    data_2d_crop  (T, 17, 2) the same joints in pixels of the 192 x 256 person crop
    data_3d       (T, 17, 3) `univ_annot3` camera coordinates, millimetres (metres are accepted)
    valid         (T,) 1 = the frame is evaluated (test files only; training frames all count)
    center, scale (T, 2) optional (written by this repository, ignored by CA-PF's code): the
                  person box that cut the crop, needed to crop full frames on the fly

Joint arrays use the 17-joint 3DHP order of `MPI_JOINT_NAMES`; the columns returned by
`load_3dhp_labels` are in the H36M order of utils/skeleton.py (`MPI_TO_H36M`) and metres, like
the H36M columns of datasets/labels.py, so the base class of every dataset
(datasets/pose_frames.py) samples them.
"""

import logging
import os
import re
import zipfile

import numpy as np

from datasets.labels import cached_columns
from datasets.safe_pickle import unpickle_stream_safely
from utils.atomic_files import atomic_write
from utils.errors import MetaPoseError
from utils.input_files import require_file
from utils.skeleton import FIRST_ACTION_ID, NUM_JOINTS

TRAIN_FILE = "data_train_3dhp.npz"
TEST_FILE = "data_test_3dhp.npz"

# The 17 joints of the 3DHP evaluation, in its order, and their rows among the 28 joints of the
# training annotations (annot2 / annot3 / univ_annot3).
MPI_JOINT_NAMES = (
    "head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "pelvis", "spine", "head",
)
JOINTS_28_TO_17 = (7, 5, 14, 15, 16, 9, 10, 11, 23, 24, 25, 18, 19, 20, 4, 3, 6)
ROOT = 14  # pelvis, in the 17-joint 3DHP order
# H36M joint k is 3DHP joint MPI_TO_H36M[k] (3DHP neck ~ H36M thorax, 3DHP head ~ H36M nose,
# 3DHP head_top ~ H36M head); H36M_TO_MPI is the inverse permutation.
MPI_TO_H36M = (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4)
H36M_TO_MPI = tuple(int(i) for i in np.argsort(MPI_TO_H36M))

VNECT_CAMERAS = (0, 1, 2, 4, 5, 6, 7, 8)  # the training cameras everyone uses (of 0..13)
# (subject, sequence) -> (valid frames F, fps): only the first F frames of each annotation are
# valid. Source: mpii_get_sequence_info.m of the MPI-INF-3DHP release's util scripts.
SEQUENCE_INFO = {
    (1, 1): (6416, 25), (1, 2): (12430, 50), (2, 1): (6502, 25), (2, 2): (6081, 25),
    (3, 1): (12488, 50), (3, 2): (12283, 50), (4, 1): (6171, 25), (4, 2): (6675, 25),
    (5, 1): (12820, 50), (5, 2): (12312, 50), (6, 1): (6188, 25), (6, 2): (6145, 25),
    (7, 1): (6239, 25), (7, 2): (6320, 25), (8, 1): (6468, 25), (8, 2): (6054, 25),
}
TRAIN_FRAME_SIZE = (2048, 2048)  # (width, height) of every training video
TEST_SEQUENCES = ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")
TEST_FRAME_SIZES = {"TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048),
                    "TS4": (2048, 2048), "TS5": (1920, 1080), "TS6": (1920, 1080)}
# What CA-PF's preparation of the full release gives (docs/method.md §6).
EXPECTED_TRAIN_SAMPLES = 1052736  # every valid frame of the 8 cameras: 131,592 x 8
EXPECTED_VALID_TEST_FRAMES = {"TS1": 603, "TS2": 540, "TS3": 505, "TS4": 553, "TS5": 276,
                              "TS6": 452}
# 3DHP has no H36M action labels; samples carry this valid id, which the `joint` text mode
# ignores (the configuration refuses `joint_action` for this dataset).
PLACEHOLDER_ACTION = FIRST_ACTION_ID

# data_2d whose median |value| over the valid frames exceeds this holds pixels (normalised screen
# coordinates lie within about [-1.2, 1.2]; a person's joints in a 1920 x 1080 or 2048 x 2048
# frame have a median in the hundreds).
PIXEL_MEDIAN = 3.0

logger = logging.getLogger(__name__)

_TRAIN_NAME = re.compile(r"^S(\d+) Seq(\d+)$")
_TEST_NAME = re.compile(r"^TS(\d+)$")
_JOINT_KEYS = {"data_2d": 2, "data_2d_crop": 2, "data_3d": 3}
_BOX_KEYS = ("center", "scale")
_HINT = ("Re-create it with tools/prepare_3dhp.py (real MPI-INF-3DHP) or tools/make_synthetic.py "
         "--dataset mpi_inf_3dhp (synthetic data).")

# Every column load_3dhp_labels returns (N rows, valid frames and invalid ones):
#   image              |S   (N,)      relative image path (`train_image_name` / `test_image_name`)
#   joints_3d          f32  (N,17,3)  camera frame, metres, H36M order
#   joints_2d_gt       f32  (N,17,2)  normalised screen coordinates, H36M order
#   joints_2d_gt_crop  f32  (N,17,2)  192x256 crop pixels, H36M order
#   center, scale      f32  (N,2)     person box (pixels; size / 200), NaN when the file has none
#   sequence           |S   (N,)      "S1 Seq1" ... or "TS1" ...
#   subject            i32  (N,)      training subject 1..8; 0 for test sequences
#   camera             i32  (N,)      camera id 0..13; -1 for test sequences
#   frame              i32  (N,)      1-based image number within its video / sequence
#   valid              bool (N,)      evaluated frame (always true in training files)
COLUMNS = ("image", "joints_3d", "joints_2d_gt", "joints_2d_gt_crop", "center", "scale",
           "sequence", "subject", "camera", "frame", "valid")


def train_sequence_name(subject, sequence):
    """'S1 Seq1' (the key of a training sequence)."""
    return f"S{int(subject)} Seq{int(sequence)}"


def parse_sequence_name(name):
    """('train', subject, sequence) for 'S1 Seq2', ('test', n, 0) for 'TS3', None otherwise."""
    match = _TRAIN_NAME.match(name)
    if match:
        return "train", int(match.group(1)), int(match.group(2))
    match = _TEST_NAME.match(name)
    if match:
        return "test", int(match.group(1)), 0
    return None


def train_image_name(subject, sequence, camera, frame):
    """'s_01_seq_01_ca_00/s_01_seq_01_ca_00_000001.jpg': camera ids as in video_<c>.avi, frames
    1-based."""
    folder = f"s_{int(subject):02d}_seq_{int(sequence):02d}_ca_{int(camera):02d}"
    return f"{folder}/{folder}_{int(frame):06d}.jpg"


def test_image_name(sequence_name, frame):
    """'TS1/TS1_000001.jpg' (frames 1-based, as img_000001.jpg of the release)."""
    return f"{sequence_name}/{sequence_name}_{int(frame):06d}.jpg"


def sequence_sort_key(name):
    """Orders 'S2 Seq1' before 'S10 Seq1' and 'TS2' before 'TS10' (numbers, not text)."""
    parsed = parse_sequence_name(name)
    return (0 if parsed[0] == "train" else 1, parsed[1], parsed[2]) if parsed else (2, 0, 0)


# ----------------------------------------------------------------------------------------------
# Writing


def write_label_file(path, layout):
    """`np.savez_compressed(path, data=layout)` written atomically (temporary file, fsync,
    rename), so an interrupted run never leaves a truncated label file."""
    atomic_write(path, lambda handle: np.savez_compressed(handle, data=layout))


# ----------------------------------------------------------------------------------------------
# Reading


def read_label_file(path):
    """The `data` dict of a CA-PF label file, unpickled with the restricted unpickler.

    Raises:
        MetaPoseError naming the file when it is missing, not an npz archive, has no 'data'
        entry, is damaged, or its pickle names anything but containers, numbers, strings and
        numpy arrays (then nothing in it runs).
    """
    require_file(path, "label file", f"Check data.root and data.train_file / data.val_file "
                 f"({TRAIN_FILE} and {TEST_FILE} by default for MPI-INF-3DHP). {_HINT}")
    try:
        with zipfile.ZipFile(path) as archive:
            if "data.npy" not in archive.namelist():
                raise MetaPoseError(
                    f"label file '{path}' has no 'data' entry (it holds "
                    f"{sorted(n[:-4] for n in archive.namelist())[:8]}); an MPI-INF-3DHP label "
                    f"file is np.savez_compressed(file, data=dict). {_HINT}")
            with archive.open("data.npy") as handle:
                data = _read_object_npy(handle, path)
    except MetaPoseError:
        raise
    except zipfile.BadZipFile:
        raise MetaPoseError(f"label file '{path}' is not an npz (zip) archive, or it is "
                            f"truncated. {_HINT}") from None
    except OSError as error:
        raise MetaPoseError(f"label file '{path}' cannot be read ({error}).") from None
    except Exception as error:  # noqa: BLE001 (zip, npy header and pickle damage alike)
        raise MetaPoseError(f"label file '{path}' is damaged ({type(error).__name__}: "
                            f"{error}). {_HINT}") from None
    if not isinstance(data, dict):
        raise MetaPoseError(f"label file '{path}': 'data' holds a {type(data).__name__}, expected "
                            f"a dict of sequences (README, MPI-INF-3DHP). {_HINT}")
    return data


def _read_object_npy(handle, path):
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        _, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise MetaPoseError(f"label file '{path}': 'data' uses .npy format version {version}, "
                            f"which a label file never needs. {_HINT}")
    if not dtype.hasobject:
        raise MetaPoseError(f"label file '{path}': 'data' is a plain {dtype} array, expected the "
                            f"dict of sequences (README, MPI-INF-3DHP). {_HINT}")
    array = unpickle_stream_safely(handle, path, _HINT)
    if not isinstance(array, np.ndarray) or array.shape != ():
        raise MetaPoseError(f"label file '{path}': 'data' is not a single dict (found "
                            f"{type(array).__name__} of shape {getattr(array, 'shape', '?')}). "
                            f"{_HINT}")
    return array[()]


# ----------------------------------------------------------------------------------------------
# Validation and conversion to columns


class _Unit:
    """One video's frames in the file: a training camera or a test sequence."""

    def __init__(self, sequence, camera, arrays, valid):
        self.sequence, self.camera, self.arrays, self.valid = sequence, camera, arrays, valid


def _where(source, sequence, camera):
    camera_text = f" camera '{camera}'" if camera is not None else ""
    return f"label file '{source}': '{sequence}'{camera_text}"


def _joint_arrays(entry, source, sequence, camera):
    """The joint (and optional box) arrays of one unit, float32 (the dtype of the columns; a
    value beyond float32 becomes Inf and is reported), checked for shape and length; data_2d
    stays float64 until it is normalised (pixels then give the same float32 values as the
    normalised file)."""
    where = _where(source, sequence, camera)
    if not isinstance(entry, dict):
        raise MetaPoseError(f"{where} is a {type(entry).__name__}, expected a dict with "
                            f"{', '.join(_JOINT_KEYS)}. {_HINT}")
    arrays = {}
    for key, width in _JOINT_KEYS.items():
        if key not in entry:
            raise MetaPoseError(f"{where} lacks '{key}' (it has {sorted(entry)}). {_HINT}")
        try:
            with np.errstate(over="ignore"):
                array = np.asarray(entry[key],
                                   dtype=np.float64 if key == "data_2d" else np.float32)
        except (TypeError, ValueError):
            raise MetaPoseError(f"{where} key '{key}' is not numeric. {_HINT}") from None
        if array.ndim != 3 or array.shape[1:] != (NUM_JOINTS, width):
            raise MetaPoseError(f"{where} key '{key}' has shape {array.shape}, expected "
                                f"(T, {NUM_JOINTS}, {width}) (the 17 joints of the 3DHP "
                                f"evaluation). {_HINT}")
        arrays[key] = array
    lengths = {key: len(array) for key, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise MetaPoseError(f"{where} has arrays of different lengths {lengths}. {_HINT}")
    length = lengths["data_2d"]
    if length == 0:
        raise MetaPoseError(f"{where} has no frames. {_HINT}")
    if all(key in entry for key in _BOX_KEYS):
        for key in _BOX_KEYS:
            array = np.asarray(entry[key], dtype=np.float32)
            if array.shape != (length, 2):
                raise MetaPoseError(f"{where} key '{key}' has shape {array.shape}, expected "
                                    f"({length}, 2). {_HINT}")
            arrays[key] = array
    return arrays


def _valid_flags(entry, length, source, sequence):
    where = _where(source, sequence, None)
    if "valid" not in entry:
        raise MetaPoseError(f"{where} lacks 'valid' (test sequences flag their evaluated "
                            f"frames). {_HINT}")
    flags = np.asarray(entry["valid"])
    if flags.size != length or flags.dtype.kind not in "biuf":
        raise MetaPoseError(f"{where} key 'valid' has {flags.size} {flags.dtype} values, "
                            f"expected {length} numbers 0/1 (one per frame). {_HINT}")
    flags = flags.reshape(-1)
    if not np.isin(flags, (0, 1)).all():
        raise MetaPoseError(f"{where} key 'valid' holds values other than 0 and 1 "
                            f"({np.unique(flags)[:5].tolist()}). {_HINT}")
    return flags.astype(bool)


def _units(data, source):
    """Every unit of the file, sequences and cameras in numeric order."""
    units = []
    for sequence in sorted(data, key=lambda key: sequence_sort_key(str(key))):
        value = data[sequence]
        parsed = parse_sequence_name(sequence) if isinstance(sequence, str) else None
        if parsed is None:
            raise MetaPoseError(f"label file '{source}': sequence key {sequence!r} is neither a "
                                f"training sequence 'S<subject> Seq<n>' nor a test sequence "
                                f"'TS<n>'. {_HINT}")
        if parsed[0] == "test":
            arrays = _joint_arrays(value, source, sequence, None)
            valid = _valid_flags(value, len(arrays["data_2d"]), source, sequence)
            units.append(_Unit(sequence, None, arrays, valid))
            continue
        if not isinstance(value, (list, tuple)) or len(value) != 2 or \
                not isinstance(value[0], dict):
            raise MetaPoseError(f"label file '{source}': training sequence '{sequence}' must be "
                                f"[{{camera: arrays}}, fps], found {type(value).__name__}. "
                                f"{_HINT}")
        cameras, fps = value
        if not isinstance(fps, (int, float, np.number)) or not fps > 0:
            raise MetaPoseError(f"label file '{source}': training sequence '{sequence}' has fps "
                                f"{fps!r}, expected a positive number. {_HINT}")
        for camera in sorted(cameras, key=lambda key: int(key) if str(key).isdigit() else -1):
            if not str(camera).isdigit():
                raise MetaPoseError(f"label file '{source}': '{sequence}' camera key "
                                    f"{camera!r} is not a camera number. {_HINT}")
            arrays = _joint_arrays(cameras[camera], source, sequence, camera)
            units.append(_Unit(sequence, int(camera), arrays,
                               np.ones(len(arrays["data_2d"]), dtype=bool)))
    if not units:
        raise MetaPoseError(f"label file '{source}' holds no sequences. {_HINT}")
    return units


def frame_size_of(unit):
    """(width, height) of the video of a unit: 2048 x 2048 for training cameras, the test
    sequence's own (TS5, TS6: 1920 x 1080)."""
    if unit.camera is not None:
        return TRAIN_FRAME_SIZE
    return TEST_FRAME_SIZES.get(unit.sequence)


def _median_magnitude(unit):
    values = np.abs(unit.arrays["data_2d"][unit.valid])
    return float(np.median(values)) if values.size else 0.0


def _normalise_pixels(units, source):
    """Detects the unit of data_2d for the whole file and turns pixels into normalised screen
    coordinates in place (float64), unit by unit with its frame size. Returns "pixels" or
    "normalised"; a file that mixes the two is refused."""
    medians = [_median_magnitude(unit) for unit in units]
    values = np.concatenate([np.abs(u.arrays["data_2d"][u.valid]).reshape(-1) for u in units])
    overall = float(np.median(values)) if values.size else 0.0
    pixels = overall > PIXEL_MEDIAN
    for unit, median in zip(units, medians):
        if unit.valid.any() and (median > PIXEL_MEDIAN) != pixels:
            found, rest = ("pixels", "normalised screen coordinates") if not pixels else \
                ("normalised screen coordinates", "pixels")
            raise MetaPoseError(
                f"{_where(source, unit.sequence, unit.camera)} key 'data_2d' holds {found} "
                f"(median |value| {median:.3g}) while the rest of the file holds {rest}; one "
                f"label file uses one unit. {_HINT}")
    if pixels:
        for unit in units:
            size = frame_size_of(unit)
            if size is None:
                raise MetaPoseError(
                    f"{_where(source, unit.sequence, None)}: 'data_2d' holds pixels, but the "
                    f"frame size of '{unit.sequence}' is not known (the release's test "
                    f"sequences are {', '.join(TEST_SEQUENCES)}), so they cannot be normalised. "
                    f"{_HINT}")
            width, height = size
            points = unit.arrays["data_2d"]
            unit.arrays["data_2d"] = points / width * 2.0 - np.array([1.0, height / width])
    logger.info("label file '%s': 'data_2d' holds %s (median |value| %.3g)%s", source,
                "pixels" if pixels else "normalised screen coordinates", overall,
                ", as Context-Aware PoseFormer's preparation writes them; normalised with each "
                "video's frame size (training 2048x2048; TS1-TS4 2048x2048, TS5-TS6 1920x1080)"
                if pixels else "")
    return "pixels" if pixels else "normalised"


def _check_values(units, source):
    """Finite joints in valid frames, data_2d normalised (pixels are converted), and the unit of
    data_3d (returned as the factor to metres)."""
    depths = []
    for unit in units:
        for key, array in unit.arrays.items():
            rows = array[unit.valid]
            if not np.isfinite(rows).all():
                frame = int(np.flatnonzero(unit.valid)[np.argmax(
                    ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1))]) + 1
                raise MetaPoseError(f"{_where(source, unit.sequence, unit.camera)} key '{key}' "
                                    f"holds NaN or Inf in valid frame {frame}. {_HINT}")
        depths.append(unit.arrays["data_3d"][unit.valid, ROOT, 2])
    depths = np.concatenate(depths)
    if depths.size == 0:
        raise MetaPoseError(f"label file '{source}' has no valid frame. {_HINT}")
    _normalise_pixels(units, source)
    for unit in units:
        unit.arrays["data_2d"] = unit.arrays["data_2d"].astype(np.float32)
    depth = float(np.median(depths))
    if 100.0 < depth < 100000.0:
        return 0.001  # millimetres, as univ_annot3
    if 0.1 < depth < 30.0:
        return 1.0  # metres
    raise MetaPoseError(f"label file '{source}': 'data_3d' has a median pelvis depth of {depth:g}, "
                        "which is neither millimetres (camera coordinates of univ_annot3) nor "
                        f"metres; check that it holds camera-frame joints. {_HINT}")


def label_columns(data, source="<labels>"):
    """Validates the `data` dict of a label file and converts it into COLUMNS.

    Raises:
        MetaPoseError naming the file, sequence, camera and key of the first problem.
    """
    units = _units(data, source)
    to_metres = _check_values(units, source)
    order = list(MPI_TO_H36M)
    columns = {
        "joints_3d": np.concatenate([u.arrays["data_3d"][:, order] for u in units])
        * np.float32(to_metres),
        "joints_2d_gt": np.concatenate([u.arrays["data_2d"][:, order] for u in units]),
        "joints_2d_gt_crop": np.concatenate([u.arrays["data_2d_crop"][:, order] for u in units]),
    }
    for key in _BOX_KEYS:
        columns[key] = np.concatenate([
            u.arrays[key] if key in u.arrays else np.full((len(u.valid), 2), np.nan, np.float32)
            for u in units])
    images, sequences, subjects, cameras, frames = [], [], [], [], []
    for unit in units:
        count = len(unit.valid)
        numbers = np.arange(1, count + 1)
        kind, subject, sequence = parse_sequence_name(unit.sequence)
        if kind == "train":
            images += [train_image_name(subject, sequence, unit.camera, f) for f in numbers]
        else:
            images += [test_image_name(unit.sequence, f) for f in numbers]
        sequences.append(np.full(count, unit.sequence.encode("ascii"), dtype="S8"))
        subjects.append(np.full(count, subject if kind == "train" else 0, dtype=np.int32))
        cameras.append(np.full(count, -1 if unit.camera is None else unit.camera, dtype=np.int32))
        frames.append(numbers.astype(np.int32))
    columns.update({
        "image": np.array([name.encode("ascii") for name in images], dtype=np.bytes_),
        "sequence": np.concatenate(sequences), "subject": np.concatenate(subjects),
        "camera": np.concatenate(cameras), "frame": np.concatenate(frames),
        "valid": np.concatenate([u.valid for u in units]),
    })
    return columns


def load_3dhp_labels(path, cache_dir=None):
    """The frames of a CA-PF 3DHP label file as COLUMNS, converted once and cached as
    memory-mapped .npy files (datasets.labels.cached_columns).

    Raises:
        MetaPoseError naming the file (missing, damaged, unsafe) or the first bad entry.
    """
    if not os.path.isfile(path):
        read_label_file(path)  # raises the message for a missing file
    return cached_columns(path, lambda source: label_columns(read_label_file(source), source),
                          COLUMNS, cache_dir)
