"""Throughput of the pose network alone, plain vs fast sampling (CPU or CUDA).

`benchmarks/throughput.py` times whole steps; on a CPU the CLIP text encoder takes most of
them. This script replaces the two frozen encoders by their precomputed outputs (the same maps
and text features at every step: the encoders are frozen, so that changes nothing downstream)
and times what is left: a training step of the pose network (forward, MPJPE, backward, AdamW)
and a flip-test evaluation forward (2B frames for B samples). Both paths are built with the
same seed and weights; the plain one uses the per-level/head/point reference sampling. The
two paths run alternately, step by step, and each figure is the fastest of `--steps` steps.

    OMP_NUM_THREADS=1 python benchmarks/pose_network.py --batch 8 --json
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
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from models import build_model  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.metrics_h36m import mpjpe  # noqa: E402

PLAIN = ["speed.fast_sampling=false", "speed.sample_then_project=false"]
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/human36m/human36m.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    height, width = load_config(args.config).data.image_size
    inputs = _inputs(args.batch, height, width, device)
    report = {"config": args.config, "batch": args.batch, "steps": args.steps,
              "threads": torch.get_num_threads(), "device": args.device}
    models = {name: _model(args.config, overrides + list(args.overrides), inputs, device)
              for name, overrides in (("plain", PLAIN), ("fast", []))}
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
    main()
