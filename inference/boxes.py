"""Person boxes: checks, the toolbox crop of a box, the whole frame, torchvision's detector.

A box is [x1, y1, x2, y2] in full-frame pixels of the input frame (integer coordinates at pixel
centres, so a W-wide frame spans [-0.5, W - 0.5]). The crop cut from it is the data pipeline's
(datasets/images.py `crop_affine`): `center` = the box centre, `scale` = (w, h) / 200 after the
box is widened or heightened to the crop's 192:256 aspect and multiplied by `padding`. With
padding 1 the crop is exactly the (aspect-adjusted) box: the H36M label box, a 2 m square around
the root joint, gives the label's own crop.
"""

import math
import os

import numpy as np
import torch

from utils.errors import MetaPoseError
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

ASPECT = CROP_WIDTH / CROP_HEIGHT  # width / height of the crop

# A tight box around a standing person (~1.75 m tall) made 1.5 times as large, at the crop's
# aspect, frames the person about as the H36M root box does (a 2 m wide crop, 2.67 m high).
DEFAULT_BOX_PADDING = 1.5
# A given box may reach this many frame sizes beyond each edge of the frame (a person partly
# outside it); farther is not a box of this frame (and huge values would overflow the crop map).
BOX_REACH = 2.0

DETECTORS = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_mobilenet_v3_large_320_fpn")  # accurate .. fast (320 px input)
COCO_PERSON = 1  # the person class of torchvision's COCO detectors


def box_to_center_scale(box, padding=1.0):
    """The toolbox crop of `box`: (center (2,), scale (2,)) float64 for `crop_affine`.

    The box is widened (or heightened) about its centre to the crop's 192:256 aspect, then
    multiplied by `padding`; scale = (width, height) / 200.
    """
    x1, y1, x2, y2 = (float(value) for value in box)
    width, height = x2 - x1, y2 - y1
    if width > ASPECT * height:
        height = width / ASPECT
    else:
        width = height * ASPECT
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    return center, np.array([width, height]) * float(padding) / 200.0


def whole_frame_box(width, height):
    """The box of the whole frame, edge to edge: [-0.5, -0.5, W - 0.5, H - 0.5]."""
    return np.array([-0.5, -0.5, width - 0.5, height - 0.5])


def keypoint_box(keypoints):
    """The tight box [x1, y1, x2, y2] of (17, 2) pixels (for people given by their joints alone)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    return np.concatenate([keypoints.min(axis=0), keypoints.max(axis=0)])


def check_box(values, width, height, where):
    """Validates one box of a user file: (4,) float64 [x1, y1, x2, y2] pixels.

    Raises:
        MetaPoseError naming `where` for non-numbers, NaN/Inf, x2 <= x1 or y2 <= y1, a box
        that covers less than one pixel of the frame, or one that reaches more than BOX_REACH
        frame sizes beyond an edge of the frame.
    """
    try:
        box = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise MetaPoseError(f"{where}: the box is not four numbers [x1, y1, x2, y2].") from None
    if box.shape != (4,):
        raise MetaPoseError(f"{where}: the box has {box.size} numbers; expected four, "
                            "[x1, y1, x2, y2] in pixels.")
    if not np.isfinite(box).all():
        raise MetaPoseError(f"{where}: the box {box.tolist()} is not finite (NaN or Inf).")
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise MetaPoseError(f"{where}: the box {box.tolist()} is empty or reversed; give "
                            "[x1, y1, x2, y2] with x2 > x1 and y2 > y1 (corners, not x, y, w, h).")
    if min(x2, width - 0.5) - max(x1, -0.5) < 1.0 or min(y2, height - 0.5) - max(y1, -0.5) < 1.0:
        raise MetaPoseError(f"{where}: the box {box.round(1).tolist()} lies outside the "
                            f"{width}x{height} frame (it must cover at least one pixel of it). "
                            "Check that it is in pixels of this frame.")
    low = -BOX_REACH * np.array([width, height, width, height])
    high = (1.0 + BOX_REACH) * np.array([width, height, width, height])
    if (box < low).any() or (box > high).any():
        shown = [float(f"{value:.6g}") for value in box]
        raise MetaPoseError(f"{where}: the box {shown} reaches more than {BOX_REACH:g} frame "
                            f"sizes beyond the {width}x{height} frame (allowed: x in "
                            f"[{low[0]:g}, {high[0]:g}], y in [{low[1]:g}, {high[1]:g}]). Check "
                            "that it is in pixels of this frame.")
    return box


class PersonDetector:
    """torchvision's COCO Faster R-CNN, keeping the person class above a score threshold.

    weights: "default" (torchvision's COCO weights, downloaded on first use into the torch hub
        cache), a path to a state-dict file of the same architecture (offline machines), or
        "random" (random weights, for tests: boxes without meaning).
    """

    def __init__(self, name="fasterrcnn_resnet50_fpn_v2", weights="default", threshold=0.5,
                 device="cpu"):
        if name not in DETECTORS:
            raise MetaPoseError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}.")
        if not 0.0 <= float(threshold) <= 1.0:
            raise MetaPoseError(f"detector threshold {threshold} must lie in [0, 1].")
        import torchvision.models.detection as detection

        build = getattr(detection, name)
        options = {"box_score_thresh": float(threshold), "weights_backbone": None}
        if weights == "default":
            try:
                model = build(weights="DEFAULT", **options)
            except Exception as error:  # download / network / cache errors of torchvision
                raise MetaPoseError(
                    f"the {name} detector's COCO weights could not be loaded "
                    f"({type(error).__name__}: {(str(error).splitlines() or [''])[0]}). "
                    "torchvision downloads "
                    "them on first use into ~/.cache/torch/hub/checkpoints; without a network, "
                    "put the file there, pass --detector-weights FILE, or give --boxes.") from None
        else:
            model = build(weights=None, num_classes=91, **options)
            if weights != "random":
                self._load(model, weights, name)
        self.name, self.threshold = name, float(threshold)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @staticmethod
    def _load(model, path, name):
        from utils.checkpoint import extract_state_dict, load_checkpoint

        state = extract_state_dict(load_checkpoint(os.fspath(path)), path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise MetaPoseError(f"detector weights '{path}' do not fit {name}: "
                                f"{str(error).splitlines()[0]}") from None

    @torch.inference_mode()
    def __call__(self, images):
        """images: list of (H, W, 3) uint8 RGB frames -> per frame (boxes (N, 4) float64 in this
        project's pixel convention, scores (N,) float64) of the people found, best first."""
        tensors = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
                   .div(255.0).to(self.device) for image in images]
        results = []
        for output in self.model(tensors):
            keep = (output["labels"] == COCO_PERSON) & (output["scores"] >= self.threshold)
            # torchvision's corners are pixel edges (0..W); here pixel centres are integers
            boxes = output["boxes"][keep].double().cpu().numpy() - 0.5
            scores = output["scores"][keep].double().cpu().numpy()
            order = np.argsort(-scores, kind="stable")
            results.append((boxes[order], scores[order]))
        return results


def box_iou(a, b):
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when they do not overlap)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 and math.isfinite(union) else 0.0
