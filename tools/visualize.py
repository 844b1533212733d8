"""Draws a few validation frames with a checkpoint's 3D predictions next to the ground truth.

Usage:
    python tools/visualize.py --checkpoint FILE --out out.png [--config FILE] [--num 4]
        [--split validation] [--device cpu|cuda|cuda:N] [KEY=VALUE ...]

The model and the data set come from the config stored in the checkpoint (the paper's for a
published file) unless --config names another; KEY=VALUE overrides apply on top of either, e.g.
data.root=/path/to/data when the data sits elsewhere than where the run was trained.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from utils.checkpoint import load_checkpoint, load_model_state, load_model_weights  # noqa: E402
from inference.loading import config_for_checkpoint  # noqa: E402
from utils.atomic_files import cannot_write, name_output_flag  # noqa: E402
from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       resolve_device, run_cli)
from utils.errors import MetaPoseError  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="best.pt / last.pt of a run, a converted or a published checkpoint, "
                             "or a raw model state_dict (then with --config)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--config", help="experiment YAML (default: the config stored in the "
                                         "checkpoint; the paper's for published files)")
    parser.add_argument("--num", type=positive_int, default=4,
                        help="frames to draw, evenly spaced over the split (default 4)")
    parser.add_argument("--split", default="validation", choices=("validation", "train"),
                        help="split to draw from (default validation)")
    add_device_argument(parser)
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    return build_parser().parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    device = resolve_device(args.device)

    # Any checkpoint: this project's, a plain state dict, or the published train.py's.
    checkpoint = load_checkpoint(args.checkpoint)
    state, info = load_model_state(checkpoint, args.checkpoint)
    config = config_for_checkpoint(checkpoint, info, args.checkpoint, args.config, args.overrides)
    del checkpoint

    # Imported here: they are heavy, and input errors should not wait for them.
    from datasets import build_dataset, build_metric_set
    from datasets.transforms import prepare_batch
    from models.flip_test import predict
    from models import build_model
    from utils.visualization import save_samples_png

    model = build_model(config, weights_from_checkpoint=True)
    load_model_weights(model, state, args.checkpoint, info)
    model.to(device).eval()

    dataset = build_dataset(config, args.split)
    if len(dataset) == 0:
        raise MetaPoseError(f"the {args.split} split of '{config.data.root}' has no frames to draw.")
    count = min(args.num, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    # Training samples may carry a random-flip flag: drop it, so the frame is drawn as stored.
    samples = [{key: value for key, value in dataset[int(i)].items() if key != "flip"}
               for i in indices]
    batch = default_collate(samples)
    with torch.no_grad():  # the evaluation path: same normalisation, flip test and precision
        inputs = prepare_batch(batch, device)
        pose = predict(model, inputs, config.eval.flip_test, amp=config.speed.amp).float().cpu()

    metrics = build_metric_set(config, dataset)  # titles the frames as evaluation figures do
    drawings = []
    for position, (sample, pred) in enumerate(zip(samples, pose)):
        image = sample["image"]
        drawings.append({
            "image": image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image,
            "keypoints_crop": sample["keypoints_2d_crop"],
            "pred_3d": pred,
            "gt_3d": sample["joints_3d"],
            "title": metrics.sample_title(batch, position),
        })
    try:
        save_samples_png(args.out, drawings)
    except OSError as error:
        raise cannot_write(args.out, error) from None
    print(f"wrote {len(drawings)} frames to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
