"""Human3.6M (docs/method.md §1), one dataset of datasets/registry.py: label pickles of
tools/prepare_h36m.py read as columns (datasets/labels.py), samples of the base class, scored
per action with Protocol #1 and #2 (utils/metrics_h36m.py)."""

from datasets.labels import TRAIN_FILE, VAL_FILE, load_labels
from datasets.pose_frames import PoseFrameDataset
from utils.metrics_h36m import ActionErrorAccumulator

TITLE = "H36M"
PREPARE_HINT = "Prepare the real H36M labels with tools/prepare_h36m.py"


def check_settings(config):
    """H36M serves every setting: CPN or ground-truth 2D joints, both text modes."""


def write_synthetic(out_dir, train_frames, val_frames, seed, *, full_frames=False,
                    train_file=None, val_file=None, verbose=True):
    """The synthetic H36M set of datasets/synthetic.py (256x192 crops or full frames)."""
    from datasets.synthetic import generate_synthetic  # heavy (rendering): only when needed

    return generate_synthetic(out_dir, train_frames, val_frames, seed, full_frames=full_frames,
                              verbose=verbose, train_file=train_file or TRAIN_FILE,
                              val_file=val_file or VAL_FILE)


def build(config, split, label_file, frame_options):
    """The frames of the label pickle `label_file` with the 2D joints of data.keypoints_2d."""
    labels = load_labels(label_file, cache_dir=config.data.cache_dir)
    return PoseFrameDataset(labels, keypoints_2d=config.data.keypoints_2d, **frame_options)


def metric_set(dataset):
    """P1 and P2 per action and in total; the score is P1."""
    return ActionErrorAccumulator()
