"""Missing 2D joints: which given joints are missing, and the position the model receives for each.

A joint is *missing* when its confidence is not above the threshold (`--kpt-thr`, default 0: only
a confidence of 0 or less), when it lies outside the frame, or when it is given as [0, 0] /
[0, 0, 0] (OpenPose's and many tools' way of saying "not found"). A missing joint's coordinates
are never used. The model needs 17 positions all the same, so each missing joint is *imputed*
by one stated rule (docs/inference.md "Missing joints"):

    the template below (a person standing upright, arms hanging, seen from the front, in metres)
    is fitted to the visible joints by the least-squares similarity transform (one scale, one
    rotation, one shift; mirrored when the mirror image fits better, e.g. a person seen from
    behind), and each missing joint is placed where the fitted template puts it.

Only the visible head, shoulder and hip joints (the *anchors*, which keep their places whatever
the arms and legs do) steer the fit when at least two of them are visible; otherwise every
visible joint does. At least two visible joints at distinct places are needed.
"""

import numpy as np

# COCO-17 joints of the template: x right, y down, metres, the mid-hip point at the origin (a
# 1.75 m person: eyes at 1.66 m, shoulders 1.45 m, hips 0.92 m, knees 0.48 m, ankles 0.08 m).
# The person faces the camera, so their left side is on the image's right (x > 0).
COCO_TEMPLATE = np.array([
    (0.0, -0.70),                    # nose
    (0.032, -0.74), (-0.032, -0.74),   # left eye, right eye
    (0.075, -0.72), (-0.075, -0.72),   # left ear, right ear
    (0.19, -0.53), (-0.19, -0.53),     # left shoulder, right shoulder
    (0.22, -0.25), (-0.22, -0.25),     # left elbow, right elbow
    (0.24, 0.03), (-0.24, 0.03),       # left wrist, right wrist
    (0.10, 0.0), (-0.10, 0.0),         # left hip, right hip
    (0.11, 0.44), (-0.11, 0.44),       # left knee, right knee
    (0.12, 0.84), (-0.12, 0.84),       # left ankle, right ankle
])
COCO_TEMPLATE.flags.writeable = False
COCO_ANCHORS = (0, 1, 2, 3, 4, 5, 6, 11, 12)  # nose, eyes, ears, shoulders, hips
H36M_ANCHORS = (0, 1, 4, 7, 8, 9, 10, 11, 14)  # pelvis, hips, belly, neck, nose, head, shoulders

MIN_VISIBLE = 2
MIN_SPREAD_PX = 1.0  # visible joints closer together than this give no scale


def h36m_template():
    """The template in H36M order (through the COCO -> H36M table of inference/keypoints.py)."""
    from inference.keypoints import coco_to_h36m

    return coco_to_h36m(COCO_TEMPLATE)


def missing_mask(points, scores, width, height, threshold):
    """(17,) bool: True for each joint that is missing (see the module docstring).

    points: (17, 2) pixels; scores: (17,) confidences or None; threshold: --kpt-thr.
    """
    points = np.asarray(points, dtype=np.float64)
    zero = (points == 0.0).all(axis=1)
    outside = ((points[:, 0] < -0.5) | (points[:, 0] > width - 0.5)
               | (points[:, 1] < -0.5) | (points[:, 1] > height - 0.5))
    missing = zero | outside
    if scores is not None:
        missing |= ~(np.asarray(scores, dtype=np.float64) > threshold)
    return missing


def _similarity(source, target, mirror):
    """Least-squares (scale, rotation 2x2, shift) mapping source points onto target points,
    with the rotation mirrored (det -1) when `mirror`; returns the transform and its residual."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    if mirror:
        a = a * np.array([-1.0, 1.0])
    # the best rotation for a 2D point set: angle of sum(a x b), sum(a . b)
    dot = float((a * b).sum())
    cross = float((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum())
    norm = float((a ** 2).sum())
    angle = np.arctan2(cross, dot)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.hypot(dot, cross) / norm if norm > 0 else 0.0
    if mirror:
        rotation = rotation @ np.diag([-1.0, 1.0])
    shift = target_mean - scale * rotation @ source_mean
    residual = float(((scale * source @ rotation.T + shift - target) ** 2).sum())
    return (scale, rotation, shift), residual


def usable(points, missing):
    """True when the visible joints can place the missing ones: at least two, at distinct
    places (a spread of MIN_SPREAD_PX or more)."""
    visible = np.asarray(points, dtype=np.float64)[~np.asarray(missing, dtype=bool)]
    return len(visible) >= MIN_VISIBLE and np.ptp(visible, axis=0).max() >= MIN_SPREAD_PX


def impute_missing(points, missing, template, anchors):
    """`points` with each missing joint replaced by the fitted template's (module docstring).

    Args:
        points: (17, 2) pixels (the values of missing joints are ignored).
        missing: (17,) bool; `usable(points, missing)` must hold.
        template: (17, 2) the template in the order of `points`.
        anchors: indices of the joints that steer the fit when two or more are visible.
    Returns:
        (17, 2) float64: visible joints unchanged, missing ones imputed.
    """
    points = np.asarray(points, dtype=np.float64).copy()
    missing = np.asarray(missing, dtype=bool)
    if not missing.any():
        return points
    if not usable(points, missing):
        raise ValueError("impute_missing needs two visible joints at distinct places")
    visible = np.flatnonzero(~missing)
    steering = [joint for joint in visible if joint in anchors]
    if not usable(points[steering], np.zeros(len(steering), dtype=bool)):
        steering = list(visible)
    template = np.asarray(template, dtype=np.float64)
    source, target = template[steering], points[steering]
    proper, proper_residual = _similarity(source, target, mirror=False)
    mirrored, mirrored_residual = _similarity(source, target, mirror=True)
    # a clearly better mirrored fit (never for two points, which both fit exactly)
    scale, rotation, shift = mirrored if mirrored_residual < 0.5 * proper_residual else proper
    fitted = scale * template @ rotation.T + shift
    points[missing] = fitted[missing]
    return points
