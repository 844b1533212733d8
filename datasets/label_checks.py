"""Per-frame label dicts (docs/method.md §1.1) -> validated numpy columns, one batch of entries at a time.

Labels that are wrong without looking wrong are refused here, with the entry index, the key and
the likely cause: numbers of the wrong kind (strings, booleans, complex numbers, objects), wrong
shapes, NaN/Inf, unknown subjects or actions, millimetres where metres belong (bone lengths),
pixels where normalised screen coordinates belong (value ranges), normalised values where crop
pixels belong (joint spread), image paths that leave the image folder, and the plain
H36M-Toolbox output (joints_2d in pixels, millimetres, no CPN keys).
"""

import numpy as np

from datasets.images import shown_image_path, unsafe_image_path
from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, ALL_SUBJECTS, NUM_JOINTS, PARENTS

# Every column `load_labels` returns: name -> (dtype, trailing shape); N rows each.
#   image        |S<width>  (N,)       relative image path, UTF-8 bytes (fixed width, no objects)
#   joints_3d    float32    (N,17,3)   camera frame, metres
#   joints_2d_*  float32    (N,17,2)   normalised screen coordinates (gt, cpn)
#   joints_2d_*_crop float32 (N,17,2)  192x256 crop pixels (gt, cpn)
#   subject, action, subaction, camera_id, image_id  int32 (N,)
#   center, scale float32   (N,2)      person box centre (px) and size / 200
#   fx, fy, cx, cy float32  (N,)       pinhole intrinsics, pixels
JOINT_COLUMNS = {
    "joints_3d": (NUM_JOINTS, 3),
    "joints_2d_gt": (NUM_JOINTS, 2),
    "joints_2d_cpn": (NUM_JOINTS, 2),
    "joints_2d_gt_crop": (NUM_JOINTS, 2),
    "joints_2d_cpn_crop": (NUM_JOINTS, 2),
}
INT_COLUMNS = ("subject", "action", "subaction", "camera_id", "image_id")
BOX_COLUMNS = ("center", "scale")
CAMERA_COLUMNS = ("fx", "fy", "cx", "cy")
COLUMN_SPECS = {"image": (np.dtype("S1"), ())}
COLUMN_SPECS.update({name: (np.dtype(np.float32), shape) for name, shape in JOINT_COLUMNS.items()})
COLUMN_SPECS.update({name: (np.dtype(np.int32), ()) for name in INT_COLUMNS})
COLUMN_SPECS.update({name: (np.dtype(np.float32), (2,)) for name in BOX_COLUMNS})
COLUMN_SPECS.update({name: (np.dtype(np.float32), ()) for name in CAMERA_COLUMNS})
COLUMNS = tuple(COLUMN_SPECS)
REQUIRED_KEYS = frozenset(("image", "camera") + tuple(JOINT_COLUMNS) + INT_COLUMNS + BOX_COLUMNS)

FIX_HINT = ("Re-create the file with tools/prepare_h36m.py (real H36M) or "
            "tools/make_synthetic.py (synthetic data).")

# Unit checks (see _unit_problems): H36M bones are 0.1-0.5 m; the thresholds leave wide margins.
MM_BONE_THRESHOLD = 10.0      # a median bone length above this is millimetres, not metres
PLAUSIBLE_BONE_M = (0.02, 3.0)
SCREEN_LIMIT = 5.0            # |u|, |v| of normalised screen coordinates (the frame is about +-1)
MIN_CROP_SPREAD_PX = 3.0      # a person's joints spread over more crop pixels than this
_CHILDREN = list(range(1, NUM_JOINTS))
_PARENTS = [PARENTS[joint] for joint in _CHILDREN]


class _Problem:
    """The first defect found in one check: entry index (in the batch), key, description."""

    def __init__(self, index, key, text):
        self.index, self.key, self.text = int(index), key, text


def _first(mask):
    """Index of the first True in a bool array, or None."""
    if mask.size == 0 or not mask.any():
        return None
    return int(np.argmax(mask))


