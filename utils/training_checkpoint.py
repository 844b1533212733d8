"""Training checkpoints: what they hold, saving them on rank 0, resuming from them exactly.

The writes of one save happen in this order, each atomic: best.pt (on a new best), the
evaluation's line in metrics.jsonl, last.pt. A kill between any two leaves best.pt holding the
best evaluation that metrics.jsonl or last.pt record (or a better one whose record was still in
flight), and last.pt either before the evaluation (`eval_pending`: --resume runs it again and
drops its line from metrics.jsonl) or after it.
"""

import json
import math
import os
from dataclasses import dataclass, field

import torch

from utils import distributed as dist_utils
from utils.atomic_files import atomic_copy
from utils.checkpoint import (first_non_finite, load_checkpoint, load_model_state,
                              load_model_weights, save_checkpoint)
from utils.config import setting_source
from utils.errors import MetaPoseError
from utils.run_dir import git_commit, record_metrics

CHECKPOINT_FORMAT = "metapose-training-checkpoint-v1"


@dataclass
class TrainState:
    epoch: int = 0                # completed epochs
    batches_done: int = 0         # batches of epoch `epoch` trained before an interruption
    best_score: float = None      # best score of the metric set so far (H36M P1, 3DHP MPJPE)
    eval_pending: bool = False    # epoch `epoch` finished but its evaluation has not been recorded
    rng_states: list = None
    best_epoch: int = None        # the epoch whose evaluation gave best_score (best.pt holds it)
    bad_steps_in_a_row: int = 0   # non-finite steps in a row so far (train.max_bad_steps)
    data: dict = field(default_factory=dict)  # {split: {"path", "sha256", "frames"}} trained on


def _is_int(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Every field of a training checkpoint: (test, what it must be).
FIELDS = {
    "model": (lambda v: isinstance(v, dict), "a state dict"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list),
                  "an optimizer state dict with 'state' and 'param_groups'"),
    "scheduler": (lambda v: isinstance(v, dict) and _is_int(v.get("last_epoch"), -1)
                  and _is_number(v.get("gamma")) and isinstance(v.get("base_lrs"), list)
                  and all(_is_number(x) for x in v["base_lrs"]),
                  "an ExponentialLR state dict (numeric 'gamma', 'base_lrs', 'last_epoch')"),
    "scaler": (lambda v: v is None or isinstance(v, dict), "a GradScaler state dict or None"),
    "epoch": (_is_int, "an integer >= 0"),
    "batches_done": (_is_int, "an integer >= 0"),
    "eval_pending": (lambda v: isinstance(v, bool), "true or false"),
    "best_score": (lambda v: v is None or (_is_number(v) and math.isfinite(v)),
                   "a finite number, the metric set's best score (None before any evaluation)"),
    "best_epoch": (lambda v: v is None or _is_int(v, 1), "an epoch number or None"),
    "bad_steps_in_a_row": (_is_int, "an integer >= 0"),
    "data": (lambda v: isinstance(v, dict), "a mapping of label files"),
    "config": (lambda v: isinstance(v, dict), "the config mapping"),
    "world_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "rng_states": (lambda v: isinstance(v, list) and v and all(isinstance(s, dict) for s in v),
                   "a list of RNG states, one per process"),
}


def _shown(value):
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{text[:60] + '...' if len(text) > 60 else text} ({type(value).__name__})"


def _damaged(path, problem):
    return MetaPoseError(f"'{path}' cannot be resumed by this version of MetaPose (it is damaged "
                         f"or was written by another version): {problem}. Resume from another "
                         "checkpoint of the run (checkpoints/last.pt or best.pt), or start a new "
                         "run from its weights with --checkpoint FILE.")


