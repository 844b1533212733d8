"""The COCO-17 2D joints of a synthetic set's crops, in a file beside its label file.

The label files keep their real-data formats (docs/method.md §1.1, §6); the synthetic generators
also know the COCO keypoints they draw (nose, eyes, ears and the 12 limb joints, in
inference/keypoints.py's COCO_NAMES order) and write them here, for training the stage-1 HRNet
trunk of the synthetic demo (tools/pretrain_trunk.py, docs/method.md §1.5):

    <label file without extension>_coco17.npz
        image   (N,) bytes   relative image path, as in the label file
        joints  (N, 17, 2)   float32 (x, y) in 192x256 crop pixels
"""

import os

import numpy as np

from utils.atomic_files import atomic_write
from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path

COCO_SUFFIX = "_coco17.npz"


def coco_file_path(label_path):
    """The COCO joints file that belongs to the label file `label_path`."""
    return os.path.splitext(label_path)[0] + COCO_SUFFIX


def write_coco_file(label_path, images, joints):
    """Writes the COCO joints of the crops `images` (relative paths) beside `label_path`."""
    names = np.array([os.fsencode(name) if isinstance(name, str) else bytes(name)
                      for name in images], dtype=np.bytes_)
    joints = np.asarray(joints, dtype=np.float32).reshape(len(names), 17, 2)
    atomic_write(coco_file_path(label_path),
                 lambda stream: np.savez(stream, image=names, joints=joints))


def read_coco_file(label_path):
    """{relative image path (bytes): (17, 2) float32 crop pixels} of `label_path`'s COCO file.

    Raises:
        MetaPoseError when the file is missing or not such a file.
    """
    path = coco_file_path(label_path)
    problem = file_problem(path)
    remedy = ("It is written with the synthetic set: delete the set's folder (or its stamp "
              "file) and run again with data.synthetic.enabled=true, or write the set with "
              "tools/make_synthetic.py.")
    if problem is not None:
        raise MetaPoseError(f"COCO joints file '{shown_path(path)}' {problem}. {remedy}")
    try:
        with np.load(path, allow_pickle=False) as data:
            names, joints = data["image"], data["joints"]
    except (OSError, ValueError, KeyError) as error:
        raise MetaPoseError(f"COCO joints file '{shown_path(path)}' is not readable "
                            f"({type(error).__name__}: {error}). {remedy}") from None
    if joints.shape != (len(names), 17, 2):
        raise MetaPoseError(f"COCO joints file '{shown_path(path)}' holds joints of shape "
                            f"{joints.shape} for {len(names)} images, not (N, 17, 2). {remedy}")
    return {bytes(name): joints[index] for index, name in enumerate(names)}
