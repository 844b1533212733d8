"""Throughput benchmark of MetaPose training and evaluation (docs/benchmarks.md).

Model mode (default) feeds the engine's own loops (`engine.train_one_epoch`, `engine.evaluate`)
with a batch of the real shapes and ranges held in host memory, as the DataLoader delivers it
(uint8 images, pinned on CUDA), so each step includes the copy to the device, the GPU-side
normalisation and flips, forward, loss, backward and the AdamW step; no image decoding. It
reports:

    train_samples_per_s    training steps
    eval_samples_per_s     evaluation with flip test (and the metric accumulation)
    encoder_samples_per_s  the frozen image encoder's forward alone: the ceiling of a step
    text_s_per_step        the text encoder's forward (+ backward with trained prompts; frozen
                           prompts are served from the feature cache) on the batch's actions
    peak_mem_gb            peak memory of the training steps (CUDA: max allocated; CPU: the
                           process's peak resident set size, model included)

`--plain` runs the same model the published implementation's way: the `speed.*` options off
(fp32, no channels-last, no cuDNN autotuning, no compile), no pinned memory, AdamW unfused, and
the model on its reference paths (`models.reference_paths`: the full 77-token text recomputed at
every forward pass, evaluation too, the per-level/head/point reference sampling, and the frozen
HRNet's batch norms run as layers of their own). `--compare` runs the
plain and then the fast configuration in one process (same seed, so the same weights) and adds
the ratios, the largest difference between their predictions, and how far each lies from the
same weights' float64 prediction on the CPU (first 4 samples): float32 rounding alone moves a
prediction by ~1e-5 of its largest value, so two float32 paths can differ by twice that.

`--data DIR` measures the real input pipeline instead: `build_train_loader` over the
(synthetic or real) set in DIR, JPEG decoding in `--workers` processes, pinning, and
`datasets.transforms.prepare_batch` on the device; with `--with-model` the training steps run on
those batches too, so input stalls show as the gap to the model-only figure.

    python benchmarks/throughput.py --device cpu --batch-size 8
    python benchmarks/throughput.py --device cuda --batch-size 400 --compare --json
    python benchmarks/throughput.py --data /tmp/synthetic --workers 16 --batch-size 400 --with-model
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import engine  # noqa: E402
from datasets.loaders import build_train_loader  # noqa: E402
from datasets.transforms import prepare_batch  # noqa: E402
from models.flip_test import predict  # noqa: E402
from models.loss import build_loss  # noqa: E402
from models.reference_paths import reference_paths  # noqa: E402
from utils.precision import autocast_context  # noqa: E402
from utils import distributed as dist_utils  # noqa: E402
from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       resolve_device, run_cli)
from utils.config import CHOICES, load_config  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.metrics_h36m import ActionErrorAccumulator  # noqa: E402
from utils.run_dir import git_commit, has_uncommitted_changes  # noqa: E402
from utils.skeleton import ACTION_IDS, CROP_HEIGHT, CROP_WIDTH, NUM_JOINTS  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "experiments", "human36m", "human36m.yaml")
# What --plain changes in the config: every speed option off (the published implementation's
# way); the model's reference paths and unpinned batches come on top (see `plain_paths`).
PLAIN_OVERRIDES = ("speed.amp=none", "speed.channels_last=false", "speed.cudnn_benchmark=false",
                   "speed.compile=false")
NO_LOGGING = 10 ** 9  # log_every for the engine loops: no log lines inside timed steps


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="experiment YAML (default: the paper's, "
                             "experiments/human36m/human36m.yaml)")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="samples per step (default 400 on cuda, 8 on cpu)")
    parser.add_argument("--image-encoder", choices=CHOICES["model.image_encoder.type"],
                        help="image encoder type (default: the config's)")
    parser.add_argument("--text-encoder", choices=CHOICES["model.text_encoder.type"],
                        help="CLIP text encoder type (default: the config's)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="timed steps (default 20 cuda, 3 cpu)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 5 cuda, 1 cpu)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plain", action="store_true",
                      help="every speed option off: fp32, no channels-last, no pinned memory, "
                           "full 77-token text recomputed at every forward pass, reference "
                           "sampling")
    mode.add_argument("--compare", action="store_true",
                      help="run --plain and the fast configuration in one process; add ratios")
    parser.add_argument("--data", default=None,
                        help="measure the DataLoader on the set in this folder (data.root)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers for --data (default data.num_workers)")
    parser.add_argument("--with-model", action="store_true",
                        help="with --data: also run the training steps on the loaded batches")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    add_overrides_argument(parser)
    return parser


def parse_args(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    if args.warmup is not None and args.warmup < 0:
        raise MetaPoseError(f"--warmup must be 0 or more, got {args.warmup}.")
    if args.with_model and not args.data:
        raise MetaPoseError("--with-model needs --data DIR (the model alone is the default mode).")
    if args.compare and args.data:
        raise MetaPoseError("--compare measures the model alone; run --data once with and once "
                            "without --plain instead.")
    return args


def build_config(args, plain):
    overrides = ["model.image_encoder.pretrained=null", "model.text_encoder.pretrained=null"]
    if args.image_encoder:
        overrides.append(f"model.image_encoder.type={args.image_encoder}")
    if args.text_encoder:
        overrides.append(f"model.text_encoder.type={args.text_encoder}")
    if args.data:
        overrides += [f"data.root={args.data}", "data.synthetic.enabled=false"]
    if plain:
        overrides += list(PLAIN_OVERRIDES)
    return load_config(args.config, overrides + list(args.overrides))


# ----------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the resident-set high-water mark (VmHWM) to the current size
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024 ** 3
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1024 ** 3
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024 ** 3


def timed(function, steps, warmup, device):
    """Seconds per call of `function(count)` running `count` steps, after `warmup` untimed ones."""
    if warmup:
        function(warmup)
    synchronize(device)
    start = time.perf_counter()
    function(steps)
    synchronize(device)
    return (time.perf_counter() - start) / steps


# ----------------------------------------------------------------------------------------------
# Model mode


def random_host_batch(batch, image_size, pin):
    """A collated batch as the training DataLoader delivers it (uint8 images, half of the
    samples marked for flipping), in host memory; pinned if `pin`."""
    height, width = image_size
    generator = torch.Generator().manual_seed(0)
    joints = torch.randn(batch, NUM_JOINTS, 3, generator=generator) * 0.3
    data = {
        "image": torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8,
                               generator=generator),
        "keypoints_2d": torch.rand(batch, NUM_JOINTS, 2, generator=generator) * 2 - 1,
        "keypoints_2d_crop": torch.rand(batch, NUM_JOINTS, 2, generator=generator)
        * torch.tensor([CROP_WIDTH - 1.0, CROP_HEIGHT - 1.0]),
        "joints_3d": joints - joints[:, :1],
        "action": torch.tensor(ACTION_IDS)[torch.randint(0, len(ACTION_IDS), (batch,),
                                                         generator=generator)],
        "subject": torch.full((batch,), 9, dtype=torch.int64),
        "index": torch.arange(batch),
        "flip": torch.rand(batch, generator=generator) < 0.5,
    }
    return {name: value.pin_memory() if pin else value for name, value in data.items()}


class RepeatedBatches:
    """`count` references to one host batch: a stand-in DataLoader for the engine loops."""

    def __init__(self, batch, count):
        self.batch, self.count = batch, count

    def __len__(self):
        return self.count

    def __iter__(self):
        return iter([self.batch] * self.count)


def plain_paths(model, plain):
    """The block runs `model` on its reference paths when `plain`, else as it is."""
    return reference_paths(model) if plain else contextlib.nullcontext(model)


def text_work(encoder, actions, device, plain):
    """(rows, positions per sequence) that one training step's text call runs through the
    tower: frozen prompts are served from the cache (none); the reference path encodes the
    batch's distinct actions over the whole context."""
    if encoder.mode == "joint":
        rows = [0]
    elif plain or not (encoder.encode_all_actions or (encoder.encode_all_actions is None
                                                      and device.type != "cpu")):
        rows = (actions.unique() - ACTION_IDS[0]).tolist()
    else:
        rows = list(range(len(encoder.row_lengths)))
    if plain:
        return rows, encoder.token_ids.shape[-1]
    if not encoder.prompts.requires_grad:
        return [], 0
    return rows, encoder.sequence_length(rows)


