"""Training and evaluation loops: `train_one_epoch` and `evaluate`, each returning a dict.

The pieces around them live beside what they belong to: the loss in models/loss.py, flip-test
prediction in models/flip_test.py, batch transforms in datasets/transforms.py, the loaders in
datasets/loaders.py, mixed precision in utils/precision.py, signal handling in utils/signals.py.
All cross-process communication goes through utils.distributed.
"""

import math
import time
from dataclasses import dataclass

import torch

from datasets.flip_draws import batch_flip_decision
from datasets.transforms import model_inputs, prepare_batch, with_batch_flip
from models.flip_test import predict
from utils import distributed as dist_utils
from utils.checkpoint import first_non_finite
from utils.errors import MetaPoseError
from utils.joint_errors import JointErrorSums
from utils.logger import get_logger
from utils.precision import autocast_context
from utils.tensorboard_views import write_frame_grid


# The unit in the TensorBoard tag of each loss term but the MPJPE (written in millimetres).
LOSS_UNITS = {"loss": "m", "kl": "nats"}


@dataclass
class StepSettings:
    """How each optimisation step runs."""

    amp: str = "none"                 # none | bf16 | fp16 (CUDA only)
    clip_grad: float = None           # max gradient norm, None = no clipping
    max_bad_steps: int = 20           # stop after this many consecutive non-finite steps
    log_every: int = 50               # optimiser steps between log lines / TensorBoard points
    channels_last: bool = False
    flip_mode: str = "sample"         # sample (flips marked by the dataset) | batch (whole batches)
    flip_prob: float = 0.5            # probability that a batch flips (flip_mode batch)
    seed: int = 0                     # seeds the batch flips (flip_mode batch)

    @classmethod
    def from_config(cls, config):
        return cls(amp=config.speed.amp, clip_grad=config.train.clip_grad,
                   max_bad_steps=config.train.max_bad_steps, log_every=config.train.log_every,
                   channels_last=config.speed.channels_last, flip_mode=config.train.flip_mode,
                   flip_prob=config.train.flip_prob, seed=config.seed)


def _progress(iterable, total, description):
    if not dist_utils.is_main():
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=description, dynamic_ncols=True, leave=False,
                disable=None)  # None: shown on a terminal only, not in redirected logs


def build_optimizer(parameters, lr, weight_decay, fused=True):
    """AdamW (train.lr, train.weight_decay), fused by default: one kernel for all parameters
    (CUDA and CPU alike), which also lets `train_one_epoch` skip a non-finite step on the device
    without waiting for it. fused=False: the plain implementation (benchmarks' published-style
    baseline)."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay,
                             fused=True if fused else None)


def use_fused_steps(optimizer):
    """Keeps the fused kernel after a resume: loading a checkpoint's optimizer state also
    loads its parameter groups' settings, those of an optimizer that was not fused included."""
    for group in optimizer.param_groups:
        group.update(fused=True, foreach=None)


