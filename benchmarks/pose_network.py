"""Throughput of the pose network alone, plain vs fast sampling (CPU or CUDA).

`benchmarks/throughput.py` times whole steps; on a CPU the CLIP text encoder takes most of
them. This script replaces the two frozen encoders by their precomputed outputs (the same maps
and text features at every step: the encoders are frozen, so that changes nothing downstream)
and times what is left: a training step of the pose network (forward, MPJPE, backward, AdamW)
and a flip-test evaluation forward (2B frames for B samples). Both paths are built with the
same seed and weights; the plain one runs the per-level/head/point reference sampling
(`models.reference_paths`). The two paths run alternately, step by step, and each figure is the
fastest of `--steps` steps.

    OMP_NUM_THREADS=1 python benchmarks/pose_network.py --batch-size 8 --json
"""

import argparse
import json
import os
import sys
import time
import warnings

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "experiments", "human36m", "human36m.yaml")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from models import build_model  # noqa: E402
from models.reference_paths import reference_paths  # noqa: E402
from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       resolve_device, run_cli)
from utils.config import load_config  # noqa: E402
from utils.metrics_h36m import mpjpe  # noqa: E402

RANDOM_ENCODERS = ["model.image_encoder.pretrained=null", "model.text_encoder.pretrained=null"]


class FixedTextFeatures(nn.Module):
    """Stands in for the frozen text encoder: the features it gave once, per sample."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, actions):
        return self.features[: actions.shape[0]]


def _inputs(batch, height, width, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    keypoints_2d = torch.rand(batch, 17, 2, generator=generator) * 2 - 1
    crop = torch.rand(batch, 17, 2, generator=generator) * torch.tensor([191.0, 255.0])
    actions = torch.arange(batch) % 15 + 2
    target = torch.randn(batch, 17, 3, generator=generator) * 0.2
    return [t.to(device) for t in (images, keypoints_2d, crop, actions, target - target[:, :1])]


def _model(config_path, overrides, inputs, device):
    """The model of `config_path` (seed 0, random encoders) with its encoders replaced by their
    outputs for `inputs`."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(load_config(config_path, RANDOM_ENCODERS + overrides)).to(device)
    images, _, _, actions, _ = inputs
    both = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        maps = {len(images): model.encode_images(images), len(both): model.encode_images(both)}
        features = model.text_encoder(torch.cat([actions, actions]))
    model.encode_images = lambda x: maps[x.shape[0]]
    model.text_encoder = FixedTextFeatures(features)
    return model


def _timed(function, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def step_functions(model, inputs):
    """(train_step, eval_step) closures for one model: a training step of the pose network and
    a flip-test-sized evaluation forward."""
    images, keypoints_2d, crop, actions, target = inputs
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    def train_step():
        model.train()
        loss = mpjpe(model(images, keypoints_2d, crop, actions), target).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    doubled = [torch.cat([x, x]) for x in (images, keypoints_2d, crop, actions)]

    def eval_step():
        model.eval()
        with torch.no_grad():
            model(*doubled)

    return {"train": train_step, "eval": eval_step}


def measure(models, inputs, steps, warmup, device):
    """Per path and kind, the fastest of `steps` steps, the paths interleaved step by step so
    that a busy machine slows both alike (on shared CPUs the minimum is the stable figure)."""
    functions = {name: step_functions(model, inputs) for name, model in models.items()}
    times = {name: {"train": [], "eval": []} for name in models}
    for repeat in range(warmup + steps):
        for kind in ("train", "eval"):
            for name in models:
                seconds = _timed(functions[name][kind], device)
                if repeat >= warmup:
                    times[name][kind].append(seconds)
    batch = len(inputs[0])
    return {name: {f"{kind}_samples_per_s": batch / min(values)
                   for kind, values in kinds.items()} for name, kinds in times.items()}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="experiment YAML (default: the paper's, "
                             "experiments/human36m/human36m.yaml)")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="samples per training step (default 8; evaluation runs twice as "
                             "many: the flip test)")
    parser.add_argument("--steps", type=positive_int, default=5,
                        help="timed steps per path and kind; the fastest counts (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    add_overrides_argument(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    device = resolve_device(args.device)
    height, width = load_config(args.config).data.image_size
    inputs = _inputs(args.batch_size, height, width, device)
    report = {"config": os.path.relpath(args.config), "batch": args.batch_size,
              "steps": args.steps, "threads": torch.get_num_threads(), "device": str(device)}
    models = {name: _model(args.config, list(args.overrides), inputs, device)
              for name in ("plain", "fast")}
    with reference_paths(models["plain"]):
        report.update(measure(models, inputs, args.steps, args.warmup, device))
    for key in ("train_samples_per_s", "eval_samples_per_s"):
        report[key.replace("samples_per_s", "speedup")] = report["fast"][key] / report["plain"][key]
    if args.json:
        print(json.dumps(report))
    else:
        for name in ("plain", "fast"):
            print(f"{name:5s}  train {report[name]['train_samples_per_s']:8.2f} samples/s  "
                  f"eval (flip test) {report[name]['eval_samples_per_s']:8.2f} samples/s")
        print(f"fast / plain: train {report['train_speedup']:.2f}x, "
              f"eval {report['eval_speedup']:.2f}x")


if __name__ == "__main__":
    run_cli(main)
