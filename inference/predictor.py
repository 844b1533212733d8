"""The one inference entry point: `Predictor` turns frames into 3D poses (docs/method.md §5).

For each person of a frame: a box (given, detected, or the whole frame) -> the data pipeline's
192x256 crop (datasets/images.py) resized to data.image_size -> 2D joints (given, or decoded from
the HRNet's COCO heatmaps and converted to H36M) -> both model coordinates of those joints
(normalised screen coordinates of the input frame and crop pixels) -> the evaluation's
prediction function (models/flip_test.predict), so inference and evaluation cannot drift apart
-> joints_3d made root-relative (joint 0 at the origin; the network's output stays in
joints_3d_raw). The CLI (tools/infer.py), the tests, the benchmark and notebooks all call this
class.
"""

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from datasets.camera import pixels_to_screen
from datasets.images import (crop_from_full_frame, crop_to_full_frame, full_frame_to_crop,
                             read_image, resize_image)
from inference.boxes import DEFAULT_BOX_PADDING, box_to_center_scale, keypoint_box, whole_frame_box
from inference.heatmaps import decode_heatmaps, heatmap_to_crop
from inference.keypoints import coco_to_h36m, h36m_missing
from inference.loading import load_trained_model, prepare_for_inference, resolve_action
from inference.missing_joints import (COCO_ANCHORS, COCO_TEMPLATE, impute_missing, missing_mask,
                                      usable)
from inference.people import Person, checked_image, checked_request
from models.flip_test import predict
from utils.errors import MetaPoseError
from utils.flip import flip_images
from utils.geometry import normalize_images
from utils.precision import autocast_context


@dataclass
class _Crop:
    frame: int
    box: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    row: int
    keypoints: Optional[np.ndarray]
    keypoint_scores: Optional[np.ndarray]
    keypoint_missing: Optional[np.ndarray]
    score: Optional[float]
    frame_size: tuple
    source: str = "user"
    result: Optional[Person] = None


class _ReusedMaps(nn.Module):
    """The image encoder, except that for exactly `images` it returns the `maps` already
    computed from them (compared by value, so any other input is encoded as usual)."""

    def __init__(self, encoder, images, maps):
        super().__init__()
        self.encoder = encoder
        self.images, self.maps = images, maps

    def forward(self, images):
        if images.shape == self.images.shape and torch.equal(images, self.images):
            return self.maps
        return self.encoder(images)


@contextlib.contextmanager
def _reusing_maps(model, images, maps):
    encoder = model.image_encoder
    model.image_encoder = _ReusedMaps(encoder, images, maps)
    try:
        yield
    finally:
        model.image_encoder = encoder


