"""Dataset construction from the config: label columns, images, synthetic fallback."""

import logging
import os

from datasets.h36m import H36MDataset
from datasets.labels import load_labels
from utils.errors import MetaPoseError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


def _generate_synthetic(config):
    from datasets.synthetic import generate_synthetic  # heavy (rendering); only when needed

    synthetic = config.data.synthetic
    logger.info("generating a synthetic H36M-format set (%d train, %d validation frames) in '%s'",
                synthetic.train_frames, synthetic.val_frames, config.data.root)
    generate_synthetic(config.data.root, synthetic.train_frames, synthetic.val_frames,
                       synthetic.seed, full_frames=synthetic.full_frames)


def resolve_image_dir(data):
    """(folder, how it was chosen) for the images of `config.data`.

    `data.image_dir` set: that folder (relative to data.root, or absolute). Left at null: the
    `images` folder inside data.root when it exists (synthetic sets, older layouts), otherwise the
    published layout: `images/` beside the data.root folder (with data.root = data, the
    repository's top-level images/).
    """
    if data.image_dir is not None:
        return os.path.join(data.root, data.image_dir), f"data.image_dir={data.image_dir!r}"
    inside = os.path.join(data.root, "images")
    if os.path.isdir(inside):
        return inside, "data.image_dir=null: the images folder inside data.root"
    beside = os.path.join(os.path.dirname(os.path.abspath(data.root)), "images")
    return beside, (f"data.image_dir=null: no '{os.path.abspath(inside)}', so the published "
                    "layout, images/ beside data.root")


def build_dataset(config, split, rank=0):
    """The H36MDataset of `split` ("train" or "validation") as configured by `config.data`.

    When `data.synthetic.enabled` and the label file is missing, rank 0 generates the synthetic
    set into `data.root` first (other ranks must wait for it, e.g. behind a barrier).
    Raises MetaPoseError for a missing or invalid label file or an empty split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    train = split == "train"
    label_file = os.path.join(data.root, data.train_file if train else data.val_file)
    if not os.path.isfile(label_file) and data.synthetic.enabled and rank == 0:
        _generate_synthetic(config)
    if not os.path.isfile(label_file):
        raise MetaPoseError(
            f"label file '{label_file}' ({split} split) does not exist. Prepare the real H36M "
            "labels with tools/prepare_h36m.py, write a synthetic set with "
            "tools/make_synthetic.py --out DIR, or set data.synthetic.enabled=true to generate "
            "one into data.root; data.root, data.train_file and data.val_file locate the file.")
    labels = load_labels(label_file, cache_dir=data.cache_dir)
    if len(labels["image"]) == 0:
        raise MetaPoseError(f"label file '{label_file}' ({split} split) has no frames.")
    image_dir, origin = resolve_image_dir(data)
    dataset = H36MDataset(
        labels,
        image_dir=image_dir,
        image_dir_origin=origin,
        image_mode=data.image_mode,
        image_size=tuple(data.image_size),
        keypoints_2d=data.keypoints_2d,
        train=train,
        flip_prob=config.train.flip_prob if train else 0.0,
        seed=config.seed,
        blank_images=data.blank_images,
        skip_bad_images=data.skip_bad_images,
        source=label_file,
    )
    logger.info("%s split: %d frames from '%s' (%s images%s)", split, len(dataset), label_file,
                "blank" if data.blank_images else dataset.image_mode,
                "" if data.blank_images else f" from '{os.path.abspath(image_dir)}'")
    return dataset
