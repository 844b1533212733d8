"""Training and evaluation loops: `train_one_epoch` and `evaluate`, each returning a dict.

Also owns what those loops need around them: the loss module (named terms), moving a batch to the
device with its flips, mixed precision, the data loaders and a cooperative stop on SIGTERM/SIGINT.
All cross-process communication goes through utils.distributed.
"""

import contextlib
import math
import signal
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler

from datasets.samplers import ShardSampler, TrainSampler
from utils import distributed as dist_utils
from utils.errors import MetaPoseError
from utils.flip import (flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop,
                        flip_where)
from utils.geometry import normalize_images
from utils.logger import get_logger
from utils.metrics import ActionErrorAccumulator, mpjpe
from utils.skeleton import ACTION_NAMES

# ----------------------------------------------------------------------------------------------
# Loss


class PoseLoss(nn.Module):
    """Weighted sum of the training terms; returns every term by name for logging.

    Terms: "mpjpe" — Protocol #1 MPJPE in metres between the predicted and ground-truth
    root-relative poses (mean over joints and frames); "kl" — the transformation-alignment KL
    divergence reported by the model (only when its weight is non-zero).
    """

    def __init__(self, mpjpe_weight: float = 1.0, kl_weight: float = 0.0):
        super().__init__()
        self.mpjpe_weight = float(mpjpe_weight)
        self.kl_weight = float(kl_weight)

    @property
    def needs_aux(self):
        """Whether the model must be called with return_aux=True (for the KL term)."""
        return self.kl_weight > 0

    @property
    def term_names(self):
        """Keys of the dict that `forward` returns, in order."""
        return ("loss", "mpjpe", "kl") if self.needs_aux else ("loss", "mpjpe")

    def forward(self, pred, target, aux=None):
        """
        Args:
            pred: (B, 17, 3) predicted root-relative joints, metres.
            target: (B, 17, 3) ground-truth root-relative joints, metres.
            aux: the model's auxiliary outputs ({"kl": scalar tensor}) or None.
        Returns:
            dict of scalar tensors: "loss" (the weighted total), "mpjpe" (metres), and "kl"
            when its weight is non-zero.
        """
        terms = {"mpjpe": mpjpe(pred.float(), target.float()).mean()}
        total = self.mpjpe_weight * terms["mpjpe"]
        if self.needs_aux:
            if aux is None or "kl" not in aux:
                raise RuntimeError("loss.kl > 0 but the model returned no 'kl' term")
            terms["kl"] = aux["kl"].float()
            total = total + self.kl_weight * terms["kl"]
        return {"loss": total, **terms}


def build_loss(config):
    return PoseLoss(mpjpe_weight=config.loss.mpjpe, kl_weight=config.loss.kl)


# ----------------------------------------------------------------------------------------------
# Batches, precision


