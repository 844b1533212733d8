"""The H36M dataset (DESIGN 1): one sample per frame and camera, read from the label columns."""

import logging
import os

import numpy as np
import torch

from datasets.images import crop_from_full_frame, read_image, resize_image
from utils.errors import MetaPoseError
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

logger = logging.getLogger(__name__)

IMAGE_MODES = ("auto", "cropped", "full")
KEYPOINT_SOURCES = ("cpn", "gt")
_FLIP_DOMAIN = 0x5F11B  # separates the flip stream from any other use of the same seed
_BATCH_FLIP_DOMAIN = 0xBA7C4F11B  # the whole-batch flips of train.flip_mode=batch
_MAX_CONSECUTIVE_BAD = 100


class _ImageModeMismatch(MetaPoseError):
    """A configuration error, raised even with skip_bad_images (it concerns every frame)."""


def flip_decision(seed, epoch, index, flip_prob, domain=_FLIP_DOMAIN):
    """Whether sample `index` is flipped in `epoch`: a pure function of its arguments.

    Every worker, process and resumed run draws the same value, whatever the loading order.
    """
    if flip_prob <= 0.0:
        return False
    entropy = [int(seed) % (1 << 63), int(epoch), int(index), int(domain)]
    draw = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return float(draw) / float(1 << 64) < flip_prob


def batch_flip_decision(seed, epoch, batch_index, flip_prob, rank=0):
    """Whether the whole `batch_index`-th batch of process `rank` flips in `epoch`
    (train.flip_mode=batch, the published augmentation): a pure function of its arguments, so a
    resumed run flips the same batches. Each process draws its own batches' flips."""
    return flip_decision(seed, epoch, batch_index, flip_prob,
                         domain=_BATCH_FLIP_DOMAIN + (int(rank) << 40))


class H36MDataset(torch.utils.data.Dataset):
    """H36M frames as model inputs and targets (CONTRACT "Data interfaces").

    A sample is a dict:
        image            uint8 (3, H, W) RGB, H, W = image_size; not normalised, not flipped
                         (all zeros with blank_images).
        keypoints_2d     float32 (17, 2) normalised screen coordinates (cpn or gt joints).
        keypoints_2d_crop float32 (17, 2) the same joints in 192x256 crop pixels.
        joints_3d        float32 (17, 3) root-relative camera-frame metres (joint 0 is zero).
        action, subject, index  int64 scalars (index: position in this dataset).
        flip             bool scalar: flip this sample (training only; the engine applies it).
    """

    def __init__(self, labels, image_dir, image_mode="auto", image_size=(CROP_HEIGHT, CROP_WIDTH),
                 keypoints_2d="cpn", train=False, flip_prob=0.5, seed=0, blank_images=False,
                 skip_bad_images=False, source="labels"):
        """
        Args:
            labels: columns from `datasets.labels.load_labels`.
            image_dir: folder the label `image` paths are relative to.
            image_mode: "cropped" (stored 256x192 crops), "full" (full frames cropped here with
                center/scale) or "auto" (decided from the first image's size).
            image_size: (height, width) of the returned images.
            keypoints_2d: "cpn" (detected) or "gt" 2D joints.
            train: draw `flip` with `flip_prob` from (seed, epoch, index); eval never flips.
            blank_images: return zero images without reading any file (ablation).
            skip_bad_images: drop frames whose image is missing (checked now) or corrupt
                (found while loading: the next good frame is returned instead); False raises.
            source: the label file, for messages.
        """
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        if keypoints_2d not in KEYPOINT_SOURCES:
            raise ValueError(f"keypoints_2d must be one of {KEYPOINT_SOURCES}, "
                             f"got {keypoints_2d!r}")
        self.labels = labels
        self.image_dir = image_dir
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
        self.num_skipped_while_loading = 0  # corrupt images met in __getitem__ (this process)
        self._bad_positions = set()

        self.frames = np.arange(len(labels["image"]), dtype=np.int64)
        if self.skip_bad_images and not self.blank_images:
            self._drop_missing_images()
        if len(self.frames) == 0:
            raise MetaPoseError(f"label file '{source}' has no frames to use.")
        self.image_mode = image_mode
        if image_mode == "auto" and not self.blank_images:
            self.image_mode = self._detect_image_mode()

    # -- construction helpers -------------------------------------------------------------

    def image_path(self, frame):
        """Absolute-or-relative path of the image of label row `frame`."""
        return os.path.join(self.image_dir, self.labels["image"][frame].decode("utf-8"))

    def _drop_missing_images(self):
        exists = np.fromiter((os.path.isfile(self.image_path(f)) for f in self.frames),
                             dtype=bool, count=len(self.frames))
        self.num_skipped = int((~exists).sum())
        if self.num_skipped == len(self.frames):
            raise MetaPoseError(
                f"none of the {len(self.frames)} images of '{self.source}' exist under "
                f"'{self.image_dir}' (first: '{self.image_path(self.frames[0])}'). Check "
                "data.root and data.image_dir.")
        if self.num_skipped:
            first = self.image_path(self.frames[np.argmin(exists)])
            logger.warning("skipping %d of %d frames of '%s' whose image is missing (first: '%s')",
                           self.num_skipped, len(self.frames), self.source, first)
            self.frames = self.frames[exists]

    def _detect_image_mode(self):
        """'cropped' when the first readable image has the crop's 4:3 portrait shape."""
        for position in range(min(len(self.frames), _MAX_CONSECUTIVE_BAD)):
            path = self.image_path(self.frames[position])
            try:
                height, width = read_image(path).shape[:2]
            except MetaPoseError:
                if not self.skip_bad_images:
                    raise
                continue
            mode = "cropped" if height * CROP_WIDTH == width * CROP_HEIGHT else "full"
            logger.info("image_mode auto: '%s' is %dx%d (HxW), using %s images", path, height,
                        width, mode)
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
        if self.image_mode == "full":
            labels = self.labels
            image = crop_from_full_frame(image, labels["center"][frame], labels["scale"][frame])
        elif image.shape[0] * CROP_WIDTH != image.shape[1] * CROP_HEIGHT:
            raise _ImageModeMismatch(
                f"image '{path}' is {image.shape[0]}x{image.shape[1]} (HxW) but data.image_mode "
                f"is cropped, which expects {CROP_HEIGHT}x{CROP_WIDTH} crops. Set "
                "data.image_mode=full for full frames (or auto).")
        return resize_image(image, self.image_size)

    def _load(self, position):
        """(position, image) of the first frame at or after `position` whose image reads."""
        if self.blank_images:
            return position, np.zeros(self.image_size + (3,), dtype=np.uint8)
        last_error = None
        for attempt in range(_MAX_CONSECUTIVE_BAD):
            candidate = (position + attempt) % len(self.frames)
            if candidate in self._bad_positions:
                continue
            try:
                return candidate, self._image(self.frames[candidate])
            except MetaPoseError as error:
                if not self.skip_bad_images or isinstance(error, _ImageModeMismatch):
                    raise
                last_error = error
                self._bad_positions.add(candidate)
                self.num_skipped_while_loading += 1
                logger.warning("skipping frame %d of '%s' (%d skipped while loading in this "
                               "process): %s", candidate, self.source,
                               self.num_skipped_while_loading, error)
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
