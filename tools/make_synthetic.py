"""Command line for the synthetic data sets: writes labels + JPEGs in the real format to a folder.

    python tools/make_synthetic.py --out data/synthetic --train-frames 2000 --val-frames 500 \
        --seed 0
    python tools/make_synthetic.py --out data/synthetic_full ... --full-frames   # 1000x1002 frames
    python tools/make_synthetic.py --dataset mpi_inf_3dhp --out data/synthetic_3dhp \
        --train-frames 2000 --val-frames 500 --seed 0

--dataset is any dataset of datasets/registry.py; its module writes the set. H36M (the default,
datasets/synthetic.py) writes OUT/h36m_train.pkl, OUT/h36m_validation.pkl and
OUT/images/<sequence>/<sequence>_<frame>.jpg in the format of the real data (docs/method.md §1.1).
MPI-INF-3DHP (datasets/synthetic_3dhp.py) writes OUT/data_train_3dhp.npz, OUT/data_test_3dhp.npz
(CA-PF's layout, docs/method.md §6; --val-frames counts valid test frames) and 256x192 crops under
OUT/images. Point data.root at OUT to train on it.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import write_synthetic_set  # noqa: E402
from datasets.registry import DATASET_MODULES  # noqa: E402
from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.config import MAX_SEED  # noqa: E402


def _int_at_least(minimum, what, maximum=None):
    """An argparse type: an integer >= `minimum` (and <= `maximum`), else a message naming
    `what` it must be."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, f"an integer from 0 to {MAX_SEED}", MAX_SEED)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Write a synthetic H36M or MPI-INF-3DHP data set (labels and JPEG images in "
                    "the real format) for running MetaPose without the real data.")
    parser.add_argument("--dataset", choices=DATASET_MODULES.keys(), default="h36m",
                        help="which data set to imitate (default h36m)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train-frames", type=_positive_int, default=2000,
                        help="training entries: H36M subjects 1,5,6,7,8 / 3DHP S1-S8 camera "
                             "frames (default 2000)")
    parser.add_argument("--val-frames", type=_positive_int, default=500,
                        help="validation entries: H36M subjects 9,11 / valid 3DHP test frames of "
                             "TS1-TS6 (default 500)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="random seed; the same arguments give identical files (default 0)")
    parser.add_argument("--full-frames", action="store_true",
                        help="write full 1000x1002 frames instead of 256x192 person crops")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    write_synthetic_set(args.dataset, args.out, args.train_frames, args.val_frames, args.seed,
                        full_frames=args.full_frames)
    return 0


if __name__ == "__main__":
    run_cli(main)
