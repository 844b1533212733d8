"""Throughput benchmark of the MetaPose model step (DESIGN 5 and 6).

Random inputs of the real shapes; measures the training step (forward, backward, AdamW step),
evaluation with flip test, the frozen image encoder forward alone (the ceiling a training step
approaches), the text encoder time per step, and peak memory. `--data DIR` measures the real
DataLoader on the JPEGs of a (synthetic) set instead, so input stalls show up.

    python benchmarks/throughput.py --device cpu --batch 8
    python benchmarks/throughput.py --device cuda --batch 400 --json
    python benchmarks/throughput.py --data data/synthetic --workers 16 --batch 400
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from utils.cli import run_cli  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.flip import flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop  # noqa: E402
from utils.geometry import normalize_images  # noqa: E402
from utils.skeleton import ACTION_IDS, CROP_HEIGHT, CROP_WIDTH, NUM_JOINTS  # noqa: E402

DEFAULT_CONFIG = "experiments/human36m/human36m.yaml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 400 on cuda, 8 on cpu")
    parser.add_argument("--image_encoder", choices=("hrnet_32", "hrnet_48"), default=None)
    parser.add_argument("--text_encoder", choices=("ViT-B/32", "ViT-L/14"), default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 cuda, 3 cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 cuda, 1 cpu)")
    parser.add_argument("--plain", action="store_true",
                        help="the unoptimised path: fp32, no channels-last, full 77-token text, reference sampling")
    parser.add_argument("--data", default=None, help="measure the DataLoader on this data root instead")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for --data")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def build_config(args):
    overrides = ["model.image_encoder.pretrained=null", "model.text_encoder.pretrained=null"]
    if args.image_encoder:
        overrides.append(f"model.image_encoder.type={args.image_encoder}")
    if args.text_encoder:
        overrides.append(f"model.text_encoder.type={args.text_encoder}")
    if args.plain:
        overrides += ["speed.amp=none", "speed.channels_last=false", "speed.truncate_text=false",
                      "speed.fast_sampling=false", "speed.compile=false"]
    return load_config(args.config, overrides + list(args.overrides))


def random_batch(batch, image_size, device):
    """Inputs of the real shapes and ranges (uint8 images as the DataLoader delivers them)."""
    height, width = image_size
    generator = torch.Generator().manual_seed(0)
    crop = torch.rand(batch, NUM_JOINTS, 2, generator=generator) * torch.tensor([CROP_WIDTH - 1, CROP_HEIGHT - 1])
    return {
        "image": torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator).to(device),
        "keypoints_2d": (torch.rand(batch, NUM_JOINTS, 2, generator=generator) * 2 - 1).to(device),
        "keypoints_2d_crop": crop.to(device),
        "joints_3d": (torch.randn(batch, NUM_JOINTS, 3, generator=generator) * 0.3).to(device),
        "action": torch.tensor(ACTION_IDS)[torch.randint(0, len(ACTION_IDS), (batch,), generator=generator)].to(device),
    }


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, steps, warmup, device):
    """Seconds per call of `function` after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def autocast(config, device):
    amp = config.speed.amp
    if device.type != "cuda" or amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def measure_model(config, device, batch, steps, warmup):
    from models import build_model
    from models.speed import prepare_model_for_speed, uses_channels_last

    model = build_model(config).to(device)
    prepare_model_for_speed(model, config, device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)
    data = random_batch(batch, config.data.image_size, device)
    images = normalize_images(data["image"])
    if uses_channels_last(config, device):
        images = images.contiguous(memory_format=torch.channels_last)

    def train_step():
        model.train()
        with autocast(config, device):
            pred = model(images, data["keypoints_2d"], data["keypoints_2d_crop"], data["action"])
            loss = (pred.float() - data["joints_3d"]).norm(dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step():
        model.eval()
        with torch.inference_mode(), autocast(config, device):
            pred = model(images, data["keypoints_2d"], data["keypoints_2d_crop"], data["action"])
            mirrored = model(flip_images(images), flip_keypoints_2d(data["keypoints_2d"]),
                             flip_keypoints_crop(data["keypoints_2d_crop"]), data["action"])
            (pred.float() + flip_joints_3d(mirrored.float())) / 2

    def encoder_step():
        with torch.inference_mode(), autocast(config, device):
            model.image_encoder(images)

    unique_actions = data["action"].unique()

    def text_step():
        model.train()
        features = model.text_encoder(unique_actions)
        features.float().sum().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, steps, warmup, device)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    eval_s = timed(eval_step, steps, warmup, device)
    encoder_s = timed(encoder_step, steps, warmup, device)
    text_s = timed(text_step, steps, warmup, device)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    return {
        "train_samples_per_s": batch / train_s,
        "eval_samples_per_s": batch / eval_s,
        "encoder_samples_per_s": batch / encoder_s,
        "train_over_encoder": (batch / train_s) / (batch / encoder_s),
        "text_s_per_step": text_s,
        "text_actions_per_step": int(unique_actions.numel()),
        "peak_mem_gb": peak / 1024 ** 3,
        "peak_mem_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "trainable_parameters": trainable,
    }


def measure_data(config, args, batch, steps, warmup):
    from datasets import build_dataset
    from datasets.samplers import TrainSampler

    overrides = [f"data.root={args.data}"]
    config = load_config(args.config, overrides + list(args.overrides))
    dataset = build_dataset(config, "train")
    workers = args.workers if args.workers is not None else config.data.num_workers
    sampler = TrainSampler(len(dataset), 1, 0, config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         pin_memory=torch.cuda.is_available(), drop_last=True,
                                         persistent_workers=workers > 0)
    if len(loader) < warmup + 1:
        raise MetaPoseError(f"--data {args.data} holds {len(dataset)} training frames, too few for "
                            f"{warmup + 1} batches of {batch}; use a smaller --batch or a larger set.")
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    count = 0
    start = time.perf_counter()
    for _ in range(min(steps, len(loader) - warmup)):
        count += next(iterator)["image"].shape[0]
    elapsed = time.perf_counter() - start
    return {"data_samples_per_s": count / elapsed, "workers": workers, "frames": len(dataset)}


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MetaPoseError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu.")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (400 if on_gpu else 8)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    config = build_config(args)
    if args.data:
        figures = measure_data(config, args, batch, steps, warmup)
    else:
        figures = measure_model(config, device, batch, steps, warmup)
    report = {
        "device": describe_device(device), "torch": torch.__version__, "batch": batch,
        "image_encoder": config.model.image_encoder.type, "text_encoder": config.model.text_encoder.type,
        "image_size": list(config.data.image_size), "amp": config.speed.amp if on_gpu else "none",
        "plain": args.plain, "steps": steps, **figures,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    run_cli(main)