class _HostCopy:
    """A small device tensor on its way to the host: on CUDA an asynchronous copy into pinned
    memory and an event behind it, so that reading it waits for that copy only, not for the
    work queued after it."""

    def __init__(self, tensor):
        self.event = None
        if tensor.device.type == "cuda":
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = tensor

    def values(self):
        """The values as a list of floats (the host waits here)."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def _skips_on_device(optimizer, scaler):
    """Whether the optimizer can skip a step on a device-side flag (fused Adam/AdamW read
    `found_inf`, as GradScaler uses them), so that the host need not wait to decide."""
    return (scaler is None and getattr(optimizer, "_step_supports_amp_scaling", False)
            and all(group.get("fused") for group in optimizer.param_groups))


def _step_unless(optimizer, skip):
    """optimizer.step() that changes nothing (parameters, moments, step counts) where the
    0-dim device tensor `skip` is true."""
    optimizer.found_inf = skip.float()
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def train_one_epoch(model, loss_fn, loader, optimizer, device, epoch, settings, *, scaler=None,
                    writer=None, stop=None, skip_batches=0, bad_steps_in_a_row=0):
    """Trains for one pass over `loader` (this process's share of the epoch).

    The host waits for the device at most once per step, after the step is queued: with a fused
    optimizer (train.py builds one) a non-finite step is skipped on the device and the host
    reads each step's flags and loss terms one step later, while the next step runs; with any
    other optimizer it reads them before the optimizer step. A stop request or a non-finite
    loss on any process is seen by every process at the same step.

    Args:
        model: the (possibly DDP-wrapped) model; called as model(images, keypoints_2d,
            keypoints_2d_crop, actions[, return_aux=True]) -> (B, 17, 3) metres.
        loss_fn: PoseLoss.
        loader: training DataLoader; its sampler/dataset epochs must already be set.
        optimizer, device, epoch (0-based): as named.
        settings: StepSettings.
        scaler: torch.amp.GradScaler for fp16, else None.
        writer: TensorBoard writer (or None).
        stop: StopRequest; when set on any process, all processes finish the same step (with a
            fused optimizer, the step after the one during which it was set) and return.
        skip_batches: batches of this epoch already trained before a resume (for step numbering;
            the sampler already leaves them out).
        bad_steps_in_a_row: non-finite steps in a row at the end of the training before this
            call (the previous epoch, or the checkpoint resumed from): the count of consecutive
            non-finite steps that `settings.max_bad_steps` limits goes on across epochs.
    Returns:
        dict: mean of each loss term over the finite steps ("loss", "mpjpe" in metres, ...),
        "samples_per_s" (all processes), "steps" (optimizer steps taken), "bad_steps" (skipped
        non-finite steps), "bad_steps_in_a_row" (consecutive non-finite steps at the end),
        "batches_done" (batches of the epoch consumed, including `skip_batches`), "interrupted"
        (stopped by a signal before the end of the epoch).
    Raises:
        MetaPoseError after `settings.max_bad_steps` consecutive non-finite steps.
    """
    model.train()
    names = loss_fn.term_names
    deferred = _skips_on_device(optimizer, scaler)
    bar = _progress(loader, len(loader), f"epoch {epoch + 1}")
    progress = _EpochProgress(settings, epoch, len(loader) + skip_batches, bad_steps_in_a_row,
                              optimizer.param_groups[0]["lr"], writer, names, bar)
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    finite_steps = torch.zeros((), dtype=torch.float64, device=device)
    batches_done, samples = skip_batches, 0
    stopping, pending = False, None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for batch in bar:
        if settings.flip_mode == "batch":
            batch = with_batch_flip(batch, batch_flip_decision(
                settings.seed, epoch, batches_done, settings.flip_prob, dist_utils.rank()))
        inputs = prepare_batch(batch, device, settings.channels_last)
        with autocast_context(device, settings.amp):
            output = model(*model_inputs(inputs), return_aux=True) if loss_fn.needs_aux \
                else model(*model_inputs(inputs))
        pred, aux = output if isinstance(output, tuple) else (output, None)
        terms = loss_fn(pred, inputs["joints_3d"], aux)
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        # Backward also for a non-finite loss: every process runs DDP's gradient exchange, and
        # the step is skipped below on all of them alike.
        (scaler.scale(loss) if scaler is not None else loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if settings.clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, settings.clip_grad)
            # Gradients are identical on all processes after DDP's all-reduce, so this
            # decision is too. Under fp16 the scaler skips such steps by itself.
            if scaler is None:
                bad = bad | ~torch.isfinite(norm)
        # One collective per step: whether any process has a non-finite step or a stop request.
        requested = float(stop is not None and stop.requested)
        flags = dist_utils.all_reduce_sum(torch.stack([bad.float(), torch.full_like(
            bad, requested, dtype=torch.float32)]))
        skip = flags[0] > 0
        values = torch.stack([t.detach().float() for t in terms.values()])
        sums += torch.where(skip, 0.0, values.double())
        finite_steps += (~skip).double()
        record = (_HostCopy(torch.cat([flags, values])), batches_done + 1)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        elif deferred:
            _step_unless(optimizer, skip)
        batches_done += 1
        samples += pred.shape[0]
        if deferred:  # the previous step's record: done on the device by now, or nearly
            record, pending = pending, record
        if record is not None:
            report = record[0].values()
            if not deferred and scaler is None and report[0] == 0:
                optimizer.step()
            stopping = progress.step(report, record[1], samples) or stopping
        if stopping:
            break
    if pending is not None:
        stopping = progress.step(pending[0].values(), pending[1], samples) or stopping
    if hasattr(bar, "close"):
        bar.close()
    local = torch.cat([sums, finite_steps.view(1),
                       torch.full((1,), float(samples), dtype=torch.float64, device=device)])
    total = dist_utils.all_reduce_sum(local).tolist()
    finite = total[-2]
    stats = {name: total[i] / finite if finite else math.nan for i, name in enumerate(names)}
    stats.update({"samples_per_s": total[-1] / progress.elapsed(), "steps": progress.steps,
                  "bad_steps": progress.bad_steps,
                  "bad_steps_in_a_row": progress.consecutive_bad, "batches_done": batches_done,
                  "interrupted": stopping and batches_done < progress.steps_per_epoch,
                  "lr": progress.lr})
    return stats


class _EpochProgress:
    """What the host does with each step's record [bad, stop, loss terms...]: counts optimizer
    steps and non-finite steps (raising after max_bad_steps in a row), logs, draws the progress
    bar and the TensorBoard points."""

    def __init__(self, settings, epoch, steps_per_epoch, bad_steps_in_a_row, lr, writer, names,
                 bar):
        self.settings, self.epoch, self.steps_per_epoch = settings, epoch, steps_per_epoch
        self.consecutive_bad, self.lr = bad_steps_in_a_row, lr
        self.writer, self.names, self.bar = writer, names, bar
        self.steps = self.bad_steps = 0
        self.start = time.perf_counter()
        self.logger = get_logger()

    def elapsed(self):
        return max(time.perf_counter() - self.start, 1e-9)

    def step(self, report, number, samples):
        """Takes the record of step `number` (1-based in the epoch) after `samples` samples of
        this process; returns whether some process asked to stop."""
        settings, epoch = self.settings, self.epoch
        if report[0] > 0:
            self.bad_steps += 1
            self.consecutive_bad += 1
            if dist_utils.is_main():  # the decision is shared: say it once
                self.logger.warning("epoch %d step %d: non-finite loss or gradient on some "
                                    "process, step skipped (%d in a row)", epoch + 1, number,
                                    self.consecutive_bad)
            if self.consecutive_bad >= settings.max_bad_steps:
                raise MetaPoseError(
                    f"the loss was not finite for {self.consecutive_bad} consecutive steps "
                    f"(epoch {epoch + 1}, step {number}; train.max_bad_steps="
                    f"{settings.max_bad_steps}). Training diverged: lower train.lr, set "
                    "train.clip_grad (e.g. 1.0), or use speed.amp=bf16/none instead of fp16.")
        else:
            self.consecutive_bad = 0
            self.steps += 1
        if dist_utils.is_main() and (number % settings.log_every == 0 or number == 1):
            terms = dict(zip(self.names, report[2:]))
            rate = samples * dist_utils.world_size() / self.elapsed()
            if hasattr(self.bar, "set_postfix"):
                self.bar.set_postfix(loss=f"{terms['loss']:.4f}", samples_s=f"{rate:.0f}")
            if self.writer:
                global_step = epoch * self.steps_per_epoch + number
                add_loss_scalars(self.writer, "train_step", terms, global_step)
                self.writer.add_scalar("train_step/lr", self.lr, global_step)
            if number % settings.log_every == 0:
                self.logger.info("epoch %d step %d/%d  loss %.5f  %.0f samples/s", epoch + 1,
                                 number, self.steps_per_epoch, terms["loss"], rate)
        return report[1] > 0


def add_loss_scalars(writer, section, terms, global_step):
    """Loss terms {name: float} as TensorBoard scalars `<section>/<name>_<unit>`: "loss" (the
    weighted total, metres while loss.kl is 0) as loss_m, the MPJPE term (metres in the loss) as
    mpjpe_mm in millimetres like every other MPJPE curve, the KL term as kl_nats."""
    for name, value in terms.items():
        if name == "mpjpe":
            writer.add_scalar(f"{section}/mpjpe_mm", value * 1000.0, global_step)
        else:
            writer.add_scalar(f"{section}/{name}_{LOSS_UNITS[name]}", value, global_step)


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, loader, device, *, metrics, flip_test=True, amp="none",
             channels_last=False, num_visualize=0, writer=None, global_step=0, stop=None):
    """The dataset's metrics over this process's shard, summed over all processes.

    Args:
        model: the unwrapped model (no DDP: shards differ in length, so no per-batch collectives).
        loader: evaluation DataLoader over a ShardSampler.
        metrics: the dataset's MetricSet (utils/metric_set.py, from datasets.build_metric_set)
            to fill, reset first.
        flip_test: average with the mirrored prediction of the mirrored input.
        num_visualize: frames of rank 0's shard drawn into `writer` as one grid image.
        stop: StopRequest; a signal abandons the pass (all processes agree at the end).
    Returns:
        the metric set's summary over all processes (H36M: "p1", "p2", "frames", "per_action";
        MPI-INF-3DHP: "pck", "auc", "mpjpe", "frames", "per_scene", "per_sequence") plus
        "samples_per_s" and "per_joint_mm" (each joint's mean error, H36M joint order), or None
        when a stop request abandoned the evaluation.
    Raises:
        MetaPoseError on every process when the model predicted NaN/Inf for any frame.
    """
    model.eval()
    metrics.reset()
    joints = JointErrorSums(metrics, device)
    predictions, batches, shown = [], [], []
    start = time.perf_counter()
    abandoned = False
    for batch in _progress(loader, len(loader), "eval"):
        if stop is not None and stop.requested:
            abandoned = True
            break
        batch = {name: value for name, value in batch.items() if name != "flip"}  # never flips
        inputs = prepare_batch(batch, device, channels_last, normalize=False)
        # Predictions stay on the device until the pass ends: nothing here waits for it.
        predictions.append(predict(model, inputs, flip_test, amp))
        joints.add(predictions[-1], inputs["joints_3d"], batch.get("valid"))
        if dist_utils.is_main():
            shown += [(len(batches), i, batch["image"][i])
                      for i in range(min(num_visualize - len(shown), batch["image"].shape[0]))]
        batches.append({name: value for name, value in batch.items() if name != "image"})
    # The one transfer of the pass, then the metrics on the host.
    pred = torch.cat(predictions).cpu() if predictions else None
    joint_sums = joints.sums.cpu()
    non_finite = 0
    if pred is not None:
        frames = concatenate_batches(batches)
        non_finite = int((~torch.isfinite(pred).flatten(1).all(dim=1)).sum())
        metrics.update_batch(pred, frames["joints_3d"], frames)
    state = metrics.state()
    flags = torch.tensor([float(non_finite), float(abandoned)], dtype=state.dtype)
    flat = dist_utils.all_reduce_sum(torch.cat([state.flatten(), joint_sums.to(state), flags]))
    if float(flat[-1]) > 0:
        return None
    metrics.load_state(flat[:state.numel()].view_as(state))
    summary = metrics.summary()
    summary["per_joint_mm"] = joints.means_mm(flat[state.numel():-2])
    if float(flat[-2]) > 0:
        raise _non_finite_predictions(model, int(flat[-2]), summary["frames"],
                                      amp if device.type == "cuda" else "none",
                                      metrics.score_label)
    summary["samples_per_s"] = summary["frames"] / max(time.perf_counter() - start, 1e-9)
    if writer and shown:
        write_frame_grid(writer, _figure_samples(shown, batches, pred, metrics), global_step)
    return summary


def concatenate_batches(batches):
    """One collated batch from several (tensors concatenated along the batch axis, lists joined)."""
    merged = {}
    for name, first in batches[0].items():
        values = [batch[name] for batch in batches]
        merged[name] = torch.cat(values) if isinstance(first, torch.Tensor) else \
            [item for value in values for item in value]
    return merged


def _figure_samples(shown, batches, pred, metrics):
    """The figures' samples: (batch number, position, image) of rank 0's first frames, with
    their predictions from the pass's host copy `pred`."""
    offsets = [0]
    for batch in batches:
        offsets.append(offsets[-1] + batch["joints_3d"].shape[0])
    return [{"image": image, "keypoints_crop": batches[b]["keypoints_2d_crop"][i],
             "pred_3d": pred[offsets[b] + i], "gt_3d": batches[b]["joints_3d"][i],
             "title": metrics.sample_title(batches[b], i)} for b, i, image in shown]


def _non_finite_predictions(model, count, frames, amp, score_label):
    """The MetaPoseError for an evaluation in which the model predicted NaN/Inf joints;
    score_label names the metric set's score (H36M "P1", MPI-INF-3DHP "MPJPE")."""
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        why = (f"its weights are not finite (first '{bad}'): training diverged. Lower train.lr "
               "or set train.clip_grad (e.g. 1.0)")
    else:
        why = ("its weights are finite, so its activations overflowed" +
               (f": try speed.amp=none instead of {amp}" if amp != "none" else
                ": the weights are too large (training diverged); lower train.lr or set "
                "train.clip_grad (e.g. 1.0)"))
    return MetaPoseError(f"the model produced non-finite 3D joints (NaN or Inf) for {count} of "
                         f"{frames} validation frames, so {score_label} and the other metrics "
                         f"cannot be computed; {why}.")