def autocast_context(device, amp):
    """bf16/fp16 autocast on CUDA; nothing on the CPU or with amp == "none"."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def prepare_batch(batch, device, channels_last=False):
    """Moves a collated batch to `device`, normalises the images and applies the per-sample flips.

    Args:
        batch: dict from the DataLoader: image uint8 (B,3,H,W), keypoints_2d (B,17,2) normalised
            screen, keypoints_2d_crop (B,17,2) crop pixels, joints_3d (B,17,3) metres, action
            (B,), flip bool (B,).
    Returns:
        dict with images float (B,3,H,W) ImageNet-normalised, keypoints_2d, keypoints_2d_crop,
        joints_3d and actions, where the samples marked `flip` are mirrored consistently
        (image, both 2D joint sets and the 3D target; DESIGN 1.3).
    """
    # Asynchronous copies (the DataLoader pins its batches when training on CUDA): nothing here
    # waits for the device, so the host can queue the step while the previous one still runs.
    non_blocking = device.type == "cuda"

    def move(tensor):
        return tensor.to(device, non_blocking=non_blocking)

    images = move(batch["image"])
    if channels_last and device.type == "cuda":
        # uint8 (a quarter of the float bytes); the normalised images inherit the layout.
        images = images.contiguous(memory_format=torch.channels_last)
    out = {
        "images": images,
        "keypoints_2d": move(batch["keypoints_2d"]),
        "keypoints_2d_crop": move(batch["keypoints_2d_crop"]),
        "joints_3d": move(batch["joints_3d"]),
        "actions": move(batch["action"]),
    }
    flip = batch.get("flip")
    # Whether any sample flips is read from the host copy of the mask (on the device it would
    # be a sync). Images flip as uint8: mirroring commutes with the per-channel normalisation.
    if flip is not None and bool(flip.any()):
        mask = move(flip).bool()
        out["images"] = flip_where(mask, out["images"], flip_images)
        out["keypoints_2d"] = flip_where(mask, out["keypoints_2d"], flip_keypoints_2d)
        out["keypoints_2d_crop"] = flip_where(mask, out["keypoints_2d_crop"], flip_keypoints_crop)
        out["joints_3d"] = flip_where(mask, out["joints_3d"], flip_joints_3d)
    out["images"] = normalize_images(out["images"])
    return out


def _model_inputs(inputs):
    return inputs["images"], inputs["keypoints_2d"], inputs["keypoints_2d_crop"], inputs["actions"]


# ----------------------------------------------------------------------------------------------
# Data loading


class EpochSyncedDataset(torch.utils.data.Dataset):
    """Makes `set_epoch` reach DataLoader workers that outlive an epoch (persistent_workers).

    Workers hold copies of the dataset made when they start; the epoch number lives here in a
    shared-memory tensor, and every `__getitem__` forwards it to the worker's copy first.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch):
        self._epoch.fill_(int(epoch))
        self.dataset.set_epoch(int(epoch))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        epoch = int(self._epoch)
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class ResumableSampler(Sampler):
    """Wraps a sampler so that the next pass can start after the first `skip` indices (resuming
    in the middle of an epoch: the batches already trained on are not loaded again)."""

    def __init__(self, sampler):
        self.sampler = sampler
        self._skip = 0

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def skip_next(self, count):
        """The next iteration leaves out its first `count` indices (applies once)."""
        self._skip = int(count)

    def __len__(self):
        return max(len(self.sampler) - self._skip, 0)

    def __iter__(self):
        indices = list(self.sampler)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def _loader_generator(seed):
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def build_train_loader(dataset, batch_size, num_workers, seed, context, pin_memory=True):
    """DataLoader over `dataset` for this process's share of each shuffled epoch.

    Uses TrainSampler (the same permutation on every rank, padded to equal shares) wrapped in a
    ResumableSampler. Batches are full (drop_last) whenever a process has at least one full
    batch, so every rank runs the same number of steps. Base seeds of the workers come from a
    dedicated generator, so creating an iterator never consumes the global RNG.
    """
    sampler = ResumableSampler(TrainSampler(len(dataset), context.world_size, context.rank,
                                            seed=seed, shuffle=True))
    return DataLoader(EpochSyncedDataset(dataset), batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers,
                      pin_memory=pin_memory and context.device.type == "cuda",
                      drop_last=len(sampler) >= batch_size, persistent_workers=num_workers > 0,
                      generator=_loader_generator(seed))


def build_eval_loader(dataset, batch_size, num_workers, context, pin_memory=True):
    """DataLoader over this process's contiguous shard (ShardSampler): every frame exactly once
    over all processes, no padding."""
    sampler = ShardSampler(len(dataset), context.world_size, context.rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory and context.device.type == "cuda", drop_last=False,
                      persistent_workers=num_workers > 0, generator=_loader_generator(0))


# ----------------------------------------------------------------------------------------------
# Stopping on a signal


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that the training loop checks between steps.

    The first signal only sets the flag (the loop finishes its step, saves and exits); a second
    SIGINT raises KeyboardInterrupt at once. `exit_code` is 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        return 128 + int(self.signum) if self.signum is not None else 0

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT == self.signum:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            get_logger().warning("received %s: finishing the current step, then saving "
                                 "checkpoints/last.pt and stopping", signal.Signals(signum).name)

    def install(self):
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class StepSettings:
    """How each optimisation step runs."""

    amp: str = "none"                 # none | bf16 | fp16 (CUDA only)
    clip_grad: float = None           # max gradient norm, None = no clipping
    max_bad_steps: int = 20           # stop after this many consecutive non-finite steps
    log_every: int = 50               # optimiser steps between log lines / TensorBoard points
    channels_last: bool = False

    @classmethod
    def from_config(cls, config):
        return cls(amp=config.speed.amp, clip_grad=config.train.clip_grad,
                   max_bad_steps=config.train.max_bad_steps, log_every=config.train.log_every,
                   channels_last=config.speed.channels_last)


def _progress(iterable, total, description):
    if not dist_utils.is_main():
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=description, dynamic_ncols=True, leave=False,
                disable=None)  # None: shown on a terminal only, not in redirected logs


