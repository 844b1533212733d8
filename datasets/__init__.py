"""Dataset construction from the config: `data.dataset` picks H36M or MPI-INF-3DHP; label
columns, images, synthetic fallback."""

import logging
import os

from datasets.pose_frames import PoseFrameDataset
from datasets.labels import load_labels
from utils.errors import MetaPoseError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
_NAMES = {"h36m": "", "mpi_inf_3dhp": " of MPI-INF-3DHP"}  # for messages
_PREPARE_HINTS = {
    "h36m": "Prepare the real H36M labels with tools/prepare_h36m.py, write a synthetic set with "
            "tools/make_synthetic.py --out DIR",
    "mpi_inf_3dhp": "Prepare the real MPI-INF-3DHP labels with tools/prepare_3dhp.py, write a "
                    "synthetic set with tools/make_synthetic.py --dataset mpi_inf_3dhp --out DIR",
}


def _generate_synthetic(config):
    synthetic = config.data.synthetic
    logger.info("generating a synthetic %s set (%d train, %d validation frames) in '%s'",
                config.data.dataset, synthetic.train_frames, synthetic.val_frames,
                config.data.root)
    if config.data.dataset == "mpi_inf_3dhp":
        from datasets.synthetic_3dhp import generate_synthetic_3dhp  # heavy (rendering)

        if synthetic.full_frames:
            raise MetaPoseError(
                "data.synthetic.full_frames is true, but the synthetic MPI-INF-3DHP set is "
                "written as 256x192 crops only (the CA-PF layout). Set "
                "data.synthetic.full_frames=false (tools/prepare_3dhp.py --full-frames writes "
                "full frames of the real data).")
        generate_synthetic_3dhp(config.data.root, synthetic.train_frames, synthetic.val_frames,
                                synthetic.seed, train_file=config.data.train_file,
                                test_file=config.data.val_file)
        return
    from datasets.synthetic import generate_synthetic  # heavy (rendering); only when needed

    generate_synthetic(config.data.root, synthetic.train_frames, synthetic.val_frames,
                       synthetic.seed, full_frames=synthetic.full_frames)


def _check_3dhp_settings(config):
    """3DHP labels have ground-truth 2D only and no action labels."""
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
    """The dataset of `split` ("train" or "validation") as configured by `config.data`:
    a PoseFrameDataset of H36M labels, or an MPIINF3DHPDataset with `data.dataset: mpi_inf_3dhp` (validation = the
    test sequences TS1-TS6, valid frames only).

    When `data.synthetic.enabled` and the label file is missing, rank 0 generates the synthetic
    set of that dataset into `data.root` first (other ranks must wait for it, e.g. behind a
    barrier).
    Raises MetaPoseError for a missing or invalid label file, an empty split, or settings the
    dataset cannot serve.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    kind = data.dataset
    if kind == "mpi_inf_3dhp":
        _check_3dhp_settings(config)
    train = split == "train"
    label_file = os.path.join(data.root, data.train_file if train else data.val_file)
    if not os.path.isfile(label_file) and data.synthetic.enabled and rank == 0:
        _generate_synthetic(config)
    if not os.path.isfile(label_file):
        raise MetaPoseError(
            f"label file '{label_file}' ({split} split{_NAMES[kind]}) does not exist. "
            f"{_PREPARE_HINTS[kind]}, or set data.synthetic.enabled=true to generate one into "
            "data.root; data.root, data.train_file and data.val_file locate the file.")
    image_dir, origin = resolve_image_dir(data)
    options = dict(image_dir=image_dir, image_mode=data.image_mode,
                   image_size=tuple(data.image_size), train=train,
                   # flip_mode batch: the engine flips whole batches (batch_flip_decision)
                   flip_prob=(config.train.flip_prob
                              if train and config.train.flip_mode == "sample" else 0.0),
                   seed=config.seed,
                   blank_images=data.blank_images, skip_bad_images=data.skip_bad_images,
                   source=label_file)
    if kind == "mpi_inf_3dhp":
        from datasets.mpi_inf_3dhp import MPIINF3DHPDataset
        from datasets.mpi_inf_3dhp_labels import load_3dhp_labels

        dataset = MPIINF3DHPDataset(load_3dhp_labels(label_file, cache_dir=data.cache_dir),
                                    **options)
        if dataset.num_invalid:
            logger.info("%s split: left out %d frames marked invalid in '%s'", split,
                        dataset.num_invalid, label_file)
    else:
        labels = load_labels(label_file, cache_dir=data.cache_dir)
        if len(labels["image"]) == 0:
            raise MetaPoseError(f"label file '{label_file}' ({split} split) has no frames.")
        dataset = PoseFrameDataset(labels, keypoints_2d=data.keypoints_2d, image_dir_origin=origin,
                              **options)
    logger.info("%s split: %d frames from '%s' (%s images%s)", split, len(dataset), label_file,
                "blank" if data.blank_images else dataset.image_mode,
                "" if data.blank_images else f" from '{os.path.abspath(image_dir)}'")
    return dataset
