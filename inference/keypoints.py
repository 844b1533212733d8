"""2D joints given by a user or a 2D detector: COCO-17 -> H36M-17 conversion and input checks.

All arrays are full-frame pixels (x right, y down, integer coordinates at pixel centres) of the
input frame. H36M order is the project's joint order (utils/skeleton.py, docs/method.md §1.3).
"""

import numpy as np

from inference.missing_joints import (COCO_ANCHORS, COCO_TEMPLATE, H36M_ANCHORS,
                                      h36m_template, impute_missing, missing_mask, usable)
from utils.errors import MetaPoseError
from utils.skeleton import JOINT_NAMES, NUM_JOINTS

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


def joint_names(keypoint_format):
    """The 17 joint names of an order: COCO-17 ("coco") or H36M-17 ("h36m")."""
    return COCO_NAMES if keypoint_format == "coco" else JOINT_NAMES


def h36m_missing(coco_missing):
    """(..., 17) H36M mask from a COCO mask: an H36M joint is missing when any COCO joint it is
    made from is (it was computed from an imputed position)."""
    coco_missing = np.asarray(coco_missing, dtype=bool)
    used = COCO_TO_H36M_WEIGHTS != 0
    return np.stack([coco_missing[..., row].any(axis=-1) for row in used], axis=-1)


def _count_phrase(count, what):
    return f"{count} {what}" if count else ""


def check_keypoints(values, width, height, where, keypoint_format="h36m", threshold=0.0):
    """Validates one person's 2D joints from a user file and returns them in H36M order.

    Args:
        values: nested list or array, (17, 2) pixels or (17, 3) pixels + confidence.
        width, height: the frame size in pixels.
        where: names the file and entry in messages.
        keypoint_format: "coco" (COCO-17 order) or "h36m" (H36M-17 order).
        threshold: --kpt-thr; a joint whose confidence is not above it is missing.
    Returns:
        (17, 2) float64 H36M-order pixels, with every missing joint imputed
        (inference/missing_joints.py); (17,) scores (None without a third column); (17,) bool
        H36M mask of the missing joints (a joint derived from a missing COCO joint is missing).
    Raises:
        MetaPoseError naming `where` (and the joint by name) for a wrong count, non-numbers,
        NaN/Inf, negative scores, coordinates that look normalised instead of pixels, or fewer
        than two usable joints.
    """
    if keypoint_format not in KEYPOINT_FORMATS:
        raise MetaPoseError(f"{where}: keypoint format {keypoint_format!r} is not one of "
                            f"{', '.join(KEYPOINT_FORMATS)} (COCO-17 or H36M-17 order).")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise MetaPoseError(f"{where}: the keypoints are not a list of [x, y] or [x, y, score] "
                            "numbers.") from None
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise MetaPoseError(f"{where}: the keypoints have shape {array.shape}; expected "
                            f"{NUM_JOINTS} rows of [x, y] or [x, y, score] pixels.")
    order = "COCO-17" if keypoint_format == "coco" else "H36M-17"
    if array.shape[0] != NUM_JOINTS:
        raise MetaPoseError(f"{where}: {array.shape[0]} joints given, but the {order} order "
                            f"has {NUM_JOINTS}. Give all {NUM_JOINTS} joints (COCO-17 or H36M-17, "
                            "say which with --keypoint-format or the file's \"format\"), "
                            "[0, 0, 0] for a joint you do not have.")
    names = joint_names(keypoint_format)
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise MetaPoseError(f"{where}: joint '{names[row]}' ({order} #{row}) is "
                            f"{array[row].tolist()}, not finite (NaN or Inf). Give [0, 0, 0] "
                            "(or a score below --kpt-thr) for a joint you do not have.")
    points = array[:, :2]
    scores = array[:, 2].copy() if array.shape[1] == 3 else None
    if scores is not None and (scores < 0).any():
        row = int(np.flatnonzero(scores < 0)[0])
        raise MetaPoseError(f"{where}: joint '{names[row]}' ({order} #{row}) has the negative "
                            f"score {scores[row]:g}; the third column must be a confidence >= 0.")
    missing = missing_mask(points, scores, width, height, threshold)
    visible = points[~missing]
    if max(width, height) > 16 and len(visible) >= 2 and np.abs(visible).max() <= 1.5:
        raise MetaPoseError(f"{where}: every coordinate lies within [-1.5, 1.5] on a "
                            f"{width}x{height} frame: these look like normalised coordinates. "
                            "Give the joints in pixels of the input frame.")

    if not usable(points, missing):
        zeros = (points == 0).all(axis=1)
        outside = missing_mask(points, None, width, height, threshold) & ~zeros
        low = int(missing.sum() - zeros.sum() - outside.sum())
        zero, outside = int(zeros.sum()), int(outside.sum())
        reasons = [phrase for phrase in (
            _count_phrase(low, f"have a score not above --kpt-thr {threshold:g}"),
            _count_phrase(outside, f"lie outside the {width}x{height} frame"),
            _count_phrase(zero, "are given as [0, 0]")) if phrase]
        kept = [names[j] for j in np.flatnonzero(~missing)]
        raise MetaPoseError(
            f"{where}: of the {NUM_JOINTS} joints, " + "; ".join(reasons) + f", which leaves "
            f"{', '.join(kept) if kept else 'none'}: at least two joints at distinct places "
            "are needed to place the missing ones. Check that the joints are pixels of this "
            "frame, lower --kpt-thr, or leave this person out of the file.")

    if keypoint_format == "coco":
        filled = impute_missing(points, missing, COCO_TEMPLATE, COCO_ANCHORS)
        converted, h36m_scores = (coco_to_h36m(filled, scores) if scores is not None
                                  else (coco_to_h36m(filled), None))
        return converted, h36m_scores, h36m_missing(missing)
    filled = impute_missing(points, missing, h36m_template(), H36M_ANCHORS)
    return filled, scores, missing
