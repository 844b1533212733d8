"""MPI-INF-3DHP (docs/method.md §6), one dataset of datasets/registry.py: samples with exactly the
fields and conventions of the H36M ones, read from the columns of a CA-PF label file
(datasets/mpi_inf_3dhp_labels.py), scored with PCK, AUC and MPJPE (utils/metrics_3dhp.py).

Joints are in H36M order (the 3DHP joints mapped by `MPI_TO_H36M`), so the H36M left/right pairs
of utils/skeleton.py are the 3DHP ones and the engine's flips (training augmentation and flip
test) apply unchanged. Invalid test frames are dropped here; the images of the remaining frames
are read, cropped and resized by the base class of every dataset, datasets/pose_frames.py (one
implementation of crops, flips and bad-image handling for all datasets).
"""

import logging

import numpy as np
import torch

from datasets.mpi_inf_3dhp_labels import (PLACEHOLDER_ACTION, TEST_FILE, TRAIN_FILE,
                                          load_3dhp_labels, sequence_sort_key)
from datasets.pose_frames import PoseFrameDataset
from utils.errors import MetaPoseError
from utils.metrics_3dhp import PoseAccuracyAccumulator
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

logger = logging.getLogger(__name__)

TITLE = "MPI-INF-3DHP"
PREPARE_HINT = "Prepare the real MPI-INF-3DHP labels with tools/prepare_3dhp.py"


def _sequence_ids(names_column):
    """(sorted sequence names, (N,) int32 id of every row): names in numeric order."""
    unique, inverse = np.unique(np.asarray(names_column), return_inverse=True)
    names = [name.decode("ascii") for name in unique.tolist()]
    order = sorted(range(len(names)), key=lambda i: sequence_sort_key(names[i]))
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    return tuple(names[i] for i in order), rank[inverse.reshape(-1)]


class MPIINF3DHPDataset(PoseFrameDataset):
    """MPI-INF-3DHP frames as model inputs and targets.

    A sample is the dict of `datasets.pose_frames.PoseFrameDataset` (image uint8 (3, H, W);
    keypoints_2d (17, 2) normalised screen coordinates; keypoints_2d_crop (17, 2) crop pixels;
    joints_3d (17, 3) root-relative camera-frame metres; action, subject, index, flip), where
        keypoints_2d     are the ground-truth 2D joints (3DHP labels have no detections),
        action           is PLACEHOLDER_ACTION (2) for every frame: 3DHP has no action labels,
                         and the `joint` text mode ignores it,
        subject          is the training subject 1..8, or 0 for test sequences,
    plus
        sequence         int64 scalar: position of the frame's sequence in `sequence_names`
                         ("S1 Seq1", ... or "TS1", ...), read by the 3DHP metric set.
    Only valid frames are samples (`num_invalid` counts the others).
    """

    def __init__(self, columns, image_dir, image_mode="auto", image_size=(CROP_HEIGHT, CROP_WIDTH),
                 train=False, flip_prob=0.5, seed=0, blank_images=False, skip_bad_images=False,
                 source="labels", image_dir_origin=None):
        """
        Args:
            columns: from `datasets.mpi_inf_3dhp_labels.load_3dhp_labels`.
            Others: as for PoseFrameDataset. Full frames (image_mode "full", or "auto" on full
                frames) need the person boxes that this repository's label files carry.
        """
        valid = np.asarray(columns["valid"], dtype=bool)
        self.num_invalid = int((~valid).sum())
        if self.num_invalid:  # test files: a few thousand rows, copied
            columns = {name: np.asarray(column)[valid] for name, column in columns.items()}
        if len(columns["image"]) == 0:
            raise MetaPoseError(f"label file '{source}' has no valid frame (all "
                                f"{self.num_invalid} frames are marked invalid).")
        self.sequence_names, sequence_ids = _sequence_ids(columns["sequence"])
        labels = dict(columns)
        labels["sequence_id"] = sequence_ids
        labels["action"] = np.broadcast_to(np.int32(PLACEHOLDER_ACTION), sequence_ids.shape)
        self.has_boxes = bool(np.isfinite(np.asarray(columns["center"])).all()
                              and np.isfinite(np.asarray(columns["scale"])).all())
        if image_mode == "full":
            self._check_boxes(source)
        super().__init__(labels, image_dir, image_mode=image_mode, image_size=image_size,
                         keypoints_2d="gt", train=train, flip_prob=flip_prob, seed=seed,
                         blank_images=blank_images, skip_bad_images=skip_bad_images,
                         source=source, image_dir_origin=image_dir_origin)
        if self.image_mode == "full":
            self._check_boxes(source)

    def _check_boxes(self, source):
        if not self.has_boxes:
            raise MetaPoseError(
                f"label file '{source}' has no person boxes ('center', 'scale'), so full frames "
                "cannot be cropped (a file written by CA-PF's preparation, which keeps only "
                "crops). Use the 256x192 crops (data.image_mode=cropped) or re-create the labels "
                "with tools/prepare_3dhp.py.")

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        frame = self.frames[int(sample["index"])]
        sample["sequence"] = torch.tensor(int(self.labels["sequence_id"][frame]),
                                          dtype=torch.int64)
        return sample


# -- the parts of a registered dataset (datasets/registry.py) ---------------------------------


def check_settings(config):
    """3DHP labels have ground-truth 2D joints only and no action labels."""
    if config.data.keypoints_2d != "gt":
        raise MetaPoseError(
            f"data.keypoints_2d is {config.data.keypoints_2d!r}, but MPI-INF-3DHP labels carry "
            "ground-truth 2D joints only (as CA-PF feeds them). Set data.keypoints_2d=gt, as "
            "experiments/mpi_inf_3dhp/mpi_inf_3dhp.yaml does.")
    if config.model.text_encoder.mode != "joint":
        raise MetaPoseError(
            f"model.text_encoder.mode is {config.model.text_encoder.mode!r}, but MPI-INF-3DHP "
            "has no H36M action labels to describe. Set model.text_encoder.mode=joint, as "
            "experiments/mpi_inf_3dhp/mpi_inf_3dhp.yaml does.")


def write_synthetic(out_dir, train_frames, val_frames, seed, *, full_frames=False,
                    train_file=None, val_file=None, verbose=True):
    """The synthetic MPI-INF-3DHP set of datasets/synthetic_3dhp.py, in 256x192 crops only."""
    if full_frames:
        raise MetaPoseError(
            "full frames were asked for (data.synthetic.full_frames=true or --full-frames), but "
            "the synthetic MPI-INF-3DHP set is written as 256x192 crops only (CA-PF's layout). "
            "Ask for crops; tools/prepare_3dhp.py --full-frames writes full frames of the real "
            "data.")
    from datasets.synthetic_3dhp import generate_synthetic_3dhp  # heavy (rendering)

    return generate_synthetic_3dhp(out_dir, train_frames, val_frames, seed,
                                   train_file=train_file or TRAIN_FILE,
                                   test_file=val_file or TEST_FILE, verbose=verbose)


def build(config, split, label_file, frame_options):
    """The valid frames of the CA-PF label file `label_file` (validation: the test sequences
    TS1-TS6)."""
    dataset = MPIINF3DHPDataset(load_3dhp_labels(label_file, cache_dir=config.data.cache_dir),
                                **frame_options)
    if dataset.num_invalid:
        logger.info("%s split: left out %d frames marked invalid in '%s'", split,
                    dataset.num_invalid, label_file)
    return dataset


def metric_set(dataset):
    """PCK / AUC / MPJPE per sequence, scene and in total; the score is MPJPE."""
    return PoseAccuracyAccumulator(dataset.sequence_names)
