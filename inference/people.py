"""What inference takes and gives per frame: `FrameRequest` (a frame and what the user knows about
its people, checked) and `Person` (one person's result). No model is needed here, so
tools/infer.py checks every frame's boxes and joints before it loads one."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from inference.boxes import check_box
from inference.keypoints import check_keypoints
from utils.errors import MetaPoseError
from utils.skeleton import JOINT_NAMES, NUM_JOINTS


@dataclass
class Person:
    """One person of one frame. Joint order H36M (utils/skeleton.py) everywhere.

    joints_3d: (17, 3) metres, camera axes (x right, y down, z forward), root-relative: joint 0
        (the pelvis) at exactly (0, 0, 0).
    joints_3d_raw: (17, 3) the network's output as the evaluation uses it (joint 0 near 0).
    joints_2d: (17, 2) pixels of the input frame: the 2D joints the model was given, missing
        joints at their imputed places (inference/missing_joints.py).
    joints_2d_missing: (17,) bool, True for a joint that was missing (imputed).
    box: (4,) [x1, y1, x2, y2] pixels of the input frame (before padding).
    score: the box's confidence (detector score, or from the boxes file), else None.
    joints_2d_scores: (17,) per-joint confidence (HRNet heatmap maxima, or the keypoint file's
        third column), else None.
    joints_2d_source: "user" (given) or "hrnet" (the heatmap head).
    track_id: videos: the number of this person's track (0, 1, ... by first appearance).
    """

    joints_3d: np.ndarray
    joints_2d: np.ndarray
    box: np.ndarray
    score: Optional[float] = None
    joints_2d_scores: Optional[np.ndarray] = None
    joints_2d_source: str = "user"
    joints_2d_missing: np.ndarray = field(
        default_factory=lambda: np.zeros(NUM_JOINTS, dtype=bool))
    joints_3d_raw: Optional[np.ndarray] = None
    track_id: Optional[int] = None

    @property
    def missing_names(self):
        """The names of the missing joints, e.g. ["right knee", "right ankle"]."""
        return [JOINT_NAMES[j] for j in np.flatnonzero(self.joints_2d_missing)]

    def to_json(self, raw_3d=False):
        """The person's record of predictions.json (docs/inference.md "predictions.json");
        `raw_3d` adds "joints_3d_raw"."""
        def rounded(array, digits):
            return None if array is None else np.round(np.asarray(array, np.float64),
                                                       digits).tolist()
        record = {"box": rounded(self.box, 2), "score": None if self.score is None
                  else round(float(self.score), 4),
                  "track_id": self.track_id,
                  "joints_2d": rounded(self.joints_2d, 2),
                  "joints_2d_scores": rounded(self.joints_2d_scores, 4),
                  "joints_2d_missing": [bool(flag) for flag in self.joints_2d_missing],
                  "joints_2d_source": self.joints_2d_source,
                  "joints_3d": rounded(self.joints_3d, 6)}
        if raw_3d:
            record["joints_3d_raw"] = rounded(self.joints_3d_raw, 6)
        return record


@dataclass
class FrameRequest:
    """One frame and what is known about its people (checked: see `checked_request`).

    image: (H, W, 3) uint8 RGB (None while only the user's files are being checked).
    boxes: (N, 4) pixels or None; box_scores: (N,) or None.
    keypoints: (N, 17, 2) H36M-order pixels (missing joints imputed) or None;
    keypoint_scores: (N, 17) or None; keypoint_missing: (N, 17) bool or None.
    action: the text action of this frame (None: the predictor's).
    """

    image: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    box_scores: Optional[np.ndarray] = None
    keypoints: Optional[np.ndarray] = None
    keypoint_scores: Optional[np.ndarray] = None
    keypoint_missing: Optional[np.ndarray] = None
    action: Optional[str] = None


def checked_image(image, where):
    """`image` as an (H, W, 3) uint8 array, else a MetaPoseError naming `where`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or \
            min(image.shape[:2]) < 2:
        raise MetaPoseError(f"{where}: expected an (H, W, 3) uint8 RGB image, got "
                            f"{image.dtype} of shape {image.shape}.")
    return image


def checked_request(width, height, boxes=None, keypoints=None, keypoint_format="h36m",
                    box_scores=None, action=None, where="input", kpt_thr=0.0):
    """A FrameRequest (without its image) for a width x height frame from user values.

    boxes: N boxes [x1, y1, x2, y2] in frame pixels. keypoints: N people of 17 joints, [x, y]
    or [x, y, score] pixels, in `keypoint_format` ("coco" or "h36m") order; with both, person i
    has box i. kpt_thr: a joint whose score is not above it is missing.
    Raises MetaPoseError naming `where` for anything malformed.
    """
    request = FrameRequest(action=action)
    if boxes is not None:
        request.boxes = np.stack([check_box(box, width, height, f"{where}, box {i}")
                                  for i, box in enumerate(boxes)]) if len(boxes) else \
            np.zeros((0, 4))
        if box_scores is not None:
            try:
                request.box_scores = np.asarray(box_scores, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise MetaPoseError(f"{where}: the box scores are not numbers.") from None
            if request.box_scores.shape != (len(request.boxes),):
                raise MetaPoseError(f"{where}: {request.box_scores.size} box scores for "
                                    f"{len(request.boxes)} boxes.")
            if not np.isfinite(request.box_scores).all():
                raise MetaPoseError(f"{where}: a box score is not finite (NaN or Inf).")
    if keypoints is not None:
        checked = [check_keypoints(person, width, height, f"{where}, person {i}",
                                   keypoint_format, kpt_thr) for i, person in enumerate(keypoints)]
        if request.boxes is not None and len(request.boxes) != len(checked):
            raise MetaPoseError(f"{where}: {len(request.boxes)} boxes but {len(checked)} "
                                "people with keypoints; person i takes box i, so give as "
                                "many of each (or no boxes).")
        request.keypoints = np.stack([points for points, _, _ in checked]) if checked else \
            np.zeros((0, NUM_JOINTS, 2))
        request.keypoint_missing = np.stack([missing for _, _, missing in checked]) \
            if checked else np.zeros((0, NUM_JOINTS), dtype=bool)
        if checked and all(scores is not None for _, scores, _ in checked):
            request.keypoint_scores = np.stack([scores for _, scores, _ in checked])
    return request
