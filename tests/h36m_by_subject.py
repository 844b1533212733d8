"""A third dataset, registered by tests/test_dataset_registry.py only: H36M frames with their
ground-truth 2D joints, scored per subject (tests/metrics_by_subject.py). With its metrics module
and tests/data/h36m_by_subject.yaml it is everything a new dataset needs (datasets/registry.py)."""

import numpy as np

from datasets.h36m import write_synthetic  # noqa: F401  (its synthetic set is the H36M one)
from datasets.labels import load_labels
from datasets.pose_frames import PoseFrameDataset
from tests.metrics_by_subject import SubjectErrors
from utils.errors import MetaPoseError

TITLE = "H36M by subject"
PREPARE_HINT = "Prepare its labels (the H36M ones) with tools/prepare_h36m.py"


def check_settings(config):
    """Scored on ground-truth 2D joints only."""
    if config.data.keypoints_2d != "gt":
        raise MetaPoseError(f"data.keypoints_2d is {config.data.keypoints_2d!r}, but the "
                            "H36M-by-subject set is scored on ground-truth 2D joints. Set "
                            "data.keypoints_2d=gt.")


def build(config, split, label_file, frame_options):
    return PoseFrameDataset(load_labels(label_file, cache_dir=config.data.cache_dir),
                            keypoints_2d="gt", **frame_options)


def metric_set(dataset):
    return SubjectErrors(np.unique(np.asarray(dataset.labels["subject"])[dataset.frames]))