def _describe(value):
    """A short description of a value that is not what a key needs."""
    if isinstance(value, np.ndarray):
        return f"a numpy array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, np.generic):
        return f"a numpy {value.dtype} scalar {value!r:.40}"
    return f"{type(value).__name__} {value!r:.60}"


_NUMERIC_KINDS = frozenset("fiu")


def _numeric_kind(value):
    """'f', 'i' or 'u' for a real number or an array of them; anything else (bool 'b', complex
    'c', strings 'U'/'S', objects 'O', ...) means the value is not numeric."""
    kind = type(value)
    if kind is float:
        return "f"
    if kind is int:
        return "i"
    if kind is np.ndarray or isinstance(value, np.generic):
        return value.dtype.kind
    if kind in (list, tuple):
        try:
            return np.asarray(value).dtype.kind
        except (ValueError, TypeError):  # ragged
            return "O"
    return "O"


def _numeric_problem(values, key, expected):
    """The first value that is not made of real numbers (bools and complex numbers included)."""
    if all(type(value) is np.ndarray for value in values) and \
            all(dtype.kind in _NUMERIC_KINDS for dtype in {value.dtype for value in values}):
        return None  # the common case: numeric arrays only
    for index, value in enumerate(values):
        if _numeric_kind(value) not in _NUMERIC_KINDS:
            return _Problem(index, key, f"is {_describe(value)}, expected {expected}")
    return None


def _float_column(values, shape, key, flatten=False):
    """Stacks per-frame real numbers of trailing `shape` into float32; returns (array, problem).

    With `flatten`, any per-frame value holding prod(shape) numbers is accepted (a camera's
    `fx` stored as a (1,) array, a `center` stored as (2, 1) or a tuple of two floats).
    """
    problem = _numeric_problem(values, key, f"real numbers of shape {shape}")
    if problem is not None:
        return None, problem
    count = int(np.prod(shape, dtype=np.int64))
    array = None
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become Inf and are reported
            array = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an int beyond any float
        pass
    if array is not None and flatten and array.ndim >= 1 and array.size == len(values) * count:
        array = array.reshape((len(values),) + shape)
    if array is None or array.shape[1:] != shape:
        for index, value in enumerate(values):
            try:
                item = np.asarray(value, dtype=np.float64)
            except OverflowError:
                return None, _Problem(index, key, f"holds an integer beyond the range of any "
                                                  f"float ({_describe(value)[:60]}...)")
            if (item.size != count) if flatten else (item.shape != shape):
                detail = " (17 H36M joints)" if key in JOINT_COLUMNS else ""
                return None, _Problem(index, key, f"has shape {item.shape}, expected "
                                                  f"{shape}{detail}")
        with np.errstate(over="ignore"):  # every value fits, in mixed layouts: one by one
            array = np.stack([np.asarray(value, dtype=np.float32).reshape(shape)
                              for value in values])
    bad = _first(~np.isfinite(array.reshape(len(values), -1)).all(axis=1))
    if bad is not None:
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(array[bad]))[0])
        value = np.asarray(values[bad], dtype=np.float64).reshape(array.shape[1:])[where]
        at = f" at position {where}" if where else ""
        return None, _Problem(bad, key, f"holds a non-finite value (NaN, Inf or beyond "
                                        f"float32): {value}{at}")
    return array, None


