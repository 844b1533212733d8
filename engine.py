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
from utils.logger import get_logger
from utils.precision import autocast_context


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


def train_one_epoch(model, loss_fn, loader, optimizer, device, epoch, settings, *, scaler=None,
                    writer=None, stop=None, skip_batches=0, bad_steps_in_a_row=0):
    """Trains for one pass over `loader` (this process's share of the epoch).

    Args:
        model: the (possibly DDP-wrapped) model; called as model(images, keypoints_2d,
            keypoints_2d_crop, actions[, return_aux=True]) -> (B, 17, 3) metres.
        loss_fn: PoseLoss.
        loader: training DataLoader; its sampler/dataset epochs must already be set.
        optimizer, device, epoch (0-based): as named.
        settings: StepSettings.
        scaler: torch.amp.GradScaler for fp16, else None.
        writer: TensorBoard writer (or None).
        stop: StopRequest; when set on any process, all processes finish the same step and return.
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
    logger = get_logger()
    model.train()
    steps_per_epoch = len(loader) + skip_batches
    sums = None
    steps = bad_steps = samples = 0
    consecutive_bad = bad_steps_in_a_row
    batches_done = skip_batches
    interrupted = False
    start = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    bar = _progress(loader, len(loader), f"epoch {epoch + 1}")
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
        # One collective per step: whether any process has a non-finite loss or a stop request.
        bad, stopping = dist_utils.any_flag(not bool(torch.isfinite(loss)),
                                            stop is not None and stop.requested)
        optimizer.zero_grad(set_to_none=True)
        if not bad:
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if settings.clip_grad is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(
                    [p for group in optimizer.param_groups for p in group["params"]],
                    settings.clip_grad)
                # Gradients are identical on all processes after DDP's all-reduce, so this
                # decision is too. Under fp16 the scaler skips such steps by itself.
                bad = scaler is None and not bool(torch.isfinite(norm))
        if bad:
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            consecutive_bad += 1
            if dist_utils.is_main():  # the decision is shared: say it once
                logger.warning("epoch %d step %d: non-finite loss or gradient on some process, "
                               "step skipped (%d in a row)", epoch + 1, batches_done + 1,
                               consecutive_bad)
            if consecutive_bad >= settings.max_bad_steps:
                raise MetaPoseError(
                    f"the loss was not finite for {consecutive_bad} consecutive steps (epoch "
                    f"{epoch + 1}, step {batches_done + 1}; train.max_bad_steps="
                    f"{settings.max_bad_steps}). Training diverged: lower train.lr, set "
                    "train.clip_grad (e.g. 1.0), or use speed.amp=bf16/none instead of fp16.")
        else:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            consecutive_bad = 0
            steps += 1
            values = torch.stack([t.detach().float() for t in terms.values()])
            sums = values if sums is None else sums + values
        batches_done += 1
        samples += pred.shape[0]
        if dist_utils.is_main() and (batches_done % settings.log_every == 0 or batches_done == 1):
            rate = samples * dist_utils.world_size() / max(time.perf_counter() - start, 1e-9)
            loss_value = float(loss.detach())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.0f}")
            if writer:
                global_step = epoch * steps_per_epoch + batches_done
                add_loss_scalars(writer, "train_step",
                                 {name: float(value.detach()) for name, value in terms.items()},
                                 global_step)
                writer.add_scalar("train_step/lr", lr, global_step)
            if batches_done % settings.log_every == 0:
                logger.info("epoch %d step %d/%d  loss %.5f  %.0f samples/s", epoch + 1,
                            batches_done, steps_per_epoch, loss_value, rate)
        if stopping:
            interrupted = batches_done < steps_per_epoch
            break
    if hasattr(bar, "close"):
        bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    names = loss_fn.term_names
    local = torch.zeros(len(names) + 2, dtype=torch.float64)
    if sums is not None:
        local[:len(names)] = sums.double().cpu()
    local[-2], local[-1] = steps, samples
    total = dist_utils.all_reduce_sum(local)
    finite_steps = float(total[-2])
    stats = {name: float(total[i]) / finite_steps if finite_steps else math.nan
             for i, name in enumerate(names)}
    stats.update({"samples_per_s": float(total[-1]) / elapsed, "steps": steps,
                  "bad_steps": bad_steps, "bad_steps_in_a_row": consecutive_bad,
                  "batches_done": batches_done, "interrupted": interrupted, "lr": lr})
    return stats


def add_loss_scalars(writer, section, terms, global_step):
    """Loss terms {name: float} as TensorBoard scalars `<section>/<name>`; the MPJPE term (metres
    in the loss) goes to `<section>/mpjpe_mm` in millimetres, like every other MPJPE curve."""
    for name, value in terms.items():
        if name == "mpjpe":
            writer.add_scalar(f"{section}/mpjpe_mm", value * 1000.0, global_step)
        else:
            writer.add_scalar(f"{section}/{name}", value, global_step)


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
        num_visualize: frames of rank 0's shard drawn into `writer` as figures.
        stop: StopRequest; a signal abandons the pass (all processes agree at the end).
    Returns:
        the metric set's summary over all processes (H36M: "p1", "p2", "frames", "per_action";
        MPI-INF-3DHP: "pck", "auc", "mpjpe", "frames", "per_scene", "per_sequence") plus
        "samples_per_s", or None when a stop request abandoned the evaluation.
    Raises:
        MetaPoseError on every process when the model predicted NaN/Inf for any frame.
    """
    model.eval()
    metrics.reset()
    visual = []
    start = time.perf_counter()
    abandoned, non_finite = False, 0
    for batch in _progress(loader, len(loader), "eval"):
        if stop is not None and stop.requested:
            abandoned = True
            break
        inputs = prepare_batch(batch, device, channels_last)
        pred = predict(model, inputs, flip_test, amp)
        non_finite += int((~torch.isfinite(pred).flatten(1).all(dim=1)).sum())
        metrics.update_batch(pred.cpu(), inputs["joints_3d"].cpu(), batch)
        if dist_utils.is_main() and len(visual) < num_visualize:
            for i in range(min(num_visualize - len(visual), pred.shape[0])):
                visual.append({"image": batch["image"][i],
                               "keypoints_crop": batch["keypoints_2d_crop"][i],
                               "pred_3d": pred[i].cpu(), "gt_3d": batch["joints_3d"][i],
                               "title": metrics.sample_title(batch, i)})
    state = metrics.state()
    flags = torch.tensor([float(non_finite), float(abandoned)], dtype=state.dtype)
    flat = dist_utils.all_reduce_sum(torch.cat([state.flatten(), flags]))
    if float(flat[-1]) > 0:
        return None
    metrics.load_state(flat[:-2].view_as(state))
    summary = metrics.summary()
    if float(flat[-2]) > 0:
        raise _non_finite_predictions(model, int(flat[-2]), summary["frames"],
                                      amp if device.type == "cuda" else "none",
                                      metrics.score_label)
    summary["samples_per_s"] = summary["frames"] / max(time.perf_counter() - start, 1e-9)
    if writer and visual:
        _draw_figures(writer, visual, global_step)
    return summary


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


def _draw_figures(writer, samples, global_step):
    """Each sample as a TensorBoard image: the crop with its 2D joints, predicted and true 3D."""
    from utils.visualization import draw_sample, figure_to_array
    for number, sample in enumerate(samples):
        figure = draw_sample(sample["image"], sample["keypoints_crop"], sample["pred_3d"],
                             sample["gt_3d"], title=sample["title"])
        writer.add_image(f"val/sample_{number}", figure_to_array(figure), global_step,
                         dataformats="HWC")