def build_for_benchmark(config, device, plain=False):
    """MetaPose as train.py builds it (seeded, speed options applied) and its optimizer (fused
    AdamW, as train.py's; `plain`: the unfused implementation)."""
    from models import build_model
    from models.speed import prepare_model_for_speed

    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is intended here
        model = prepare_model_for_speed(build_model(config).to(device), config, device)
    optimizer = engine.build_optimizer(model.trainable_parameters(), config.train.lr,
                                       config.train.weight_decay, fused=not plain)
    return model, optimizer


REFERENCE_SAMPLES = 4  # samples of the float64 reference prediction (--compare)


def float64_prediction(config, batch, image_size, samples=REFERENCE_SAMPLES):
    """The plain configuration's prediction in float64 on the CPU for the first `samples` of
    the benchmark's batch (same seed, so the same weights as measure_model's models): the
    truth that both configurations' float32 predictions are measured against."""
    cpu = torch.device("cpu")
    model, _ = build_for_benchmark(config, cpu, plain=True)
    model = model.double().eval()
    host = {name: value[:samples] for name, value in
            random_host_batch(batch, image_size, pin=False).items() if name != "flip"}
    inputs = {name: value.double() if value.is_floating_point() else value
              for name, value in prepare_batch(host, cpu).items()}
    with torch.no_grad(), plain_paths(model, True):
        prediction = predict(model, inputs, flip_test=True)
    del model
    return prediction


