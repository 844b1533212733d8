"""2D joints given by a user or a 2D detector: COCO-17 -> H36M-17 conversion and input checks.

All arrays are full-frame pixels (x right, y down, integer coordinates at pixel centres) of the
input frame. H36M order is the project's joint order (utils/skeleton.py, docs/method.md §1.3).
"""

import numpy as np

from utils.errors import MetaPoseError
from utils.skeleton import NUM_JOINTS

# COCO-17 keypoint order (the order of every COCO-trained 2D detector, HRNet's head included).
COCO_NAMES = (
    "nose", "left eye", "right eye", "left ear", "right ear", "left shoulder",
    "right shoulder", "left elbow", "right elbow", "left wrist", "right wrist", "left hip",
    "right hip", "left knee", "right knee", "left ankle", "right ankle",
)
COCO_LEFT = (1, 3, 5, 7, 9, 11, 13, 15)
COCO_RIGHT = (2, 4, 6, 8, 10, 12, 14, 16)
COCO_FLIP_PERMUTATION = tuple(
    {**{left: right for left, right in zip(COCO_LEFT, COCO_RIGHT)},
     **{right: left for left, right in zip(COCO_LEFT, COCO_RIGHT)}}.get(joint, joint)
    for joint in range(len(COCO_NAMES)))

KEYPOINT_FORMATS = ("coco", "h36m")

_NOSE, _LEFT_EYE, _RIGHT_EYE, _LEFT_EAR, _RIGHT_EAR = 0, 1, 2, 3, 4
_LEFT_SHOULDER, _RIGHT_SHOULDER, _LEFT_HIP, _RIGHT_HIP = 5, 6, 11, 12

# H36M joints that are COCO joints. Pelvis (0), belly (7), neck (8) and head (10) are derived.
_DIRECT = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 9: 0,
           11: 5, 12: 7, 13: 9, 14: 6, 15: 8, 16: 10}

# Each H36M joint as a weighted sum of COCO joints; every row's weights sum to 1, so the
# conversion commutes with any affine map of the image (shift, zoom, mirror):
#   pelvis = mid-hips; neck (thorax) = mid-shoulders; belly (spine) = mid(pelvis, neck);
#   head = C + (E - N): the centre C of the eyes and ears (inside the skull), moved one
#          nose-to-eyes step E - N (E = mid-eyes, N = nose) further away from the nose, which
#          puts it above the eyes on the forehead/crown whatever the head's tilt.
_WEIGHTS = np.zeros((NUM_JOINTS, len(COCO_NAMES)))
for _h36m, _coco in _DIRECT.items():
    _WEIGHTS[_h36m, _coco] = 1.0
_WEIGHTS[0, [_LEFT_HIP, _RIGHT_HIP]] = 0.5
_WEIGHTS[8, [_LEFT_SHOULDER, _RIGHT_SHOULDER]] = 0.5
_WEIGHTS[7, [_LEFT_HIP, _RIGHT_HIP, _LEFT_SHOULDER, _RIGHT_SHOULDER]] = 0.25
_WEIGHTS[10, [_LEFT_EYE, _RIGHT_EYE, _LEFT_EAR, _RIGHT_EAR]] = 0.25
_WEIGHTS[10, [_LEFT_EYE, _RIGHT_EYE]] += 0.5
_WEIGHTS[10, _NOSE] -= 1.0
COCO_TO_H36M_WEIGHTS = _WEIGHTS
COCO_TO_H36M_WEIGHTS.flags.writeable = False


def coco_to_h36m(keypoints, scores=None):
    """COCO-17 joints -> H36M-17 joints (see COCO_TO_H36M_WEIGHTS for the formulas).

    Args:
        keypoints: (..., 17, 2) COCO-order pixels.
        scores: optional (..., 17) per-joint confidences in COCO order.
    Returns:
        (..., 17, 2) float64 H36M-order pixels, and the (..., 17) H36M scores when `scores` is
        given: a derived joint is as confident as the least confident joint it is made from.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    converted = np.einsum("hc,...cd->...hd", COCO_TO_H36M_WEIGHTS, keypoints)
    if scores is None:
        return converted
    scores = np.asarray(scores, dtype=np.float64)
    used = COCO_TO_H36M_WEIGHTS != 0
    h36m_scores = np.stack([scores[..., row].min(axis=-1) for row in used], axis=-1)
    return converted, h36m_scores


def check_keypoints(values, width, height, where, keypoint_format="h36m", margin=0.25):
    """Validates one person's 2D joints from a user file and returns them in H36M order.

    Args:
        values: nested list or array, (17, 2) pixels or (17, 3) pixels + confidence.
        width, height: the frame size in pixels.
        where: names the file and entry in messages.
        keypoint_format: "coco" (COCO-17 order) or "h36m" (H36M-17 order).
        margin: joints may lie this fraction of the frame size outside the frame (a limb cut by
            the border); farther out is an error.
    Returns:
        (17, 2) float64 H36M-order pixels and (17,) scores (None without a third column).
    Raises:
        MetaPoseError naming `where` for a wrong count, non-numbers, NaN/Inf, negative scores,
        joints far outside the frame or coordinates that look normalised instead of pixels.
    """
    if keypoint_format not in KEYPOINT_FORMATS:
        raise MetaPoseError(f"{where}: keypoint format {keypoint_format!r} is not one of "
                            f"{', '.join(KEYPOINT_FORMATS)} (COCO-17 or H36M-17 order).")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetaPoseError(f"{where}: the keypoints are not a list of [x, y] or [x, y, score] "
                            "numbers.") from None
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise MetaPoseError(f"{where}: the keypoints have shape {array.shape}; expected "
                            f"{NUM_JOINTS} rows of [x, y] or [x, y, score] pixels.")
    if array.shape[0] != NUM_JOINTS:
        order = "COCO-17" if keypoint_format == "coco" else "H36M-17"
        raise MetaPoseError(f"{where}: {array.shape[0]} joints given, but the {order} order "
                            f"has {NUM_JOINTS}. Give all {NUM_JOINTS} joints (COCO-17 or H36M-17, "
                            "say which with --keypoint-format or the file's \"format\").")
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise MetaPoseError(f"{where}: joint {row} is {array[row].tolist()}, not finite (NaN "
                            "or Inf). Give every joint a position (a guess for an occluded "
                            "joint, with a low score).")
    points = array[:, :2]
    scores = array[:, 2] if array.shape[1] == 3 else None
    if scores is not None and (scores < 0).any():
        raise MetaPoseError(f"{where}: negative keypoint scores {scores[scores < 0].tolist()}; "
                            "the third column must be a confidence >= 0.")
    if max(width, height) > 16 and np.abs(points).max() <= 1.5:
        raise MetaPoseError(f"{where}: every coordinate lies within [-1.5, 1.5] on a "
                            f"{width}x{height} frame: these look like normalised coordinates. "
                            "Give the joints in pixels of the input frame.")
    low = -margin * np.array([width, height])
    high = np.array([width, height]) * (1.0 + margin)
    outside = ((points < low) | (points > high)).any(axis=1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise MetaPoseError(f"{where}: joint {row} at {points[row].round(1).tolist()} lies far "
                            f"outside the {width}x{height} frame (more than {margin:.0%} of its "
                            "size). Check that the joints are pixels of this frame.")
    if keypoint_format == "coco":
        return coco_to_h36m(points, scores) if scores is not None else (coco_to_h36m(points), None)
    return points.copy(), None if scores is None else scores.copy()
