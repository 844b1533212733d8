"""An estimate of GPU throughput from FLOPs and bytes, for when no GPU can measure it.

Runs the paper configuration on the CPU at a small batch and counts, for every operator the
step dispatches, its floating-point operations (torch.utils.flop_counter's formulas) and the
bytes it reads and writes (its tensor inputs and outputs; views move nothing). Scaled to
`--batch` (activations grow with the batch, weights do not), each operator is then timed on the
given device as max(FLOPs / (peak x compute efficiency), bytes / (bandwidth x bandwidth
efficiency)) plus a fixed gap per kernel; the sum is one step. Measured for: the frozen
encoder's forward (plain layers and batch norms folded), a training step, an evaluation step
with flip test.

    python benchmarks/roofline.py                       # H100 SXM figures, batch 400, bf16
    python benchmarks/roofline.py --peak-tflops 756 --bandwidth-tbs 2.0 --json   # H100 PCIe

The model is an estimate, not a measurement: efficiencies are assumptions (printed with the
result), caches between operators are ignored (every operator reads its inputs from memory),
and the host is assumed to keep up (one wait per step, engine.train_one_epoch).
"""

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

import engine  # noqa: E402
from benchmarks.throughput import DEFAULT_CONFIG, RepeatedBatches, random_host_batch  # noqa: E402
from datasets.transforms import prepare_batch  # noqa: E402
from models.flip_test import predict  # noqa: E402
from models.loss import build_loss  # noqa: E402
from models.reference_paths import reference_paths  # noqa: E402
from utils.cli import add_overrides_argument, positive_int, run_cli  # noqa: E402
from utils.config import load_config  # noqa: E402

# Operators that only re-describe memory (no kernel, no traffic).
_VIEWS = {"view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
          "squeeze", "select", "slice", "alias", "as_strided", "detach", "split", "chunk",
          "unbind", "split_with_sizes", "narrow", "_reshape_alias", "lift_fresh", "empty",
          "empty_like", "empty_strided", "zeros", "ones", "new_empty", "new_empty_strided",
          "_to_copy_noop", "set_", "resize_", "is_same_size", "_local_scalar_dense"}


