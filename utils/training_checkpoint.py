"""Training checkpoints: what they hold, saving them on rank 0, resuming from them exactly."""

import json
import math
import os
from dataclasses import dataclass

from utils import distributed as dist_utils
from utils.checkpoint import (atomic_copy, load_checkpoint, load_model_state, load_model_weights,
                              save_checkpoint)
from utils.errors import MetaPoseError
from utils.run_dir import git_commit

CHECKPOINT_FORMAT = "metapose-training-checkpoint-v1"


@dataclass
class TrainState:
    epoch: int = 0                # completed epochs
    batches_done: int = 0         # batches of epoch `epoch` trained before an interruption
    best_score: float = None      # best score of the metric set so far (H36M P1, 3DHP MPJPE)
    eval_pending: bool = False    # epoch `epoch` finished but its evaluation was interrupted
    rng_states: list = None


def save_training_checkpoint(paths, model, optimizer, scheduler, scaler, state, config, new_best):
    """Writes checkpoints/last.pt (and best.pt on a new best) on rank 0; every rank's RNG state is
    gathered into it."""
    rng_states = dist_utils.gather_rng_states()
    if not dist_utils.is_main():
        return
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": state.epoch, "batches_done": state.batches_done,
        "eval_pending": state.eval_pending, "best_score": state.best_score,
        "config": json.loads(json.dumps(config)),
        "world_size": dist_utils.world_size(), "batch_size": config.train.batch_size,
        "rng_states": rng_states, "git_commit": git_commit(),
    }
    save_checkpoint(checkpoint, paths.last)
    if new_best:
        atomic_copy(paths.last, paths.best)


def load_weights(model, checkpoint, path, config, logger, converted=None):
    """Copies the weights of a loaded `checkpoint` into `model` (a file of the published
    train.py is converted in memory first). When the checkpoint records the config it was
    trained with, a mismatch error also names the model settings that differ (and a checkpoint
    that fits in spite of such differences is loaded with a warning). converted: the
    (state_dict, info) of load_model_state when already computed. Returns the info."""
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    changed = []
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        changed = [key for key in _changed_keys(saved["model"],
                                                json.loads(json.dumps(config.model)), "model.")
                   if ".pretrained " not in key]  # initial weights do not matter once loaded
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


def check_training_checkpoint(checkpoint, path):
    """Raises MetaPoseError unless `checkpoint` (loaded from `path`) can be resumed."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise MetaPoseError(f"'{path}' is not a MetaPose training checkpoint (no optimizer "
                            "state), so it cannot be resumed. Use --checkpoint to start from its "
                            "weights.")


def resume_training(path, model, optimizer, scheduler, scaler, config, logger, checkpoint=None):
    """Loads a training checkpoint (`checkpoint`, or the file `path`) into the model, optimizer,
    scheduler and scaler; returns the TrainState to continue from."""
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    check_training_checkpoint(checkpoint, path)
    load_weights(model, checkpoint, path, config, logger)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best = checkpoint.get("best_score", checkpoint.get("best_p1"))  # best_p1: older checkpoints
    state = TrainState(epoch=checkpoint["epoch"], batches_done=checkpoint["batches_done"],
                       best_score=best, eval_pending=checkpoint["eval_pending"],
                       rng_states=checkpoint["rng_states"])
    changed = _changed_keys(checkpoint["config"], json.loads(json.dumps(config)))
    if changed:
        logger.info("config differs from the checkpoint's in: %s", ", ".join(changed))
    same_layout = (checkpoint["world_size"] == dist_utils.world_size()
                   and checkpoint["batch_size"] == config.train.batch_size)
    if state.batches_done and not same_layout:
        logger.warning("the interrupted epoch %d ran with %d process(es) and batch %d, now %d "
                       "and %d: it restarts from its beginning", state.epoch + 1,
                       checkpoint["world_size"], checkpoint["batch_size"],
                       dist_utils.world_size(), config.train.batch_size)
        state.batches_done = 0
    logger.info("resumed from '%s': %d epoch(s) done%s, lr %.3g, best score %s", path,
                state.epoch, f" + {state.batches_done} batches" if state.batches_done else "",
                optimizer.param_groups[0]["lr"], score_text(state.best_score))
    return state


def score_text(score):
    """A best score for log lines: '41.30', or 'none' before the first evaluation."""
    return "none" if score is None or math.isinf(score) else f"{score:.2f}"


def _changed_keys(old, new, prefix=""):
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, prefix + key + ".")
        elif a != b and key != "config_path":
            keys.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return keys