def train_one_epoch(model, loss_fn, loader, optimizer, device, epoch, settings, *, scaler=None,
                    writer=None, stop=None, skip_batches=0):
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
    Returns:
        dict: mean of each loss term over the finite steps ("loss", "mpjpe" in metres, ...),
        "samples_per_s" (all processes), "steps" (optimizer steps taken), "bad_steps" (skipped
        non-finite steps), "batches_done" (batches of the epoch consumed, including
        `skip_batches`), "interrupted" (stopped by a signal before the end of the epoch).
    Raises:
        MetaPoseError after `settings.max_bad_steps` consecutive non-finite steps.
    """
    logger = get_logger()
    model.train()
    steps_per_epoch = len(loader) + skip_batches
    sums = None
    steps = bad_steps = consecutive_bad = samples = 0
    batches_done = skip_batches
    interrupted = False
    start = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    bar = _progress(loader, len(loader), f"epoch {epoch + 1}")
    for batch in bar:
        inputs = prepare_batch(batch, device, settings.channels_last)
        with autocast_context(device, settings.amp):
            output = model(*_model_inputs(inputs), return_aux=True) if loss_fn.needs_aux \
                else model(*_model_inputs(inputs))
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
                for name, value in terms.items():
                    writer.add_scalar(f"train_step/{name}", float(value.detach()), global_step)
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
                  "bad_steps": bad_steps, "batches_done": batches_done, "interrupted": interrupted,
                  "lr": lr})
    return stats


# ----------------------------------------------------------------------------------------------
# Evaluation


def predict(model, inputs, flip_test, amp="none"):
    """(B, 17, 3) metres; with `flip_test`, the mean of the prediction and the mirrored
    prediction of the mirrored input (both halves in one forward pass)."""
    images, keypoints_2d, keypoints_crop, actions = _model_inputs(inputs)
    with autocast_context(images.device, amp):
        if not flip_test:
            return model(images, keypoints_2d, keypoints_crop, actions).float()
        both = model(torch.cat([images, flip_images(images)]),
                     torch.cat([keypoints_2d, flip_keypoints_2d(keypoints_2d)]),
                     torch.cat([keypoints_crop, flip_keypoints_crop(keypoints_crop)]),
                     torch.cat([actions, actions])).float()
    plain, mirrored = both.chunk(2)
    return (plain + flip_joints_3d(mirrored)) / 2


@torch.no_grad()
def evaluate(model, loader, device, *, flip_test=True, amp="none", channels_last=False,
             num_visualize=0, writer=None, global_step=0, stop=None):
    """Protocol #1 / #2 errors per action over this process's shard, summed over all processes.

    Args:
        model: the unwrapped model (no DDP: shards differ in length, so no per-batch collectives).
        loader: evaluation DataLoader over a ShardSampler.
        flip_test: average with the mirrored prediction of the mirrored input.
        num_visualize: frames of rank 0's shard drawn into `writer` as figures.
        stop: StopRequest; a signal abandons the pass (all processes agree at the end).
    Returns:
        {"p1", "p2" (mm, mean of the per-action means), "frames" (all processes),
         "per_action": {name: {"p1", "p2", "frames"}}, "samples_per_s"}, or None when a stop
        request abandoned the evaluation.
    """
    model.eval()
    accumulator = ActionErrorAccumulator(device="cpu")
    visual = []
    start = time.perf_counter()
    abandoned = False
    for batch in _progress(loader, len(loader), "eval"):
        if stop is not None and stop.requested:
            abandoned = True
            break
        inputs = prepare_batch(batch, device, channels_last)
        pred = predict(model, inputs, flip_test, amp)
        accumulator.update(pred.cpu(), inputs["joints_3d"].cpu(), batch["action"])
        if dist_utils.is_main() and len(visual) < num_visualize:
            for i in range(min(num_visualize - len(visual), pred.shape[0])):
                visual.append({"image": batch["image"][i],
                               "keypoints_crop": batch["keypoints_2d_crop"][i],
                               "pred_3d": pred[i].cpu(), "gt_3d": batch["joints_3d"][i],
                               "index": int(batch["index"][i]), "action": int(batch["action"][i])})
    state = accumulator.state()
    flat = torch.cat([state.flatten(), torch.tensor([float(abandoned)], dtype=state.dtype)])
    flat = dist_utils.all_reduce_sum(flat)
    if float(flat[-1]) > 0:
        return None
    accumulator.load_state(flat[:-1].view_as(state))
    summary = accumulator.summary()
    summary["samples_per_s"] = summary["frames"] / max(time.perf_counter() - start, 1e-9)
    if writer and visual:
        _draw_figures(writer, visual, global_step)
    return summary


def _draw_figures(writer, samples, global_step):
    """Each sample as a TensorBoard image: the crop with its 2D joints, predicted and true 3D."""
    from utils.visualization import draw_sample, figure_to_array
    for number, sample in enumerate(samples):
        title = f"frame {sample['index']} ({ACTION_NAMES.get(sample['action'], sample['action'])})"
        figure = draw_sample(sample["image"], sample["keypoints_crop"], sample["pred_3d"],
                             sample["gt_3d"], title=title)
        writer.add_image(f"val/sample_{number}", figure_to_array(figure), global_step,
                         dataformats="HWC")
