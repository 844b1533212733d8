"""Checkpoint files: atomic saves, safe loading (weights_only) and clear errors for bad files."""

import hashlib
import os
import pickle
import re
import warnings
import zipfile

import torch

from utils.atomic_files import atomic_write
from utils.errors import MetaPoseError
from utils.input_files import require_file

# Prefixes that wrappers add to state-dict keys: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def file_sha256(path):
    """Hex SHA-256 of the file `path` (read in 16 MiB blocks): recorded with files converted or
    imported from it, with evaluations, and with the label files a training run used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def first_non_finite(tensors):
    """The first name in the mapping `tensors` whose floating-point tensor holds NaN or Inf, or
    None (one device synchronisation for the whole mapping)."""
    names = [name for name, value in tensors.items()
             if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel()]
    if not names:
        return None
    flags = [~torch.isfinite(tensors[name]).all() for name in names]
    bad = torch.stack([flag.to(flags[0].device) for flag in flags]).cpu()
    return names[int(bad.nonzero()[0])] if bool(bad.any()) else None


def save_checkpoint(obj, path):
    """torch.save(obj) to `path` atomically (utils.atomic_files: temporary file in the same folder,
    fsync, rename; a full disk is one MetaPoseError and the old file stays)."""
    atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Loads a checkpoint with torch.load(weights_only=True).

    Args:
        mmap: map the tensors' storage instead of reading it (cheap when only the small fields
            of a large checkpoint are needed).
    Returns:
        whatever was saved (a dict for training checkpoints and state dicts).
    Raises:
        MetaPoseError for a missing, truncated or foreign file (not written by torch.save, or
        holding arbitrary Python objects that weights-only loading refuses), or a path that is
        not a regular file (a folder, FIFO, device: never opened).
    """
    require_file(path, "checkpoint", "Pass the checkpoint file itself, e.g. "
                 "logs/<run>/checkpoints/best.pt.")
    try:
        with warnings.catch_warnings():  # foreign pickles: the error below says it better
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        if blocked:  # weights-only loading met an object to import: a pickled class or function
            raise MetaPoseError(
                f"checkpoint '{path}' refers to the Python object {blocked.group(1)}, which a "
                "weights file never needs, so it is refused for safety (it was opened with "
                "torch.load(weights_only=True): nothing in it was run). Use a MetaPose checkpoint "
                "or a plain state_dict saved with torch.save.") from None
        raise _unreadable(path, error) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            AttributeError, TypeError, IndexError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path, error):
    """The MetaPoseError for a file that torch.load could not read: a damaged torch.save archive
    (zip) or a file of another kind."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x80"):  # a pickle stream: a plain pickle, or an old torch.save file
        return MetaPoseError(f"'{path}' cannot be read as a PyTorch checkpoint: it is a pickle "
                             "that torch.load does not accept (a plain pickle, or a truncated "
                             "file of the format torch.save used before PyTorch 1.6). Pass a "
                             "checkpoint written by torch.save, e.g. "
                             "logs/<run>/checkpoints/best.pt.")
    if not head.startswith(b"PK"):  # torch.save writes zip archives (PK...) since PyTorch 1.6
        return MetaPoseError(f"'{path}' is not a PyTorch checkpoint: it starts with {head!r}, "
                             "not with the zip header of files written by torch.save. Pass a "
                             "checkpoint, e.g. logs/<run>/checkpoints/best.pt.")
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return MetaPoseError(f"checkpoint '{path}' ({os.path.getsize(path)} bytes) cannot be read: it "
                         f"is truncated or corrupt ({first}). Use a complete checkpoint (e.g. the "
                         "run's checkpoints/last.pt or best.pt).")


def extract_state_dict(checkpoint, path="checkpoint"):
    """The model weights in a loaded file: the "model" entry of a training checkpoint, the
    "state_dict"/"model_state_dict" entry of other common formats, or the dict itself when it is
    already a state dict. Wrapper prefixes ("module.", "_orig_mod.") are removed."""
    if not isinstance(checkpoint, dict):
        raise MetaPoseError(f"'{path}' holds a {type(checkpoint).__name__}, not a state dict or a "
                            "checkpoint dict with a 'model' entry.")
    state = checkpoint
    for key in ("model", "state_dict", "model_state_dict", "model_pos"):
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(map(str, checkpoint))[:8]
        raise MetaPoseError(f"'{path}' is not a model checkpoint: expected a state dict of "
                            f"tensors or a dict with a 'model' entry, found keys {keys}.")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def load_model_state(checkpoint, path="checkpoint"):
    """The model weights of a loaded file in this project's layout, and what the file is.

    checkpoint: what load_checkpoint returned: a MetaPose training or weights checkpoint, a
        plain state dict, or a file written by the authors' published train.py (detected by its
        keys and converted in memory, models/published_checkpoint.py).
    Returns (state_dict, models.published_checkpoint.CheckpointInfo); pass both to
    load_model_weights after building the model (models.build_model(config,
    weights_from_checkpoint=True)).
    """
    from models.published_checkpoint import (CheckpointInfo, convert_published_checkpoint,
                                             is_published_checkpoint)

    if is_published_checkpoint(checkpoint):
        return convert_published_checkpoint(checkpoint, path)
    state = extract_state_dict(checkpoint, path)
    epoch = checkpoint.get("epoch") if "model" in checkpoint else None
    return state, CheckpointInfo(epoch=epoch if isinstance(epoch, int) else None)


# Every script that loads weights takes --config and KEY=VALUE overrides (not all take encoder
# flags), so the advice names those.
_MATCHING_CONFIG = ("pass the --config it was trained with (and its KEY=VALUE overrides, e.g. "
                    "model.image_encoder.type=hrnet_48).")


def load_model_weights(model, state_dict, path="checkpoint", info=None):
    """Copies `state_dict` into `model` strictly, with a MetaPoseError naming the first problem.

    info: the CheckpointInfo of load_model_state; for a converted published file the messages
    use the file's names and say which encoder flags the file needs.
    Raises:
        MetaPoseError for keys missing from the file, keys the model does not have, the first
        key whose shape differs (with both shapes), e.g. a checkpoint of another image encoder,
        or weights that are NaN/Inf.
    """
    expected = model.state_dict()
    if info is not None and info.published:
        from models.published_checkpoint import check_published_fits
        check_published_fits(expected, state_dict, info, path)
    for key, value in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape):
            raise MetaPoseError(
                f"checkpoint '{path}' does not fit this model: '{key}' has shape "
                f"{tuple(state_dict[key].shape)} in the file but {tuple(value.shape)} in the "
                "model. "
                "It was trained with another configuration (image/text encoder type or widths); "
                f"{_MATCHING_CONFIG}")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model key(s) missing from the file, first '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) in the file unknown to the model, first "
                         f"'{unexpected[0]}'")
        raise MetaPoseError(f"checkpoint '{path}' does not fit this model: {'; '.join(parts)}. "
                            f"It was saved from another model or configuration; {_MATCHING_CONFIG}")
    bad = first_non_finite(state_dict)
    if bad is not None:
        raise MetaPoseError(f"checkpoint '{path}' holds non-finite weights (NaN or Inf), first in "
                            f"'{bad}': it was saved from a training that diverged. Use an earlier "
                            "checkpoint, e.g. the run's checkpoints/best.pt.")
    model.load_state_dict(state_dict, strict=True)