def relative_distance(prediction, reference):
    """max |prediction - reference| / max |reference| (relative to the largest value), computed
    in float64."""
    reference = reference.double()
    scale = reference.abs().max().clamp_min(1e-30)
    return float((prediction.double() - reference).abs().max() / scale)


def measure_model(config, device, batch, steps, warmup, plain=False):
    """The figures of one configuration (see the module docstring); `plain`: the model on its
    reference paths and unpinned batches."""
    model, optimizer = build_for_benchmark(config, device, plain)
    with plain_paths(model, plain):
        result = _measure_built(model, optimizer, config, device, batch, steps, warmup, plain)
    del model, optimizer
    release_memory(device)
    return result


def _measure_built(model, optimizer, config, device, batch, steps, warmup, plain):
    settings = engine.StepSettings.from_config(config)
    settings.log_every = NO_LOGGING
    loss_fn = build_loss(config)
    scaler = torch.amp.GradScaler("cuda") if settings.amp == "fp16" and device.type == "cuda" \
        else None
    pin = device.type == "cuda" and not plain
    host = random_host_batch(batch, config.data.image_size, pin)
    eval_host = {name: value for name, value in host.items() if name != "flip"}
    channels_last = bool(config.speed.channels_last)

    # The prediction of the freshly built model (before any step changes the weights), for
    # comparing configurations: built with the same seed, they hold the same weights.
    model.eval()
    with torch.no_grad():
        first_prediction = predict(
            model, prepare_batch(eval_host, device, channels_last), flip_test=True,
            amp=settings.amp).float().cpu()

    def train(count):
        engine.train_one_epoch(model, loss_fn, RepeatedBatches(host, count), optimizer, device,
                               0, settings, scaler=scaler)

    def evaluate(count):
        engine.evaluate(model, RepeatedBatches(eval_host, count), device,
                        metrics=ActionErrorAccumulator(), flip_test=True, amp=settings.amp,
                        channels_last=channels_last)

    images = []  # prepared after the training phase, so they do not count in its peak memory

    def encoder(count):
        with torch.no_grad(), autocast_context(device, settings.amp):
            for _ in range(count):
                model.image_encoder(images[0])

    actions = host["action"].to(device)
    text_encoder = model.text_encoder

    def text(count):
        text_encoder.train()
        for _ in range(count):
            with autocast_context(device, settings.amp):
                features = text_encoder(actions)
            if features.requires_grad:  # trained prompts; frozen ones are served from the cache
                features.float().sum().backward()
                text_encoder.prompts.grad = None

    reset_peak_memory(device)
    train_s = timed(train, steps, warmup, device)
    train_peak = peak_memory_gb(device)
    # What the allocator held (nvidia-smi shows this plus the CUDA context).
    train_reserved = torch.cuda.max_memory_reserved(device) / 1024 ** 3 \
        if device.type == "cuda" else None
    reset_peak_memory(device)
    eval_s = timed(evaluate, steps, warmup, device)
    eval_peak = peak_memory_gb(device)
    images.append(prepare_batch(eval_host, device, channels_last)["images"])
    encoder_s = timed(encoder, steps, warmup, device)
    text_s = timed(text, steps, warmup, device)
    text_actions = int(host["action"].unique().numel())
    text_rows, text_length = text_work(model.text_encoder, host["action"], device, plain)
    figures = {
        "train_samples_per_s": batch / train_s,
        "eval_samples_per_s": batch / eval_s,
        "encoder_samples_per_s": batch / encoder_s,
        "text_s_per_step": text_s,
        "peak_mem_gb": train_peak,
        "peak_mem_reserved_gb": train_reserved,
        "eval_peak_mem_gb": eval_peak,
        "train_over_encoder": encoder_s / train_s,
        "text_share_of_train_step": text_s / train_s,
        "text_sequences_per_step": len(text_rows) * NUM_JOINTS,
        "text_tokens_per_sequence": text_length,
        "actions_in_batch": text_actions,
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
    }
    del host, eval_host, images
    return figures, first_prediction