def _int_column(values, key):
    """int32 column of integers (Python ints, numpy integers, integral floats, (1,) arrays of
    them); booleans, strings and the like are refused. Returns (array, problem)."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        try:
            array = np.array(values, dtype=np.int64)
        except OverflowError:
            array = None
    else:
        array = None
        for index, value in enumerate(values):
            if _numeric_kind(value) not in _NUMERIC_KINDS or np.size(value) != 1:
                return None, _Problem(index, key, f"is {_describe(value)}, expected an integer")
        array = np.array([np.ravel(value)[0] for value in values])
        if array.dtype.kind == "f":
            bad = _first(~np.isfinite(array) | (array != np.round(array)))
            if bad is not None:
                return None, _Problem(bad, key, f"is {array[bad]!r}, expected an integer")
    if array is None or ((array < -2 ** 31) | (array >= 2 ** 31)).any():
        values = np.asarray(values, dtype=object) if array is None else array
        bad = next(index for index, value in enumerate(values) if not -2 ** 31 <= int(value) < 2 ** 31)
        return None, _Problem(bad, key, f"is {values[bad]!r}, beyond a 32-bit integer")
    return array.astype(np.int32), None


def _image_column(values):
    encoded = []
    for index, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return None, _Problem(index, "image", f"is {value!r:.60}, which is not UTF-8")
        elif isinstance(value, str):
            text = value
        else:
            return None, _Problem(index, "image", f"is {_describe(value)}, expected a relative "
                                                  "image path")
        problem = unsafe_image_path(text)
        if problem is not None:
            return None, _Problem(index, "image", (
                f"is {shown_image_path(text)}, which {problem}; image paths must be short "
                "relative paths inside the image folder, in UTF-8 (a label file must not make "
                "the loader read other files)"))
        encoded.append(text.encode("utf-8"))
    return np.array(encoded, dtype=np.bytes_), None


def _camera_columns(cameras):
    columns = {}
    for name in CAMERA_COLUMNS:
        values = []
        for index, camera in enumerate(cameras):
            if not isinstance(camera, dict) or name not in camera:
                return None, _Problem(index, "camera", f"lacks '{name}' (expected a dict with R, "
                                                       "T, fx, fy, cx, cy, k, p)")
            values.append(camera[name])
        array, problem = _float_column(values, (), f"camera.{name}", flatten=True)
        if problem is not None:
            return None, problem
        columns[name] = array
    return columns, None


def _structure_problem(entries):
    """The first entry that is not a dict or lacks a required key, or None."""
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return _Problem(index, "-", f"is a {type(entry).__name__}, expected a dict per frame")
        if not REQUIRED_KEYS <= entry.keys():
            if "joints_2d" in entry and "joints_2d_cpn" not in entry:
                return _Problem(index, "joints_2d", (
                    "is there but 'joints_2d_gt' / 'joints_2d_cpn' are not: this is the output of "
                    "the plain H36M-Toolbox script (joints_2d in pixels, joints_3d in millimetres, "
                    "no CPN detections), not the format MetaPose reads (docs/method.md §1.1: metres, "
                    "normalised screen coordinates and crop pixels, CPN keys). Build the labels "
                    "from the raw release with tools/prepare_h36m.py"))
            missing = sorted(REQUIRED_KEYS - entry.keys())
            return _Problem(index, missing[0], "is missing (required keys: "
                                               f"{', '.join(sorted(REQUIRED_KEYS))})")
    return None


def _unit_problems(columns):
    """Values in the right types but the wrong units or coordinate frames (see module doc)."""
    problems = []
    if "joints_3d" in columns:
        joints = columns["joints_3d"]
        bones = np.linalg.norm(joints[:, _CHILDREN] - joints[:, _PARENTS], axis=-1)
        median = np.median(bones, axis=1)
        bad = _first(median > MM_BONE_THRESHOLD)
        if bad is not None:
            problems.append(_Problem(bad, "joints_3d", (
                f"has bones of median length {median[bad]:.1f}: the joints are in millimetres, "
                "but the labels must hold metres (docs/method.md §1.1). The plain H36M-Toolbox script "
                "writes millimetres; tools/prepare_h36m.py divides by 1000")))
        else:
            low, high = PLAUSIBLE_BONE_M
            bad = _first((median < low) | (median > high))
            if bad is not None:
                problems.append(_Problem(bad, "joints_3d", (
                    f"has bones of median length {median[bad]:.4f} m, outside the {low}-{high} m "
                    "of a human skeleton: wrong units or not the 17 H36M joints in order")))
        bad = _first(joints[:, 0, 2] <= 0)
        if bad is not None:
            problems.append(_Problem(bad, "joints_3d", (
                f"has its root at depth z = {joints[bad, 0, 2]:.3f}: camera coordinates put the "
                "person in front of the camera (z > 0); are these world coordinates?")))
    for key in ("joints_2d_gt", "joints_2d_cpn"):
        if key in columns:
            largest = np.abs(columns[key]).reshape(len(columns[key]), -1).max(axis=1)
            bad = _first(largest > SCREEN_LIMIT)
            if bad is not None:
                problems.append(_Problem(bad, key, (
                    f"holds {largest[bad]:.1f}: these look like pixels, but the labels must hold "
                    "normalised screen coordinates u = x / w * 2 - 1, v = y / w * 2 - h / w "
                    "(about -1..1, docs/method.md §1.1). The plain H36M-Toolbox script writes pixels; "
                    "tools/prepare_h36m.py writes normalised coordinates")))
    for key in ("joints_2d_gt_crop", "joints_2d_cpn_crop"):
        if key in columns:
            joints = columns[key]
            spread = (joints.max(axis=1) - joints.min(axis=1)).max(axis=1)
            bad = _first(spread < MIN_CROP_SPREAD_PX)
            if bad is not None:
                problems.append(_Problem(bad, key, (
                    f"spreads over only {spread[bad]:.2f} pixels: these look like normalised "
                    "coordinates, but the key must hold pixels of the 192x256 crop (docs/method.md §1.1)")))
    return problems


def _value_problems(columns):
    problems = []
    if "subject" in columns:
        bad = _first(~np.isin(columns["subject"], ALL_SUBJECTS))
        if bad is not None:
            problems.append(_Problem(bad, "subject", f"is {columns['subject'][bad]}, expected one "
                                                     f"of {sorted(ALL_SUBJECTS)}"))
    if "action" in columns:
        actions = columns["action"]
        bad = _first((actions < min(ACTION_IDS)) | (actions > max(ACTION_IDS)))
        if bad is not None:
            problems.append(_Problem(bad, "action", f"is {actions[bad]}, expected an H36M action "
                                                    f"id {min(ACTION_IDS)}..{max(ACTION_IDS)}"))
    if "scale" in columns:
        bad = _first(~(columns["scale"] * 200.0 > 1.0).all(axis=1))
        if bad is not None:
            problems.append(_Problem(bad, "scale", f"is {columns['scale'][bad].tolist()}, "
                                                   "expected box sizes / 200 above 1 / 200 "
                                                   "(boxes wider than one pixel)"))
    return problems + _unit_problems(columns)


def _build_columns(entries, problems):
    columns = {}

    def keep(key, result):
        array, problem = result
        if problem is not None:
            problems.append(problem)
        elif isinstance(array, dict):
            columns.update(array)
        else:
            columns[key] = array

    keep("image", _image_column([e["image"] for e in entries]))
    for key, shape in JOINT_COLUMNS.items():
        keep(key, _float_column([e[key] for e in entries], shape, key))
    for key in INT_COLUMNS:
        keep(key, _int_column([e[key] for e in entries], key))
    for key in BOX_COLUMNS:
        keep(key, _float_column([e[key] for e in entries], (2,), key, flatten=True))
    keep("camera", _camera_columns([e["camera"] for e in entries]))
    problems.extend(_value_problems(columns))
    return columns


def convert_batch(entries, offset=0, source="<labels>"):
    """Validates consecutive label entries and converts them into columns (see COLUMN_SPECS).

    Args:
        entries: list of dicts in the format of docs/method.md §1.1.
        offset: index of entries[0] in the whole file (for messages).
        source: file name used in messages.
    Returns:
        dict column name -> numpy array with len(entries) rows.
    Raises:
        MetaPoseError naming `source`, the index and the key of the first bad entry.
    """
    problems = []
    structure = _structure_problem(entries)
    if structure is not None:  # columns can only be built from the entries before it
        problems.append(structure)
        entries = entries[:structure.index]
    columns = _build_columns(entries, problems) if entries else {}
    if problems:
        first = min(problems, key=lambda p: p.index)
        raise MetaPoseError(
            f"label file '{source}': entry {offset + first.index}, key '{first.key}' {first.text}. "
            f"This is the first bad entry. {FIX_HINT}")
    return columns
