"""The registered datasets: every `data.dataset` name and the module that owns that dataset.

Imports nothing heavy, so utils/config.py (imported everywhere) and the tools can read the names;
a dataset module is imported the first time it is used. A dataset module provides every part of
`PARTS` (checked when it is imported):

    TITLE                  its name in messages, e.g. "MPI-INF-3DHP".
    PREPARE_HINT           how to make its label files from the released data: the sentence that
                           names its preparation tool.
    check_settings(config) raises MetaPoseError for settings the dataset cannot serve (e.g.
                           MPI-INF-3DHP has ground-truth 2D joints only).
    write_synthetic(out_dir, train_frames, val_frames, seed, *, full_frames=False,
                    train_file=None, val_file=None, verbose=True)
                           writes a synthetic set in the format of the real one (None: the file
                           names its preparation tool writes); returns a summary dict.
    build(config, split, label_file, frame_options)
                           the dataset of one split: a datasets.pose_frames.PoseFrameDataset (or
                           subclass) of `label_file`, built with the keyword arguments
                           `frame_options` that every dataset shares (datasets/__init__.py).
    metric_set(dataset)    a fresh utils.metric_set.MetricSet that scores the built `dataset`.

Adding a dataset is its module (datasets/<name>.py), its metrics module (a MetricSet), an
experiment YAML with `data.dataset: <name>`, and its line in DATASET_MODULES.
"""

import importlib

from utils.errors import MetaPoseError

DATASET_MODULES = {
    "h36m": "datasets.h36m",
    "mpi_inf_3dhp": "datasets.mpi_inf_3dhp",
}

PARTS = {
    "TITLE": str,
    "PREPARE_HINT": str,
    "check_settings": callable,
    "write_synthetic": callable,
    "build": callable,
    "metric_set": callable,
}


def dataset_names():
    """The registered names, e.g. ("h36m", "mpi_inf_3dhp")."""
    return tuple(DATASET_MODULES)


def missing_parts(module):
    """The names of the PARTS that `module` lacks or holds as the wrong kind of value."""
    missing = []
    for name, kind in PARTS.items():
        value = getattr(module, name, None)
        if not (callable(value) if kind is callable else isinstance(value, kind)):
            missing.append(name)
    return missing


def dataset_module(name):
    """The module of the registered dataset `name`, imported and checked for every part.

    Raises:
        MetaPoseError for a name that is not registered or a module that lacks a part.
    """
    if name not in DATASET_MODULES:
        raise MetaPoseError(f"data.dataset is {name!r}, which is not a registered dataset; the "
                            f"registered ones are {', '.join(map(repr, DATASET_MODULES))} "
                            "(datasets/registry.py).")
    path = DATASET_MODULES[name]
    module = importlib.import_module(path)
    missing = missing_parts(module)
    if missing:
        raise MetaPoseError(
            f"the module '{path}' of dataset {name!r} lacks {', '.join(missing)}: every dataset "
            f"module provides {', '.join(PARTS)} (datasets/registry.py says what each is), so "
            "that it is built, checked, prepared, synthesised and scored like every other.")
    return module
