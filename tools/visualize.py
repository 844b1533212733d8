"""Draws a few validation frames with a checkpoint's 3D predictions next to the ground truth.

Usage:
    python tools/visualize.py --config FILE --checkpoint FILE --out out.png [--num 4]
        [--split validation] [--device cpu] [key=value ...]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from utils.checkpoint import load_checkpoint, load_model_state, load_model_weights  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True,
                        help="engine checkpoint (dict with 'model'), a raw model state_dict, or "
                             "a checkpoint of the published train.py")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--num", type=int, default=4, help="frames to draw, evenly spaced over the split")
    parser.add_argument("--split", default="validation", choices=("validation", "train"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", help="config overrides, dotted.key=value")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.num < 1:
        raise MetaPoseError(f"--num is {args.num}; it must be at least 1.")
    config = load_config(args.config, args.overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MetaPoseError(f"--device {args.device} was asked for but CUDA is not available; "
                            "use --device cpu.")

    # Any checkpoint: this project's, a plain state dict, or the published train.py's.
    state, info = load_model_state(load_checkpoint(args.checkpoint), args.checkpoint)

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
        raise MetaPoseError(f"cannot write '{args.out}' ({error.strerror or error}); "
                            "pass a writable path with --out.") from None
    print(f"wrote {len(drawings)} frames to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