class OperatorCount(TorchDispatchMode):
    """Per operator: name, FLOPs, activation bytes, weight bytes (tensors in `weights`)."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in _VIEWS:
            return out
        flops = 0
        if func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        activation = weight = 0
        seen = set()
        for value in _tensors((args, kwargs, out)):
            key = (value.untyped_storage().data_ptr(), value.storage_offset(), value.numel())
            if key in seen:
                continue
            seen.add(key)
            size = value.numel() * value.element_size()
            if value.untyped_storage().data_ptr() in self.weights:
                weight += size
            else:
                activation += size
        self.records.append((name, int(flops), activation, weight))
        return out


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def counted(model, function):
    """The operator records of `function()` (model's parameters and buffers are weights)."""
    weights = {t.untyped_storage().data_ptr() for t in
               list(model.parameters()) + list(model.buffers())}
    if getattr(model.image_encoder, "_folded", None) is not None:
        weights |= {t.untyped_storage().data_ptr() for t in model.image_encoder._folded.buffers()}
    mode = OperatorCount(weights)
    with mode:
        function()
    return mode.records


def step_time(records, scale, device, bytes_per_value):
    """Seconds of one step on `device` (a dict of the arguments) at `scale` x the counted batch;
    activation bytes converted from float32 to `bytes_per_value`."""
    peak = device["peak_tflops"] * 1e12 * device["compute_efficiency"]
    bandwidth = device["bandwidth_tbs"] * 1e12 * device["bandwidth_efficiency"]
    total, flops, traffic = 0.0, 0, 0
    for _, op_flops, activation, weight in records:
        op_flops *= scale
        op_bytes = activation * scale * bytes_per_value / 4 + weight
        total += max(op_flops / peak, op_bytes / bandwidth) + device["gap_us"] * 1e-6
        flops += op_flops
        traffic += op_bytes
    return total, flops, traffic


def measure(config_path, counted_batch, overrides=()):
    """{phase: operator records} of the encoder (plain and folded), a training step and an
    evaluation step with flip test of the model of `config_path` (+ `overrides`, randomly
    initialised) at `counted_batch`."""
    from models import build_model

    config = load_config(config_path, ["model.image_encoder.pretrained=null",
                                       "model.text_encoder.pretrained=null", *overrides])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config)
    device = torch.device("cpu")
    host = random_host_batch(counted_batch, config.data.image_size, pin=False)
    optimizer = engine.build_optimizer(model.trainable_parameters(), config.train.lr,
                                       config.train.weight_decay)
    settings = engine.StepSettings.from_config(config)
    settings.log_every = 10 ** 9
    loss_fn = build_loss(config)
    images = prepare_batch(host, device)["images"]
    eval_host = {k: v for k, v in host.items() if k != "flip"}
    phases = {}
    model.eval()
    with torch.no_grad():
        model.image_encoder(images)  # builds the folded trunk outside the count
        phases["encoder_folded"] = counted(model, lambda: model.image_encoder(images))
        with reference_paths(model):
            phases["encoder_plain"] = counted(model, lambda: model.image_encoder(images))
        model.text_encoder(host["action"])  # fills the text cache, as after the first step
        phases["eval_flip"] = counted(model, lambda: predict(
            model, prepare_batch(eval_host, device, normalize=False), True))
    engine.train_one_epoch(model, loss_fn, RepeatedBatches(host, 1), optimizer, device, 0,
                           settings)  # optimizer state exists, as in every later step
    phases["train"] = counted(model, lambda: engine.train_one_epoch(
        model, loss_fn, RepeatedBatches(host, 1), optimizer, device, 0, settings))
    return phases


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="experiment YAML (default: the paper's, "
                             "experiments/human36m/human36m.yaml)")
    parser.add_argument("--batch", type=positive_int, default=400,
                        help="batch of the estimate (default 400)")
    parser.add_argument("--counted-batch", type=positive_int, default=4,
                        help="batch actually run on the CPU to count (default 4)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 tensor peak (H100 SXM: 989; PCIe: 756)")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35,
                        help="memory bandwidth, TB/s (H100 SXM: 3.35; PCIe: 2.0)")
    parser.add_argument("--compute-efficiency", type=float, nargs="+", default=[0.25, 0.5],
                        help="share(s) of the peak that convolutions and matrix products reach "
                             "(one estimate per value)")
    parser.add_argument("--bandwidth-efficiency", type=float, default=0.8,
                        help="share of the bandwidth memory-bound kernels reach")
    parser.add_argument("--gap-us", type=float, default=3.0,
                        help="idle microseconds per kernel (launch gaps; ~1 with CUDA graphs)")
    parser.add_argument("--bytes-per-value", type=float, default=2.0,
                        help="bytes per activation value (2: bf16 autocast, 4: fp32)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    add_overrides_argument(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    phases = measure(args.config, args.counted_batch, args.overrides)
    scale = args.batch / args.counted_batch
    report = {"batch": args.batch, "counted_batch": args.counted_batch,
              "bytes_per_value": args.bytes_per_value, "torch": torch.__version__,
              "estimates": []}
    for efficiency in args.compute_efficiency:
        device = {"peak_tflops": args.peak_tflops, "bandwidth_tbs": args.bandwidth_tbs,
                  "compute_efficiency": efficiency,
                  "bandwidth_efficiency": args.bandwidth_efficiency, "gap_us": args.gap_us}
        estimate = {"device_model": device, "phases": {}}
        for phase, records in phases.items():
            seconds, flops, traffic = step_time(records, scale, device, args.bytes_per_value)
            estimate["phases"][phase] = {
                "kernels": len(records), "gflop_per_sample": flops / args.batch / 1e9,
                "mbytes_per_sample": traffic / args.batch / 1e6,
                "step_ms": seconds * 1e3, "samples_per_s": args.batch / seconds}
        figures = estimate["phases"]
        encoder = figures["encoder_folded"]["gflop_per_sample"]
        figures["eval_flip"]["encoder_share_of_flops"] = \
            2 * encoder / figures["eval_flip"]["gflop_per_sample"]
        figures["train"]["encoder_share_of_flops"] = encoder / figures["train"]["gflop_per_sample"]
        report["estimates"].append(estimate)
    if args.json:
        print(json.dumps(report))
        return 0
    for estimate in report["estimates"]:
        print(f"device model: {estimate['device_model']}; batch {args.batch} (counted at "
              f"{args.counted_batch}), {args.bytes_per_value:g} bytes per activation value")
        for phase, figures in estimate["phases"].items():
            share = figures.get("encoder_share_of_flops")
            print(f"{phase:>15}: {figures['kernels']:5d} kernels  "
                  f"{figures['gflop_per_sample']:7.2f} GFLOP/sample  "
                  f"{figures['mbytes_per_sample']:8.1f} MB/sample  {figures['step_ms']:8.1f} "
                  f"ms/step  {figures['samples_per_s']:8.0f} samples/s"
                  + ("" if share is None else f"  (encoder {share:.1%} of the FLOPs)"))
    return 0


if __name__ == "__main__":
    run_cli(main)