def release_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# Data mode


class LoaderBatches:
    """`count` batches drawn from a DataLoader, starting a new epoch whenever one ends."""

    def __init__(self, loader, count, state):
        self.loader, self.count, self.state = loader, count, state

    def __len__(self):
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            try:
                yield next(self.state["iterator"])
            except StopIteration:
                self.state["epoch"] += 1
                self.loader.sampler.set_epoch(self.state["epoch"])
                self.loader.dataset.set_epoch(self.state["epoch"])
                self.state["iterator"] = iter(self.loader)
                yield next(self.state["iterator"])


def measure_data(config, args, device, batch, steps, warmup):
    """Samples per second of the training input pipeline (decode, collate, pin, copy,
    normalise and flip on the device) and, with --with-model, of whole training steps on it."""
    from datasets import build_dataset

    dataset = build_dataset(config, "train")
    workers = args.workers if args.workers is not None else config.data.num_workers
    context = dist_utils.DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    loader = build_train_loader(dataset, batch, workers, config.seed, context,
                                pin_memory=not args.plain)
    if len(loader) < 1 or len(dataset) < batch:
        raise MetaPoseError(f"--data {args.data} holds {len(dataset)} training frames, fewer "
                            f"than one batch of {batch}; use a smaller --batch-size or a larger set.")
    loader.sampler.set_epoch(0)
    loader.dataset.set_epoch(0)
    state = {"epoch": 0, "iterator": iter(loader)}
    channels_last = bool(config.speed.channels_last)

    def load(count):
        for host in LoaderBatches(loader, count, state):
            prepare_batch(host, device, channels_last)

    figures = {"data_samples_per_s": batch / timed(load, steps, warmup, device),
               "workers": workers, "frames": len(dataset), "image_mode": dataset.image_mode,
               "pin_memory": bool(loader.pin_memory)}
    if args.with_model:
        model, optimizer = build_for_benchmark(config, device, args.plain)
        settings = engine.StepSettings.from_config(config)
        settings.log_every = NO_LOGGING
        loss_fn = build_loss(config)

        def train(count):
            engine.train_one_epoch(model, loss_fn, LoaderBatches(loader, count, state),
                                   optimizer, device, 0, settings)

        reset_peak_memory(device)
        with plain_paths(model, args.plain):
            figures["train_samples_per_s"] = batch / timed(train, steps, warmup, device)
        figures["peak_mem_gb"] = peak_memory_gb(device)
    del state["iterator"]  # shuts the workers down
    return figures