def check_training_checkpoint(checkpoint, path):
    """Raises MetaPoseError unless `checkpoint` (loaded from `path`) can be resumed: every field
    present with a value of the right kind, every RNG state restorable."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MetaPoseError(f"'{path}' is not a MetaPose training checkpoint (no optimizer "
                            "state), so it cannot be resumed. Use --checkpoint to start from its "
                            "weights.")
    for name, (test, what) in FIELDS.items():
        if name not in checkpoint:
            raise _damaged(path, f"its field '{name}' ({what}) is missing")
        if not test(checkpoint[name]):
            raise _damaged(path, f"its field '{name}' is {_shown(checkpoint[name])} but must be "
                                 f"{what}")
    current = dist_utils.get_rng_state()
    try:
        for index, entry in enumerate(checkpoint["rng_states"]):
            try:
                dist_utils.set_rng_state(entry)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError,
                    AttributeError) as error:
                raise _damaged(path, f"its RNG state 'rng_states[{index}]' cannot be restored "
                                     f"({type(error).__name__}: {error})") from None
    finally:
        dist_utils.set_rng_state(current)


def check_resume_position(checkpoint, path, config):
    """Raises MetaPoseError unless the position a training checkpoint records fits its own
    learning-rate schedule and this run's: the scheduler stepped once per completed epoch,
    the best epoch is one of them, a pending evaluation follows an epoch, and there is an epoch
    left to train or evaluate within train.epochs."""
    epoch, best_epoch = checkpoint["epoch"], checkpoint["best_epoch"]
    steps = checkpoint["scheduler"]["last_epoch"]
    if steps != epoch:
        raise _damaged(path, f"its field 'epoch' says {epoch:,} epochs were completed, but its "
                             f"learning-rate schedule stepped {steps:,} time"
                             f"{'' if steps == 1 else 's'} (once per epoch)")
    if best_epoch is not None and best_epoch > epoch:
        raise _damaged(path, f"its field 'best_epoch' ({best_epoch:,}) comes after the "
                             f"{epoch:,} completed epochs")
    if checkpoint["eval_pending"] and epoch == 0:
        raise _damaged(path, "it has an evaluation pending before any epoch was completed")
    epochs, partial = config.train.epochs, checkpoint["batches_done"]
    if epoch > epochs or (epoch == epochs and partial):
        done = f"{epoch:,} epochs" + (f" and {partial:,} batches of the next" if partial else "")
        raise MetaPoseError(
            f"'{path}' has completed {done}, more than train.epochs = {epochs} "
            f"(from {setting_source(config, 'train.epochs')}): there is nothing left to train. "
            f"Pass train.epochs={epoch + 1} or more to train it further, or evaluate it with "
            f"--eval --checkpoint {path}.")


def _same_training_data(saved, current):
    """Whether the training label file is the one the checkpoint was trained on (True when
    either side does not record it: nothing says it changed)."""
    then, now = (saved or {}).get("train"), (current or {}).get("train")
    if not isinstance(then, dict) or not isinstance(now, dict):
        return True
    return then.get("sha256") == now.get("sha256")


def save_training_checkpoint(paths, model, optimizer, scheduler, scaler, state, config,
                             new_best=False, evaluation=None):
    """Saves the run on rank 0 (every rank's RNG state is gathered into it), in the order of the
    module docstring: best.pt on `new_best`, then `evaluation` (a metrics.jsonl record) if given,
    then last.pt.

    Raises:
        MetaPoseError on every process, before anything is written, when the weights or the
        optimizer state are not finite (a diverged run never overwrites good files).
    """
    bad = first_non_finite(model.state_dict())
    where = f"after {state.epoch} epoch(s)" + (f" and {state.batches_done} batches"
                                               if state.batches_done else "")
    if bad is None:
        moments = {f"{index}.{name}": value for index, values in optimizer.state_dict()["state"]
                   .items() for name, value in values.items()}
        bad = first_non_finite(moments)
        bad = None if bad is None else f"optimizer state {bad}"
    if bad is not None:
        raise MetaPoseError(
            f"training diverged: the weights are no longer finite {where} (NaN or Inf in "
            f"'{bad}'). Nothing was saved, so checkpoints/last.pt and best.pt keep the last "
            "good state. Lower train.lr, set train.clip_grad (e.g. 1.0) or use speed.amp=bf16/"
            "none instead of fp16, and start again or --resume.")
    rng_states = dist_utils.gather_rng_states()
    if not dist_utils.is_main():
        return
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": state.epoch, "batches_done": state.batches_done,
        "eval_pending": state.eval_pending, "best_score": state.best_score,
        "best_epoch": state.best_epoch, "bad_steps_in_a_row": state.bad_steps_in_a_row,
        "data": state.data, "config": json.loads(json.dumps(config)),
        "world_size": dist_utils.world_size(), "batch_size": config.train.batch_size,
        "rng_states": rng_states, "git_commit": git_commit(),
    }
    if new_best:
        save_checkpoint(checkpoint, paths.best)
    if evaluation is not None:
        record_metrics(paths, evaluation)
    if new_best:
        atomic_copy(paths.best, paths.last)
    else:
        save_checkpoint(checkpoint, paths.last)


def load_weights(model, checkpoint, path, config, logger, converted=None):
    """Copies the weights of a loaded `checkpoint` into `model` (a file of the published
    train.py is converted in memory first). When the checkpoint records the config it was
    trained with, a mismatch error also names the model settings that differ (and a checkpoint
    that fits in spite of such differences is loaded with a warning). converted: the
    (state_dict, info) of load_model_state when already computed. Returns the info."""
    changed = model_setting_changes(checkpoint, config)
    state, info = converted or load_model_state(checkpoint, path)
    try:
        load_model_weights(model, state, path, info)
    except MetaPoseError as error:
        if not changed:
            raise
        raise MetaPoseError(f"{error} The checkpoint was saved with other model settings: "
                            f"{', '.join(changed)}.") from None
    if info.published:
        logger.info("'%s': %s", path, info.summary())
    if changed:
        logger.warning("'%s' was saved with other model settings (%s); its weights fit this "
                       "model and are used", path, ", ".join(changed))
    return info


def model_setting_changes(checkpoint, config):
    """"key (old in the checkpoint, new from SOURCE)" for every model setting of `config` that
    differs from the config the loaded `checkpoint` records (none when it records none); the
    pretrained files are left out: initial weights do not matter once a checkpoint is loaded."""
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        return []
    return [f"{key} ({old!r} in the checkpoint, {new!r} from {setting_source(config, key)})"
            for key, old, new in _differences(saved["model"], json.loads(json.dumps(config.model)),
                                              "model.")
            if not key.endswith(".pretrained")]


def find_resume_checkpoint(paths, logger):
    """(path, loaded checkpoint) of the newest complete checkpoint of the run directory for a
    bare --resume: checkpoints/last.pt, or best.pt (an older epoch) when last.pt is missing or
    cannot be read."""
    candidates = [path for path in (paths.last, paths.best) if os.path.exists(path)]
    if not candidates:
        raise MetaPoseError(f"--resume found nothing to resume: '{paths.last}' does not exist. "
                            "Start without --resume, or pass --resume FILE.")
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except MetaPoseError as error:
            problems.append(str(error))
            logger.warning("cannot resume from '%s': %s", path, error)
    raise MetaPoseError(f"--resume found no readable checkpoint in '{paths.checkpoints}': "
                        f"{' '.join(problems)}")


def resume_training(path, model, optimizer, scheduler, scaler, config, logger, checkpoint=None,
                    steps_per_epoch=None, data=None):
    """Loads a training checkpoint (`checkpoint`, or the file `path`) into the model, optimizer,
    scheduler and scaler, then applies the config's train.lr / lr_decay / weight_decay where they
    differ from the checkpoint's (logged).

    steps_per_epoch: training steps per epoch of this start (its data, processes and batch
        size); data: its label files ({split: {"path", "sha256", "frames"}}). With them the
        checkpoint's position is checked against the data (check_resume_position).
    Returns:
        (TrainState to continue from, list of "key (old -> new)" optimizer settings changed).
    Raises:
        MetaPoseError for a checkpoint that is damaged, whose position does not fit the schedule
        or the data, or that does not fit the model/optimizer (naming the settings of this run
        that differ from the checkpoint's, and where they were set).
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    check_training_checkpoint(checkpoint, path)
    check_resume_position(checkpoint, path, config)
    load_weights(model, checkpoint, path, config, logger)
    _load_optimizer(optimizer, checkpoint["optimizer"], model, path,
                    model_setting_changes(checkpoint, config))
    try:
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged(path, f"its scheduler or scaler state cannot be loaded ({error})") from None
    best = checkpoint["best_score"]
    state = TrainState(epoch=checkpoint["epoch"], batches_done=checkpoint["batches_done"],
                       best_score=None if best is None else float(best),
                       eval_pending=checkpoint["eval_pending"],
                       rng_states=checkpoint["rng_states"], best_epoch=checkpoint["best_epoch"],
                       bad_steps_in_a_row=checkpoint["bad_steps_in_a_row"],
                       data=checkpoint["data"])
    changed = _changed_keys(checkpoint["config"], json.loads(json.dumps(config)))
    if changed:
        logger.info("config differs from the checkpoint's in: %s", ", ".join(changed))
    applied = apply_optimizer_settings(optimizer, scheduler, config.train, state.epoch)
    if applied:
        logger.warning("--resume applies the changed optimizer settings %s: epoch %d runs with "
                       "lr %.4g (train.lr x train.lr_decay^%d)", ", ".join(applied),
                       state.epoch + 1, optimizer.param_groups[0]["lr"], state.epoch)
    same_layout = (checkpoint["world_size"] == dist_utils.world_size()
                   and checkpoint["batch_size"] == config.train.batch_size)
    if state.batches_done and not same_layout:
        logger.warning("the interrupted epoch %d ran with %d process(es) and batch %d, now %d "
                       "and %d: it restarts from its beginning", state.epoch + 1,
                       checkpoint["world_size"], checkpoint["batch_size"],
                       dist_utils.world_size(), config.train.batch_size)
        state.batches_done = 0
    if state.batches_done and steps_per_epoch is not None \
            and state.batches_done >= steps_per_epoch:
        if _same_training_data(checkpoint["data"], data):
            raise _damaged(path, f"its field 'batches_done' says {state.batches_done:,} batches "
                                 f"of epoch {state.epoch + 1} were trained, but an epoch of its "
                                 f"data has {steps_per_epoch:,} steps with "
                                 f"{checkpoint['world_size']} process(es) and batch "
                                 f"{checkpoint['batch_size']}")
        logger.warning("the interrupted epoch %d had trained %d batches, more than the %d of an "
                       "epoch of the changed training data: it restarts from its beginning",
                       state.epoch + 1, state.batches_done, steps_per_epoch)
        state.batches_done = 0
    logger.info("resumed from '%s': %d epoch(s) done%s, lr %.3g, best score %s", path,
                state.epoch, f" + {state.batches_done} batches" if state.batches_done else "",
                optimizer.param_groups[0]["lr"], score_text(state.best_score))
    return state, applied


def _does_not_fit(path, problem, changes):
    """The error for an optimizer state that does not fit this model: the changed model
    settings (`changes`, from model_setting_changes) are its cause when there are any, else the
    file is damaged."""
    if not changes:
        return _damaged(path, f"{problem}: it was saved from another model or set of trainable "
                              "parameters")
    return MetaPoseError(
        f"'{path}' cannot be resumed with the model settings of this run: {problem}, because "
        f"they differ from the checkpoint's: {'; '.join(changes)}. Resume with the settings "
        "the run was trained with (remove that override or edit that file), or start a new run "
        "from the checkpoint's weights with --checkpoint FILE (a fresh optimizer).")


def _load_optimizer(optimizer, saved, model, path, changes=()):
    """optimizer.load_state_dict(saved) after checking that the saved state fits the optimizer's
    parameter groups (count of groups and parameters, the shape of every moment tensor).
    changes: the model settings that differ from the checkpoint's (named as the cause)."""
    names = {id(p): name for name, p in model.named_parameters()}
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise _does_not_fit(path, f"its optimizer state has {len(groups)} parameter group(s), "
                                  f"this model's optimizer {len(optimizer.param_groups)}", changes)
    for index, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        ids = group.get("params") if isinstance(group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(ours["params"]):
            count = len(ids) if isinstance(ids, list) else _shown(ids)
            raise _does_not_fit(path, f"its optimizer state holds {count} trainable parameters "
                                      f"in group {index}, this model has "
                                      f"{len(ours['params'])}", changes)
        for key in ("lr", "weight_decay"):
            if not _is_number(group.get(key)) or not math.isfinite(group[key]):
                raise _damaged(path, f"its optimizer group {index} has {key} "
                                     f"{_shown(group.get(key))}")
        for number, parameter in zip(ids, ours["params"]):
            moments = saved["state"].get(number, {})
            if not isinstance(moments, dict):
                raise _damaged(path, f"its optimizer state of parameter {number} is "
                                     f"{_shown(moments)}")
            for key, value in moments.items():
                if key == "step":
                    continue
                name = names.get(id(parameter), str(number))
                if not isinstance(value, torch.Tensor) or value.shape != parameter.shape:
                    raise _does_not_fit(path, f"its optimizer state '{key}' of parameter "
                                              f"'{name}' is {_shown(value)}, the parameter has "
                                              f"shape {tuple(parameter.shape)}", changes)
    try:
        optimizer.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise _damaged(path, f"its optimizer state cannot be loaded ({error})") from None


def apply_optimizer_settings(optimizer, scheduler, train, epoch):
    """Makes the optimizer and the scheduler follow `train` (config.train) where a resumed
    checkpoint ran with another lr, lr_decay or weight_decay: from epoch `epoch` (0-based) on the
    learning rate is train.lr * train.lr_decay ** epoch, as if the run had had these settings
    from its start. Untouched when nothing changed (the exact resume stays bit-exact).

    Returns:
        ["train.lr (old -> new)", ...] for the settings that changed.
    """
    applied = []
    base, gamma = scheduler.base_lrs[0], scheduler.gamma
    if train.lr != base or train.lr_decay != gamma:
        if train.lr != base:
            applied.append(f"train.lr ({base!r} -> {train.lr!r})")
        if train.lr_decay != gamma:
            applied.append(f"train.lr_decay ({gamma!r} -> {train.lr_decay!r})")
        lr = train.lr * train.lr_decay ** epoch
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = train.lr, lr
        scheduler.base_lrs = [train.lr] * len(optimizer.param_groups)
        scheduler.gamma = train.lr_decay
        scheduler._last_lr = [lr] * len(optimizer.param_groups)
    decay = optimizer.param_groups[0]["weight_decay"]
    if train.weight_decay != decay:
        applied.append(f"train.weight_decay ({decay!r} -> {train.weight_decay!r})")
        for group in optimizer.param_groups:
            group["weight_decay"] = train.weight_decay
    return applied


def check_resumed_data(saved, current, path, allow_change, logger):
    """Compares the label files a checkpoint was trained on (`saved`, its "data" field) with those
    of this start (`current`, {split: {"path", "sha256", "frames"}}).

    Returns:
        whether the validation set changed (then, with `allow_change`, the best score restarts:
        scores on two validation sets do not compare).
    Raises:
        MetaPoseError when a file's contents differ, unless `allow_change` (--allow-data-change).
    """
    changed = [split for split, now in current.items()
               if split in saved and saved[split].get("sha256") != now["sha256"]]
    for split in changed:
        then, now = saved[split], current[split]
        logger.warning("the %s label file differs from the one '%s' was trained on: '%s' (%s "
                       "frames, sha256 %s...) then, '%s' (%d frames, sha256 %s...) now", split,
                       path, then.get("path"), then.get("frames"), str(then.get("sha256"))[:12],
                       now["path"], now["frames"], now["sha256"][:12])
    if changed and not allow_change:
        split = changed[0]
        then, now = saved[split], current[split]
        raise MetaPoseError(
            f"the {split} label file '{now['path']}' is not the one '{path}' was trained on (its "
            f"sha256 was {str(then.get('sha256'))[:12]}... with {then.get('frames')} frames, now "
            f"{now['sha256'][:12]}... with {now['frames']}), so the run would mix results on "
            "different data. Restore the original files, start a new run (--run-name NAME), or "
            "pass --allow-data-change to continue anyway (a changed validation set restarts the "
            "best score).")
    return "validation" in changed


def score_text(score):
    """A best score for log lines: '41.30', or 'none' before the first evaluation."""
    return "none" if score is None else f"{score:.2f}"


def _differences(old, new, prefix=""):
    """(dotted key, old value, new value) of every setting that differs between two configs."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, prefix + key + ".")
        elif a != b and key != "config_path":
            found.append((prefix + key, a, b))
    return found


def _changed_keys(old, new, prefix=""):
    return [f"{key} ({a!r} -> {b!r})" for key, a, b in _differences(old, new, prefix)]