class Predictor:
    """3D poses of the people in images, from a trained MetaPose.

    Build it with `Predictor.from_checkpoint(path, ...)` (any accepted checkpoint) or
    `Predictor(loaded, ...)` with an `inference.loading.LoadedModel`. Then
    `predictor(image, boxes=None, keypoints=None)` returns a list of `Person`.

    Args:
        loaded: the model (inference.loading.load_trained_model / prepare_for_inference).
        action: text action for joint_action models: a CamelCase H36M name, an id 2..16, or
            "all" (the mean of the 15 actions' text features); ignored in joint mode.
        flip_test: average with the mirrored prediction of the mirrored input, as evaluation.
        batch_size: people per forward pass.
        box_padding: factor a given or detected box is enlarged by (after the crop's 192:256
            aspect); 1 keeps the box as the crop. The whole-frame box is never padded.
        detector: an inference.boxes.PersonDetector used when a frame has neither boxes nor
            keypoints (else the whole frame is the box).
        amp: autocast on CUDA ("none" | "bf16" | "fp16"); default the config's speed.amp, as
            evaluation.
        kpt_thr: a 2D joint whose confidence (the keypoint file's third column, or the HRNet
            heatmap maximum) is not above it is missing (inference/missing_joints.py); 0 keeps
            every joint with a positive confidence.
    """

    def __init__(self, loaded, action=None, flip_test=False, batch_size=32,
                 box_padding=DEFAULT_BOX_PADDING, detector=None, amp=None, kpt_thr=0.0):
        if not int(batch_size) >= 1:
            raise MetaPoseError(f"batch size {batch_size} must be at least 1.")
        if not (math.isfinite(float(box_padding)) and float(box_padding) > 0):
            raise MetaPoseError(f"box padding {box_padding} must be a positive number (1 = the "
                                "box itself).")
        self.kpt_thr = finite_threshold(kpt_thr)
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.device = next(self.model.parameters()).device
        self.image_size = tuple(int(v) for v in self.config.data.image_size)
        self.default_action = resolve_action(action, loaded.text_mode) \
            if action is not None or loaded.text_mode == "joint" else None
        self.flip_test = bool(flip_test)
        self.batch_size = int(batch_size)
        self.box_padding = float(box_padding)
        self.detector = detector
        self.amp = self.config.speed.amp if amp is None else amp
        self._head_warned = False

    @classmethod
    def from_checkpoint(cls, checkpoint, config=None, overrides=(), device="cpu", hrnet=None,
                        **options):
        """A Predictor for any accepted checkpoint; `config` (a YAML path) overrides the config
        the checkpoint stores, `hrnet` names an official pose_hrnet file for the heatmap head;
        `options` go to the constructor."""
        return cls(load_trained_model(checkpoint, config, overrides, device, hrnet), **options)

    @classmethod
    def from_model(cls, model, config, device="cpu", hrnet=None, **options):
        """A Predictor for a MetaPose built in memory (benchmarks, notebooks); it is modified
        in place (eval mode, text table)."""
        return cls(prepare_for_inference(model, config, device=device, head_file=hrnet),
                   **options)

    @property
    def text_mode(self):
        return self.loaded.text_mode

    def _row(self, action):
        """The text table row of `action` (or of the default action)."""
        table = self.model.text_encoder
        if action is None:
            if self.default_action is None:
                resolve_action(None, self.text_mode)  # raises: the model needs an action
            return table.row(self.default_action)
        return table.row(resolve_action(action, self.text_mode, where="action"))

    # -- checking user input ----------------------------------------------------------------

    def request(self, image, boxes=None, keypoints=None, keypoint_format="h36m",
                box_scores=None, action=None, where="input", kpt_thr=None):
        """A checked FrameRequest from user values (inference/people.py `checked_request`).

        image: (H, W, 3) uint8 RGB array or an image path. boxes: N boxes [x1, y1, x2, y2] in
        frame pixels. keypoints: N people of 17 joints, [x, y] or [x, y, score] pixels, in
        `keypoint_format` ("coco" or "h36m") order; with both, person i has box i. kpt_thr:
        this frame's threshold (default the predictor's).
        Raises MetaPoseError naming `where` for anything malformed.
        """
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = read_image(image)
        image = checked_image(image, where)
        height, width = image.shape[:2]
        request = checked_request(width, height, boxes, keypoints, keypoint_format, box_scores,
                                  action, where,
                                  self.kpt_thr if kpt_thr is None else finite_threshold(kpt_thr))
        request.image = image
        return request

    def __call__(self, image, boxes=None, keypoints=None, keypoint_format="h36m",
                 box_scores=None, action=None, kpt_thr=None):
        """The people of one image (see `request` for the arguments) -> list of Person."""
        return self.predict_frames([self.request(image, boxes, keypoints, keypoint_format,
                                                 box_scores, action, kpt_thr=kpt_thr)])[0]

    # -- the chain ----------------------------------------------------------------------------

    def _crops_of(self, requests):
        """Every person of every frame as a _Crop (boxes given, from keypoints, detected, or
        the whole frame)."""
        detect = [i for i, r in enumerate(requests) if r.boxes is None and r.keypoints is None]
        detected = {}
        if detect and self.detector is not None:
            detected = dict(zip(detect, self.detector([requests[i].image for i in detect])))
        crops = []
        for index, request in enumerate(requests):
            row = self._row(request.action)
            height, width = request.image.shape[:2]
            boxes, scores, padding = request.boxes, request.box_scores, self.box_padding
            if boxes is None and request.keypoints is not None:
                boxes = np.stack([keypoint_box(points) for points in request.keypoints]) \
                    if len(request.keypoints) else np.zeros((0, 4))
            elif boxes is None and index in detected:
                boxes, scores = detected[index]
            elif boxes is None:
                boxes, padding = whole_frame_box(width, height)[None], 1.0
            for person, box in enumerate(boxes):
                center, scale = box_to_center_scale(box, padding)
                keypoints = None if request.keypoints is None else request.keypoints[person]
                keypoint_scores = None if request.keypoint_scores is None else \
                    request.keypoint_scores[person]
                missing = None if request.keypoint_missing is None else \
                    request.keypoint_missing[person]
                crops.append(_Crop(index, np.asarray(box, np.float64), center, scale, row,
                                   keypoints, keypoint_scores, missing,
                                   None if scores is None else float(scores[person]),
                                   (width, height)))
        return crops

    def predict_frames(self, requests):
        """FrameRequests -> for each frame, the list of its Person (people of all frames are
        batched together, `batch_size` per forward pass)."""
        crops = self._crops_of(requests)
        for start in range(0, len(crops), self.batch_size):
            self._run(requests, crops[start:start + self.batch_size])
        results = [[] for _ in requests]
        for crop in crops:
            results[crop.frame].append(crop.result)
        return results

    @torch.inference_mode()
    def _run(self, requests, crops):
        images = np.stack([resize_image(crop_from_full_frame(requests[c.frame].image, c.center,
                                                             c.scale), self.image_size)
                           for c in crops])
        images = normalize_images(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
                                  .to(self.device))
        needs_2d = [c.keypoints is None for c in crops]
        reuse = contextlib.nullcontext()
        if any(needs_2d):
            encoded = torch.cat([images, flip_images(images)]) if self.flip_test else images
            with autocast_context(self.device, self.amp):
                maps = self.model.encode_images(encoded)
            self._keypoints_from_heatmaps(crops, needs_2d, maps[0][:len(crops)])
            reuse = _reusing_maps(self.model, encoded, maps)
        keypoints_2d, keypoints_crop = [], []
        for crop in crops:
            height, width = requests[crop.frame].image.shape[:2]
            keypoints_2d.append(pixels_to_screen(crop.keypoints, width, height))
            keypoints_crop.append(full_frame_to_crop(crop.keypoints, crop.center, crop.scale))
        inputs = {
            "images": images,
            "keypoints_2d": torch.from_numpy(np.stack(keypoints_2d)).float().to(self.device),
            "keypoints_2d_crop": torch.from_numpy(np.stack(keypoints_crop)).float()
            .to(self.device),
            "actions": torch.tensor([c.row for c in crops], dtype=torch.long, device=self.device),
        }
        with reuse:
            pose = predict(self.model, inputs, self.flip_test, self.amp).float().cpu().numpy()
        for crop, joints in zip(crops, pose.astype(np.float64)):
            missing = crop.keypoint_missing if crop.keypoint_missing is not None else \
                np.zeros(len(joints), dtype=bool)
            crop.result = Person(joints_3d=joints - joints[:1], joints_3d_raw=joints,
                                 joints_2d=crop.keypoints, box=crop.box, score=crop.score,
                                 joints_2d_scores=crop.keypoint_scores,
                                 joints_2d_source=crop.source, joints_2d_missing=missing)

    def _keypoints_from_heatmaps(self, crops, needs_2d, features):
        """Fills the crops without 2D joints from the HRNet COCO heatmap head. A joint whose
        heatmap maximum is not above kpt_thr, or that lies outside the frame, is missing and
        imputed like a user's; with fewer than two confident joints the head's own estimates
        are kept (all marked missing)."""
        head = self.loaded.keypoint_head
        if head.module is None:
            raise MetaPoseError(
                "no 2D joints were given and this model has no HRNet heatmap head to estimate "
                f"them: {head.source}. Give the joints with --keypoints (COCO-17 or H36M-17 "
                "pixels from any 2D detector), or the official COCO pose_hrnet file with --hrnet.")
        if head.warning and not self._head_warned:
            warnings.warn(head.warning, stacklevel=4)
            self._head_warned = True
        heatmaps = head.module(features.float())
        coords, maxima = decode_heatmaps(heatmaps)
        coords = heatmap_to_crop(coords, heatmaps.shape[-2:]).cpu().numpy()
        maxima = maxima.cpu().numpy()
        for crop, needed, points, peak in zip(crops, needs_2d, coords, maxima):
            if not needed:
                continue
            frame_points = crop_to_full_frame(points, crop.center, crop.scale)
            missing = missing_mask(frame_points, peak, *crop.frame_size, self.kpt_thr)
            if usable(frame_points, missing):
                frame_points = impute_missing(frame_points, missing, COCO_TEMPLATE, COCO_ANCHORS)
            else:
                missing = np.ones_like(missing)
            crop.keypoints, crop.keypoint_scores = coco_to_h36m(frame_points, peak)
            crop.keypoint_missing = h36m_missing(missing)
            crop.source = "hrnet"


def finite_threshold(value):
    """A keypoint confidence threshold as a float; MetaPoseError unless it is a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise MetaPoseError(f"keypoint threshold {value!r} must be a finite number (a joint "
                            "whose confidence is not above it is missing).")
    return number