# ----------------------------------------------------------------------------------------------
# Report


def describe_device(device):
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return (f"{properties.name} ({properties.total_memory / 1024 ** 3:.0f} GiB, "
                f"CUDA {torch.version.cuda})")
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({name}, {cores} cores, {torch.get_num_threads()} threads)"


def effective_speed(config, device):
    """The speed options as they act on `device` (autocast, channels-last and cuDNN are
    CUDA-only)."""
    speed = dict(config.speed)
    if device.type != "cuda":
        speed.update(amp="none", channels_last=False, cudnn_benchmark=False)
    return speed


def load_average():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def ratios(fast, plain):
    keys = ("train_samples_per_s", "eval_samples_per_s", "encoder_samples_per_s")
    out = {key.replace("_samples_per_s", "_speedup"): fast[key] / plain[key] for key in keys}
    out["text_speedup"] = plain["text_s_per_step"] / fast["text_s_per_step"]
    out["peak_mem_ratio"] = fast["peak_mem_gb"] / plain["peak_mem_gb"]
    return out


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch_size or (400 if on_gpu else 8)
    steps = args.steps or (20 if on_gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    config = build_config(args, plain=args.plain)
    report = {
        "device": describe_device(device), "torch": torch.__version__, "commit": git_commit() + ("+changes" if has_uncommitted_changes() else ""),
        "config": os.path.relpath(args.config), "batch": batch, "steps": steps, "warmup": warmup,
        "image_encoder": config.model.image_encoder.type,
        "text_encoder": config.model.text_encoder.type,
        "image_size": list(config.data.image_size),
        "mode": "compare" if args.compare else "plain" if args.plain else "fast",
        "speed": effective_speed(config, device),
        "load_average_start": load_average(),
    }
    if args.data:
        report.update(measure_data(config, args, device, batch, steps, warmup))
    elif args.compare:
        plain_config = build_config(args, plain=True)
        plain, plain_prediction = measure_model(plain_config, device, batch, steps, warmup,
                                                plain=True)
        fast, fast_prediction = measure_model(config, device, batch, steps, warmup)
        report.update(fast)
        report["plain"] = plain
        report.update(ratios(fast, plain))
        report["prediction_max_abs_diff_mm"] = float(
            (fast_prediction - plain_prediction).abs().max()) * 1000.0
        report["prediction_max_rel_diff"] = relative_distance(fast_prediction, plain_prediction)
        reference = float64_prediction(plain_config, batch, config.data.image_size)
        count = len(reference)
        report["prediction_rel_error_vs_float64"] = {
            "fast": relative_distance(fast_prediction[:count], reference),
            "plain": relative_distance(plain_prediction[:count], reference)}
    else:
        report.update(measure_model(config, device, batch, steps, warmup, args.plain)[0])
    report["load_average_end"] = load_average()
    if args.json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key:>26}:")
            for name, item in value.items():
                print(f"{'':>28}{name}: {item:.4g}" if isinstance(item, float)
                      else f"{'':>28}{name}: {item}")
        else:
            print(f"{key:>26}: {value:.4g}" if isinstance(value, float)
                  else f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    run_cli(main)
