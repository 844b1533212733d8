"""Datasets by name: `build_dataset` and `build_metric_set` dispatch on `data.dataset` to the
dataset's module (datasets/registry.py); what every dataset shares is here: where the label file
is, the synthetic set written when it is missing, the image folder and the sample options."""

import logging
import os

from datasets.content_stamp import stamp_problem, write_stamp
from datasets.registry import dataset_module
from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")


# The version of what the synthetic generators write (datasets/synthetic.py, synthetic_3dhp.py):
# raised whenever their labels or images change, so that sets written before are written again.
# 2: eyes and ears drawn, COCO-17 joints beside the labels (datasets/coco_joints_file.py).
SYNTHETIC_VERSION = 2
SYNTHETIC_STAMP = "synthetic_stamp.json"


def synthetic_settings(dataset, train_frames, val_frames, seed, full_frames=False,
                       train_file=None, val_file=None):
    """What a synthetic set's content depends on: its stamp (datasets/content_stamp.py)."""
    return {"dataset": dataset, "generator_version": SYNTHETIC_VERSION,
            "train_frames": int(train_frames), "val_frames": int(val_frames), "seed": int(seed),
            "full_frames": bool(full_frames), "train_file": train_file, "val_file": val_file}


def write_synthetic_set(dataset, out_dir, train_frames, val_frames, seed, full_frames=False,
                        train_file=None, val_file=None, verbose=True):
    """Writes the synthetic set of `dataset` into `out_dir` and stamps it; returns the
    generator's summary."""
    summary = dataset_module(dataset).write_synthetic(
        out_dir, train_frames, val_frames, seed, full_frames=full_frames,
        train_file=train_file, val_file=val_file, verbose=verbose)
    write_stamp(os.path.join(out_dir, SYNTHETIC_STAMP), synthetic_settings(
        dataset, train_frames, val_frames, seed, full_frames,
        os.path.basename(summary["train_file"]), os.path.basename(summary["val_file"])))
    return summary


def _config_settings(config):
    data, synthetic = config.data, config.data.synthetic
    return synthetic_settings(data.dataset, synthetic.train_frames, synthetic.val_frames,
                              synthetic.seed, synthetic.full_frames, data.train_file,
                              data.val_file)


def synthetic_set_problem(config, label_file=None):
    """None when data.root holds the synthetic set that config.data.synthetic asks for (both
    label files and a matching stamp); otherwise why it must be written (again). With
    `label_file` (the one split being built) only that file has to exist: a folder holding one
    split's labels alone was made by hand and is left as it is."""
    data = config.data
    paths = [os.path.join(data.root, name) for name in (data.train_file, data.val_file)]
    for path in [label_file] if label_file else paths:
        if file_problem(path) == "does not exist":
            return f"'{os.path.basename(path)}' does not exist"
    if any(file_problem(path) == "does not exist" for path in paths):
        return None
    stamp = os.path.join(data.root, SYNTHETIC_STAMP)
    if not os.path.lexists(stamp):  # label files made otherwise: used as they are, unless
        # stage 1 needs the COCO-17 joints that sets written before the stamp existed lack
        from datasets.coco_joints_file import coco_file_path

        coco = coco_file_path(os.path.join(data.root, data.train_file))
        if data.synthetic.trunk.enabled and not os.path.exists(coco):
            return f"it has no stamp and no '{os.path.basename(coco)}' for stage 1"
        return None
    return stamp_problem(stamp, _config_settings(config))


def _write_synthetic(config, module, reason):
    data, synthetic = config.data, config.data.synthetic
    logger.info("generating a synthetic %s set (%d train, %d validation frames) in '%s': %s",
                module.TITLE, synthetic.train_frames, synthetic.val_frames, data.root, reason)
    write_synthetic_set(data.dataset, data.root, synthetic.train_frames, synthetic.val_frames,
                        synthetic.seed, full_frames=synthetic.full_frames,
                        train_file=data.train_file, val_file=data.val_file)


def resolve_image_dir(data):
    """(folder, how it was chosen) for the images of `config.data`.

    `data.image_dir` set: that folder (relative to data.root, or absolute). Left at null: the
    `images` folder inside data.root when it exists (the synthetic sets' layout), otherwise the
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
    """The dataset of `split` ("train" or "validation") as configured by `config.data`, built by
    the module of `data.dataset` (datasets/registry.py).

    When `data.synthetic.enabled` and a label file is missing or the set's stamp does not
    match the settings and generator version (`synthetic_set_problem`), rank 0 writes the
    synthetic set of that dataset into `data.root` first (other ranks must wait for it, e.g.
    behind a barrier).
    Raises MetaPoseError for a missing or invalid label file, an empty split, or settings the
    dataset cannot serve.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = config.data
    module = dataset_module(data.dataset)
    module.check_settings(config)
    train = split == "train"
    label_file = os.path.join(data.root, data.train_file if train else data.val_file)
    if data.synthetic.enabled and rank == 0:
        reason = synthetic_set_problem(config, label_file)
        if reason is not None:
            _write_synthetic(config, module, reason)
    problem = file_problem(label_file)
    if problem is not None:
        raise MetaPoseError(
            f"label file '{shown_path(label_file)}' ({split} split of {module.TITLE}) {problem}. "
            f"{module.PREPARE_HINT}, write a synthetic set with tools/make_synthetic.py "
            f"--dataset {data.dataset} --out DIR, or set data.synthetic.enabled=true to generate "
            "one into data.root; data.root, data.train_file and data.val_file locate the file.")
    image_dir, origin = resolve_image_dir(data)
    frame_options = dict(
        image_dir=image_dir, image_mode=data.image_mode, image_size=tuple(data.image_size),
        train=train,
        # flip_mode batch: the engine flips whole batches (datasets/flip_draws.py)
        flip_prob=(config.train.flip_prob
                   if train and config.train.flip_mode == "sample" else 0.0),
        seed=config.seed, blank_images=data.blank_images,
        skip_bad_images=data.skip_bad_images, source=label_file, image_dir_origin=origin)
    dataset = module.build(config, split, label_file, frame_options)
    logger.info("%s split: %d frames from '%s' (%s images%s)", split, len(dataset), label_file,
                "blank" if data.blank_images else dataset.image_mode,
                "" if data.blank_images else f" from '{os.path.abspath(image_dir)}'")
    return dataset


def build_metric_set(config, dataset):
    """A fresh metric set (utils/metric_set.py) for evaluating `dataset`, a dataset of
    `data.dataset` built by `build_dataset`: the one its module names (H36M: per-action P1/P2,
    MPI-INF-3DHP: PCK/AUC/MPJPE per sequence)."""
    return dataset_module(config.data.dataset).metric_set(dataset)
