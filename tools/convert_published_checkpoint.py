"""Converts a checkpoint of the authors' published train.py once into this project's format.

Usage:
    python tools/convert_published_checkpoint.py --checkpoint checkpoint/best_epoch_hrnet_32.bin \
        --out checkpoint/metapose_hrnet_32.pt [--image-encoder hrnet_32] [--text-encoder ViT-B/32]
        [--config experiments/human36m/human36m.yaml] [KEY=VALUE ...]

The published file is read with weights-only loading, converted (models/published_checkpoint.py),
and checked against the model that --config (default: the paper configuration) builds with the
encoders of the file (or the ones passed): nothing missing, nothing left over, same shapes. The
output holds the converted weights ("model"), the source file's name (not its path on this
machine) and sha256, its epoch and the encoder types; `train.py --eval --checkpoint OUT.pt` and `--checkpoint OUT.pt` load it without
converting again (every loader also accepts the published file itself).
"""

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import (file_sha256, load_checkpoint, load_model_state,  # noqa: E402
                              load_model_weights, save_checkpoint)
from utils.atomic_files import cannot_write, name_output_flag  # noqa: E402
from utils.cli import add_overrides_argument, run_cli  # noqa: E402
from utils.config import CHOICES, load_config  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(REPO_ROOT, "experiments", "human36m", "human36m.yaml")
WEIGHTS_FORMAT = "metapose-weights-v1"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="file written by the published train.py")
    parser.add_argument("--out", required=True, help="converted checkpoint to write")
    parser.add_argument("--image-encoder", choices=CHOICES["model.image_encoder.type"],
                        help="HRNet of the file (default: read from the file)")
    parser.add_argument("--text-encoder", choices=CHOICES["model.text_encoder.type"],
                        help="CLIP model of the file (default: read from the file)")
    parser.add_argument("--config", default=PAPER_CONFIG,
                        help="configuration the file is checked against (default: the paper's, "
                             "which is right for a published file: it carries no config of "
                             "this project)")
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    return build_parser().parse_intermixed_args(argv)


def verification_config(args, info):
    """The config whose model the converted weights must fill exactly."""
    flags = []
    image = args.image_encoder or (info.image_encoder
                                   if info.image_encoder in CHOICES["model.image_encoder.type"]
                                   else None)
    text = args.text_encoder or (info.text_encoder
                                 if info.text_encoder in CHOICES["model.text_encoder.type"]
                                 else None)
    if image:
        flags.append(f"model.image_encoder.type={image}")
    if text:
        flags.append(f"model.text_encoder.type={text}")
    return load_config(args.config, flags + list(args.overrides))


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    checkpoint = load_checkpoint(args.checkpoint)
    state, info = load_model_state(checkpoint, args.checkpoint)
    if not info.published:
        raise MetaPoseError(
            f"'{args.checkpoint}' is not a checkpoint of the published train.py (it has no "
            "learnable_prompts and no CLIP tower under text_encoder.*). A checkpoint of this "
            "project needs no conversion: pass it to train.py --eval/--checkpoint directly.")
    config = verification_config(args, info)

    from models import build_model  # heavy: imported once the input is known to be good

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short sentence warning of joint mode, if any
        model = build_model(config, weights_from_checkpoint=True)
    load_model_weights(model, state, args.checkpoint, info)  # complete, nothing left over
    model_cfg = config.model
    converted = {
        "format": WEIGHTS_FORMAT, "model": state, "epoch": info.epoch, "lr": info.lr,
        "image_encoder": model_cfg.image_encoder.type, "text_encoder": model_cfg.text_encoder.type,
        "prompt_tokens": info.prompt_tokens,
        # the file's name and content hash identify it; its path on this machine would
        # disclose the converting machine's folders to whoever receives the file
        "source": {"file": os.path.basename(os.path.abspath(args.checkpoint)),
                   "sha256": file_sha256(args.checkpoint),
                   "format": "published train.py checkpoint",
                   "dropped": dict(info.dropped)},
    }
    try:
        save_checkpoint(converted, args.out)
    except OSError as error:
        raise cannot_write(args.out, error) from None
    print(f"{info.summary()}")
    print(f"wrote {args.out} ({len(state)} tensors, {model_cfg.image_encoder.type} / "
          f"{model_cfg.text_encoder.type}); use it with train.py --eval --checkpoint {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
