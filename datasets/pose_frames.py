"""The base class of every dataset: one sample per labelled frame (image, 2D and 3D joints in the
H36M joint order), read from label columns (docs/method.md §1.2-1.4). Each dataset module builds
it, or a subclass, from its own label files (datasets/registry.py)."""

import logging
import os

import numpy as np
import torch

from datasets.flip_draws import flip_decision
from datasets.images import (crop_from_full_frame, is_crop_image, read_image, resize_image,
                             shown_image_path, unsafe_image_path)
from utils.errors import MetaPoseError
from utils.geometry import IMAGENET_MEAN
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

logger = logging.getLogger(__name__)

IMAGE_MODES = ("auto", "cropped", "full")
KEYPOINT_SOURCES = ("cpn", "gt")
_MAX_CONSECUTIVE_BAD = 100


def blank_image(image_size):
    """An (H, W, 3) uint8 image of the normalisation's mean colour (0 after normalisation): the
    image of data.blank_images and of an unreadable validation frame. Black would be -2.1 after
    normalisation, far outside what a frozen trunk met in training, and can blow its features up."""
    colour = np.round(np.asarray(IMAGENET_MEAN) * 255.0).astype(np.uint8)
    return np.broadcast_to(colour, tuple(image_size) + (3,)).copy()


class _ConfigurationError(MetaPoseError):
    """Raised even with skip_bad_images: it concerns the configuration or the labels, not one
    unreadable image."""


class _ImageModeMismatch(_ConfigurationError):
    """An image whose size contradicts data.image_mode."""


class _UnsafeImagePath(_ConfigurationError):
    """A label image path that would leave the image folder."""


