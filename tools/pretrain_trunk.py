"""Stage 1 of the synthetic demo (docs/method.md §1.5): trains the config's HRNet as a COCO-17
heatmap network on the synthetic training crops and writes it, final_layer included, in the
official pose_hrnet layout, for the demo to freeze as `model.image_encoder.pretrained`.

    python tools/pretrain_trunk.py --config experiments/synthetic/demo.yaml
    python tools/pretrain_trunk.py --config experiments/mpi_inf_3dhp/synthetic_demo.yaml \
        --out /tmp/trunk.pth data.synthetic.trunk.epochs=4

train.py runs it by itself when data.synthetic.trunk.enabled and the file is missing or stale
(its stamp: the synthetic set and the data.synthetic.trunk settings). It writes the synthetic
set first when that is missing, and prints the trunk's 2D accuracy on the validation crops
(PCK at 2 and 4 pixels of the encoder's input, mean pixel error).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import add_overrides_argument, run_cli  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(
        description="Stage 1 of the synthetic demo: train the HRNet trunk as a COCO-17 heatmap "
                    "network on the synthetic crops and write it in the official layout.")
    parser.add_argument("--config", required=True,
                        help="experiment YAML of a synthetic demo (its data.synthetic and "
                             "model.image_encoder settings)")
    parser.add_argument("--out", default=None,
                        help="trunk file to write (default: model.image_encoder.pretrained)")
    parser.add_argument("--force", action="store_true",
                        help="train even when the file is current (by default a current file "
                             "is kept and its recorded accuracy printed)")
    add_overrides_argument(parser)
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from models.trunk_pretraining import ensure_trunk, pretrain_trunk, trunk_problem
    from utils.config import load_config
    from utils.logger import setup_logger
    from datasets import build_dataset

    config = load_config(args.config, args.overrides)
    if args.out is not None:
        name_output_flag("--out", args.out)
        config.model.image_encoder.pretrained = args.out
    config.data.synthetic.trunk.enabled = True
    setup_logger()
    if config.data.synthetic.enabled:
        build_dataset(config, "train")  # writes the synthetic set when it is missing or stale
    reason = trunk_problem(config)
    if reason is None and not args.force:
        ensure_trunk(config)  # logs the accuracy recorded with the current file
        return 0
    accuracy = pretrain_trunk(config)
    print(" ".join(f"{key}={value:.4g}" for key, value in accuracy.items()), flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
