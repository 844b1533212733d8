"""Frozen image encoder benchmark: the HRNet forward pass with its batch norms folded into its
convolutions (what a frozen encoder runs) against the plain layers, same weights, same input.

    python benchmarks/encoder.py --device cpu --batch-size 8
    python benchmarks/encoder.py --device cuda --batch-size 800 --amp bf16 --channels-last --json

Prints samples/s of both, their ratio (on a CPU also from the process's CPU seconds, the steadier
figure on a shared machine) and the largest difference of the maps (relative to each map's
largest value). The HRNet is randomly initialised with batch-norm statistics that make
every layer matter (the folding is exact for any weights; a real checkpoint runs the same
number of operations). `--compile` also measures torch.compile of the folded trunk (minutes
of compiling on a CPU).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.throughput import (describe_device, load_average, relative_distance,  # noqa: E402
                                   synchronize)
from models.hrnet import HRNET_TYPES, HRNet  # noqa: E402
from utils.cli import add_device_argument, positive_int, resolve_device, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.precision import autocast_context  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_device_argument(parser)
    parser.add_argument("--image-encoder", choices=sorted(HRNET_TYPES), default="hrnet_32",
                        help="HRNet type (default hrnet_32, the paper's)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per call (default 400 on cuda, 8 on cpu)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, default=(256, 192),
                        metavar=("H", "W"), help="input height and width (default 256 192)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="timed calls (default 20 cuda, 3 cpu)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default 5 cuda, 1 cpu)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true",
                        help="weights and input in channels-last format")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the folded trunk")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser


def encoder_with_statistics(type_name, seed=0):
    """A frozen HRNet of `type_name` whose batch norms all do something (random affine
    parameters and running statistics, from a private generator)."""
    generator = torch.Generator().manual_seed(seed)
    encoder = HRNet(HRNET_TYPES[type_name])
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
    return encoder.freeze()


def seconds_per_call(encoder, images, amp, steps, warmup):
    """(wall-clock seconds, this process's CPU seconds) per call. On a CPU shared with other
    jobs the CPU seconds are the steadier figure: time spent waiting for a core is not in them
    (with one compute thread they are the work itself)."""
    device = images.device
    with torch.no_grad(), autocast_context(device, amp):
        for _ in range(warmup):
            encoder(images)
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            encoder(images)
        synchronize(device)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    if args.amp != "none" and not on_gpu:
        raise MetaPoseError(f"--amp {args.amp} is CUDA-only here (as speed.amp in training); "
                            "leave it out on the CPU.")
    batch = args.batch_size or (400 if on_gpu else 8)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    encoder = encoder_with_statistics(args.image_encoder).to(device)
    images = torch.randn(batch, 3, *args.image_size,
                         generator=torch.Generator().manual_seed(1)).to(device)
    if args.channels_last:
        encoder.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    report = {"device": describe_device(device), "torch": torch.__version__,
              "image_encoder": args.image_encoder, "batch": batch,
              "image_size": list(args.image_size), "steps": steps, "warmup": warmup,
              "amp": args.amp, "channels_last": args.channels_last,
              "load_average_start": load_average()}
    with torch.no_grad(), autocast_context(device, args.amp):
        encoder.fold_batch_norm = False
        reference = encoder(images)
        encoder.fold_batch_norm = True
        folded_maps = encoder(images)
    report["max_rel_diff"] = max(relative_distance(folded, plain)
                                 for folded, plain in zip(folded_maps, reference))
    del reference, folded_maps
    encoder.fold_batch_norm = False
    plain, plain_cpu = seconds_per_call(encoder, images, args.amp, steps, warmup)
    encoder.fold_batch_norm = True
    folded, folded_cpu = seconds_per_call(encoder, images, args.amp, steps, warmup)
    report.update(plain_samples_per_s=batch / plain, folded_samples_per_s=batch / folded,
                  folded_speedup=plain / folded)
    if not on_gpu:
        report.update(plain_cpu_s_per_call=plain_cpu, folded_cpu_s_per_call=folded_cpu,
                      folded_speedup_cpu_time=plain_cpu / folded_cpu)
    if args.compile:
        encoder.compile()
        report["compiled_samples_per_s"] = batch / seconds_per_call(
            encoder, images, args.amp, steps, max(warmup, 2))[0]
    if on_gpu:
        report["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
        report["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1024 ** 3
    report["load_average_end"] = load_average()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else
                  f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    run_cli(main)