class PoseFrameDataset(torch.utils.data.Dataset):
    """Labelled frames as model inputs and targets (docs/method.md §1.4); the samples of every
    dataset.

    A sample is a dict:
        image            uint8 (3, H, W) RGB, H, W = image_size; not normalised, not flipped
                         (the mean colour with blank_images).
        keypoints_2d     float32 (17, 2) normalised screen coordinates (cpn or gt joints).
        keypoints_2d_crop float32 (17, 2) the same joints in 192x256 crop pixels.
        joints_3d        float32 (17, 3) root-relative camera-frame metres (joint 0 is zero).
        action, subject, index  int64 scalars (index: position in this dataset).
        flip             bool scalar: flip this sample (training only; the engine applies it).
    """

    def __init__(self, labels, image_dir, image_mode="auto", image_size=(CROP_HEIGHT, CROP_WIDTH),
                 keypoints_2d="cpn", train=False, flip_prob=0.5, seed=0, blank_images=False,
                 skip_bad_images=False, source="labels", image_dir_origin=None):
        """
        Args:
            labels: {column: (N, ...) array} with the columns image, center, scale, joints_3d,
                joints_2d_<keypoints_2d>, joints_2d_<keypoints_2d>_crop, action, subject of
                datasets/label_checks.py (e.g. from `datasets.labels.load_labels`).
            image_dir: folder the label `image` paths are relative to (must exist unless
                blank_images).
            image_mode: "cropped" (stored 256x192 crops), "full" (full frames cropped here with
                center/scale) or "auto" (decided for every image from its own size: exactly
                256x192 is a crop, anything else a full frame).
            image_size: (height, width) of the returned images.
            keypoints_2d: "cpn" (detected) or "gt" 2D joints.
            train: draw `flip` with `flip_prob` from (seed, epoch, index); eval never flips.
            blank_images: return images of the mean colour without reading any file (ablation).
            skip_bad_images: frames whose image is missing are dropped now (counted in
                `num_skipped`). An image that fails while loading (corrupt, truncated) is
                replaced by the next good frame in training; in evaluation (train=False) the
                frame keeps its own labels and gets a blank image, so that every
                validation frame is counted exactly once (counted in
                `num_skipped_while_loading`). False raises instead.
            source: the label file, for messages.
            image_dir_origin: how `image_dir` was chosen (a config key), for messages.
        """
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        if keypoints_2d not in KEYPOINT_SOURCES:
            raise ValueError(f"keypoints_2d must be one of {KEYPOINT_SOURCES}, "
                             f"got {keypoints_2d!r}")
        self.labels = labels
        self.image_dir = image_dir
        self.requested_image_mode = image_mode  # what decides, for every image
        self.image_mode = image_mode  # with "auto": what the first image is, for reports
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keypoints_2d = keypoints_2d
        self.train = bool(train)
        self.flip_prob = float(flip_prob) if train else 0.0
        self.seed = int(seed)
        self.blank_images = bool(blank_images)
        self.skip_bad_images = bool(skip_bad_images)
        self.source = source
        self.epoch = 0
        self.num_skipped = 0  # frames dropped at construction (missing images)
        self.num_skipped_while_loading = 0  # unreadable images met in __getitem__ (this process)
        self._bad_positions = set()

        if not self.blank_images and not os.path.isdir(image_dir):
            origin = image_dir_origin or "data.root and data.image_dir"
            raise MetaPoseError(
                f"image folder '{os.path.abspath(image_dir)}' does not exist (chosen by "
                f"{origin}) for the labels of '{source}'. Put the images there (the published "
                "layout: images/<sequence>/<sequence>_<frame>.jpg beside the data/ folder), or "
                "set data.image_dir to the folder that holds them.")
        self.frames = np.arange(len(labels["image"]), dtype=np.int64)
        if self.skip_bad_images and not self.blank_images:
            self._drop_missing_images()
        if len(self.frames) == 0:
            raise MetaPoseError(f"label file '{source}' has no frames to use.")
        if image_mode == "auto" and not self.blank_images:
            self.image_mode = self._first_image_mode()

    # -- construction helpers -------------------------------------------------------------

    def image_path(self, frame):
        """Path of the image of label row `frame`: inside `image_dir`, never outside it."""
        relative = self.labels["image"][frame].decode("utf-8", "replace")
        problem = unsafe_image_path(relative)
        if problem is not None:
            raise _UnsafeImagePath(
                f"label file '{self.source}': row {int(frame)} has the image path "
                f"{shown_image_path(relative)}, "
                f"which {problem}; image paths must be relative to the image folder. Re-create "
                "the labels with the dataset's preparation tool (tools/prepare_*.py).")
        return os.path.join(self.image_dir, relative)

    def _drop_missing_images(self):
        """skip_bad_images: training drops the frames whose image is missing; evaluation keeps
        them (blank images at load time) so that every validation frame counts once."""
        exists = np.fromiter((os.path.isfile(self.image_path(f)) for f in self.frames),
                             dtype=bool, count=len(self.frames))
        self.num_skipped = int((~exists).sum())
        if self.num_skipped == len(self.frames):
            raise MetaPoseError(
                f"none of the {len(self.frames)} images of '{self.source}' exist under "
                f"'{os.path.abspath(self.image_dir)}' (first: '{self.image_path(self.frames[0])}'). "
                "Check data.root and data.image_dir.")
        if not self.num_skipped:
            return
        first = self.image_path(self.frames[np.argmin(exists)])
        if self.train:
            logger.warning("skipping %d of %d frames of '%s' whose image is missing (first: '%s')",
                           self.num_skipped, len(self.frames), self.source, first)
            self.frames = self.frames[exists]
        else:
            logger.warning("%d of %d frames of '%s' have no image (first: '%s'); they are "
                           "evaluated with blank images of the mean colour so that every frame "
                           "counts once",
                           self.num_skipped, len(self.frames), self.source, first)
            self._bad_positions.update(np.flatnonzero(~exists).tolist())

    def _first_image_mode(self):
        """'cropped' or 'full' after the first readable image (reported; with image_mode auto
        every image is still decided on its own)."""
        for position in range(min(len(self.frames), _MAX_CONSECUTIVE_BAD)):
            path = self.image_path(self.frames[position])
            try:
                image = read_image(path)
            except MetaPoseError:
                if not self.skip_bad_images:
                    raise
                continue
            mode = "cropped" if is_crop_image(image) else "full"
            logger.info("image_mode auto: '%s' is %dx%d (HxW), a %s; every image is decided by "
                        "its own size", path, image.shape[0], image.shape[1],
                        "crop" if mode == "cropped" else "full frame")
            return mode
        raise MetaPoseError(f"none of the first {_MAX_CONSECUTIVE_BAD} images of '{self.source}' "
                            f"under '{self.image_dir}' can be read.")

    # -- sampling -------------------------------------------------------------------------

    def set_epoch(self, epoch):
        """Selects the flip draws of `epoch` (call before iterating; workers copy it on start)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.frames)

    def _image(self, frame):
        """(H, W, 3) uint8 RGB at image_size for label row `frame`."""
        path = self.image_path(frame)
        image = read_image(path)
        crop = is_crop_image(image)
        mode = self.requested_image_mode
        if mode == "full" and crop:
            raise _ImageModeMismatch(
                f"image '{path}' is {CROP_HEIGHT}x{CROP_WIDTH} (HxW), the size of a stored crop, "
                "but data.image_mode is full, which would crop it again with the full-frame box. "
                "Set data.image_mode=auto (decides per image) or cropped.")
        if mode == "cropped" and image.shape[0] * CROP_WIDTH != image.shape[1] * CROP_HEIGHT:
            raise _ImageModeMismatch(
                f"image '{path}' is {image.shape[0]}x{image.shape[1]} (HxW) but data.image_mode "
                f"is cropped, which expects {CROP_HEIGHT}x{CROP_WIDTH} crops. Set "
                "data.image_mode=full for full frames (or auto, which decides per image).")
        if mode == "full" or (mode == "auto" and not crop):
            center, scale = self.labels["center"][frame], self.labels["scale"][frame]
            if not (np.isfinite(center).all() and np.isfinite(scale).all() and scale[0] > 0):
                raise _ImageModeMismatch(
                    f"image '{path}' is a {image.shape[0]}x{image.shape[1]} (HxW) full frame, but "
                    f"row {int(frame)} of '{self.source}' has no person box (center {center}, "
                    f"scale {scale}) to crop it with. Use the 256x192 crops, or re-create the "
                    "labels with the preparation tool.")
            image = crop_from_full_frame(image, center, scale)
        return resize_image(image, self.image_size)

    def _load(self, position):
        """(position, image) for `position`: its own image, or with skip_bad_images the next
        good frame (training) or a blank image (`blank_image`) for the same frame (evaluation)."""
        if self.blank_images:
            return position, blank_image(self.image_size)
        last_error = None
        for attempt in range(_MAX_CONSECUTIVE_BAD):
            candidate = (position + attempt) % len(self.frames)
            if candidate in self._bad_positions:
                if not self.train:  # every validation frame counts once, with its own labels
                    return position, blank_image(self.image_size)
                continue
            try:
                return candidate, self._image(self.frames[candidate])
            except MetaPoseError as error:
                if not self.skip_bad_images or isinstance(error, _ConfigurationError):
                    raise
                last_error = error
                self._bad_positions.add(candidate)
                self.num_skipped_while_loading += 1
                logger.warning("%s frame %d of '%s' (%d unreadable images met while loading in "
                               "this process): %s",
                               "skipping" if self.train else "evaluating with a blank image",
                               candidate, self.source, self.num_skipped_while_loading, error)
                if not self.train:  # every validation frame counts once, with its own labels
                    return position, blank_image(self.image_size)
        raise MetaPoseError(f"{_MAX_CONSECUTIVE_BAD} consecutive images of '{self.source}' from "
                            f"position {position} cannot be read under '{self.image_dir}' "
                            f"(last: {last_error}).")

    def __getitem__(self, index):
        if not 0 <= index < len(self.frames):
            raise IndexError(f"index {index} out of range for {len(self.frames)} frames")
        position, image = self._load(int(index))
        frame = self.frames[position]
        labels = self.labels
        joints_3d = np.array(labels["joints_3d"][frame], dtype=np.float32)
        joints_3d -= joints_3d[:1]
        flip = self.train and flip_decision(self.seed, self.epoch, index, self.flip_prob)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "keypoints_2d": torch.from_numpy(
                np.array(labels[f"joints_2d_{self.keypoints_2d}"][frame], dtype=np.float32)),
            "keypoints_2d_crop": torch.from_numpy(
                np.array(labels[f"joints_2d_{self.keypoints_2d}_crop"][frame], dtype=np.float32)),
            "joints_3d": torch.from_numpy(joints_3d),
            "action": torch.tensor(int(labels["action"][frame]), dtype=torch.int64),
            "subject": torch.tensor(int(labels["subject"][frame]), dtype=torch.int64),
            "index": torch.tensor(position, dtype=torch.int64),
            "flip": torch.tensor(bool(flip)),
        }

    # -- pickling (spawned workers): re-open memory maps instead of copying their contents ---

    def __getstate__(self):
        state = self.__dict__.copy()
        state["labels"] = {name: ("__mmap__", column.filename)
                           if isinstance(column, np.memmap) and column.filename else column
                           for name, column in self.labels.items()}
        return state

    def __setstate__(self, state):
        state["labels"] = {name: np.load(column[1], mmap_mode="r")
                           if isinstance(column, tuple) and column[:1] == ("__mmap__",) else column
                           for name, column in state["labels"].items()}
        self.__dict__.update(state)
