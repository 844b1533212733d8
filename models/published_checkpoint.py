"""Checkpoints written by the authors' published train.py (docs/method.md §4): detected by their keys and
converted in memory to this project's state-dict layout.

A published file is `{"epoch", "lr", "optimizer", "model"}`; "model" (keys usually with DDP's
`module.` prefix) holds `image_encoder.*` (HRNet, official keys), `text_encoder.*` (the whole
OpenAI CLIP), `learnable_prompts` (17 * P, Dt) and `pose_net.*`. Where each goes here:

    image_encoder.<k>       -> image_encoder.<k>           (same official HRNet names)
    text_encoder.<k>        -> text_encoder.clip.<k>       (the CLIP text tower: these weights
                                                            ARE the text encoder)
    learnable_prompts       -> text_encoder.prompts        (same flat layout)
    pose_net.<name>         -> published_pose_net_key(name) (models/published_layout.py)

Deliberately dropped, and named in the summary: `text_encoder.visual.*` (CLIP's image tower),
`text_encoder.logit_scale`, `image_encoder.final_layer.*` (the HRNet heatmap head, if present)
and the entries `optimizer`, `epoch`, `lr`. Anything else left over, and anything the model
needs that the file lacks, is a MetaPoseError naming it (`check_published_fits`).
"""

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from models.clip_text import CLIP_TEXT_CONFIGS
from models.hrnet import HRNET_TYPES
from models.published_layout import PUBLISHED_RENAMES, published_pose_net_key
from utils.errors import MetaPoseError
from utils.skeleton import NUM_JOINTS

DDP_PREFIX = "module."
PUBLISHED_PROMPTS = "learnable_prompts"
OUR_PROMPTS = "text_encoder.prompts"
PUBLISHED_CLIP = "text_encoder."
OUR_CLIP = "text_encoder.clip."
IMAGE = "image_encoder."
POSE = "pose_net."
# Model entries that are not used, and why (a prefix ends with "."; otherwise the whole key).
DROPPED = {
    "text_encoder.visual.": "CLIP image tower",
    "text_encoder.logit_scale": "CLIP logit scale",
    "image_encoder.final_layer.": "HRNet heatmap head",
}
DROPPED_ENTRIES = ("optimizer", "epoch", "lr")  # top-level entries besides "model"
# Tensors whose shapes tell the encoders a file was trained with.
HRNET_WIDTH_KEY = "image_encoder.transition1.0.0.weight"      # (C, 256, 3, 3)
CLIP_WIDTH_KEY = "text_encoder.positional_embedding"          # (77, W)


@dataclass
class CheckpointInfo:
    """What a checkpoint file is, beside its weights (returned with them by load_model_state)."""

    published: bool = False
    epoch: Optional[int] = None
    lr: Optional[float] = None
    image_encoder: Optional[str] = None   # detected type, e.g. "hrnet_32" (published files)
    hrnet_width: Optional[int] = None
    text_encoder: Optional[str] = None    # e.g. "ViT-B/32"
    text_width: Optional[int] = None
    prompt_tokens: Optional[int] = None
    used: dict = field(default_factory=dict)      # group -> tensors converted
    dropped: dict = field(default_factory=dict)   # what -> count
    published_names: dict = field(default_factory=dict)  # our key -> name in the file

    def summary(self):
        """One line for the log: what was converted and what was dropped."""
        used = ", ".join(f"{count} {group}" for group, count in self.used.items())
        dropped = ", ".join(f"{what} ({count})" if count > 1 else what
                            for what, count in self.dropped.items())
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return (f"published checkpoint ({self.image_encoder}, CLIP {self.text_encoder}, "
                f"{self.prompt_tokens} prompts per joint{epoch}) converted in memory: used "
                f"{used}; dropped {dropped or 'nothing'}")


def _published_model_entries(checkpoint):
    """The state dict inside a published file (the "model" entry, or the file itself when it is a
    bare state dict), or None."""
    if not isinstance(checkpoint, dict):
        return None
    state = checkpoint.get("model") if isinstance(checkpoint.get("model"), dict) else checkpoint
    return state if all(isinstance(key, str) for key in state) else None


def _strip(key):
    return key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key


def is_published_checkpoint(checkpoint):
    """True when a loaded file is in the published train.py's layout, judged by its keys
    (`learnable_prompts`, or a CLIP tower directly under `text_encoder.`), not its name."""
    state = _published_model_entries(checkpoint)
    if not state:
        return False
    for key in map(_strip, state):
        if key == PUBLISHED_PROMPTS:
            return True
        if key.startswith(PUBLISHED_CLIP) and not key.startswith(OUR_CLIP) and key != OUR_PROMPTS:
            return True
    return False


def _dropped_reason(key):
    for pattern, reason in DROPPED.items():
        if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
            return reason
    return None


def _our_key(key):
    """This project's key of the published model entry `key` (no DDP prefix), or None when it is
    not a published tensor. Raises MetaPoseError for an unknown pose_net name."""
    if key == PUBLISHED_PROMPTS:
        return OUR_PROMPTS
    if key.startswith(IMAGE):
        return key
    if key.startswith(PUBLISHED_CLIP):
        return OUR_CLIP + key[len(PUBLISHED_CLIP):]
    if key.startswith(POSE):
        return published_pose_net_key(key)
    return None


def _group(key):
    return {IMAGE: "HRNet", PUBLISHED_CLIP: "CLIP text", POSE: "pose-network"}.get(
        key.split(".", 1)[0] + ".", "prompts")


def _detect_encoders(state, info):
    hrnet = state.get(HRNET_WIDTH_KEY)
    if isinstance(hrnet, torch.Tensor) and hrnet.dim() == 4:
        info.hrnet_width = int(hrnet.shape[0])
        info.image_encoder = next((name for name, width in HRNET_TYPES.items()
                                   if width == info.hrnet_width), f"HRNet width {info.hrnet_width}")
    clip = state.get(CLIP_WIDTH_KEY)
    if isinstance(clip, torch.Tensor) and clip.dim() == 2:
        info.text_width = int(clip.shape[1])
        info.text_encoder = next((name for name, spec in CLIP_TEXT_CONFIGS.items()
                                  if spec["width"] == info.text_width),
                                 f"text width {info.text_width}")
    prompts = state.get(PUBLISHED_PROMPTS)
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2 and prompts.shape[0] % NUM_JOINTS == 0:
        info.prompt_tokens = prompts.shape[0] // NUM_JOINTS


def convert_published_checkpoint(checkpoint, path):
    """(state dict in this project's layout, CheckpointInfo) of a published file's contents.

    Raises MetaPoseError naming the first entry that is neither a published tensor nor one of
    the deliberately dropped ones (and how many more there are), or a non-tensor entry.
    """
    state = {_strip(key): value for key, value in _published_model_entries(checkpoint).items()}
    info = CheckpointInfo(published=True)
    if "model" in checkpoint:
        info.epoch = checkpoint.get("epoch") if isinstance(checkpoint.get("epoch"), int) else None
        info.lr = checkpoint.get("lr") if isinstance(checkpoint.get("lr"), float) else None
        for entry in checkpoint:
            if entry != "model":
                info.dropped[f"the '{entry}' entry"] = 1
    _detect_encoders(state, info)
    converted, unknown = {}, []
    for key, value in state.items():
        reason = _dropped_reason(key)
        if reason is not None:
            info.dropped[reason] = info.dropped.get(reason, 0) + 1
            continue
        try:
            ours = _our_key(key)
        except MetaPoseError:
            ours = None
        if ours is None:
            unknown.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise MetaPoseError(f"published checkpoint '{path}': '{key}' holds a "
                                f"{type(value).__name__}, not a tensor; the file is damaged.")
        converted[ours] = value
        info.published_names[ours] = key
        info.used[_group(key)] = info.used.get(_group(key), 0) + 1
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise MetaPoseError(
            f"published checkpoint '{path}' holds '{unknown[0]}'{more}, which is not a tensor "
            "of the published MetaPose (image_encoder.*, text_encoder.*, learnable_prompts, "
            "pose_net.* as in its train.py). The file was written by other code; convert it "
            "with that code's own names, or remove the extra tensors.")
    return converted, info


# ---------------------------------------------------------------------------------------------
# Names in the file of this project's keys (for messages about missing tensors)

def _invert_rule(pattern, replacement):
    """(regex over our key after 'pose_net.', template of the published name) undoing one
    (pattern, replacement) rule of PUBLISHED_RENAMES. Supports what those rules use: literal
    text, '\\.' and non-nested groups referenced as \\1, \\2, ... in the replacement."""
    groups, literal, pieces, index = [], [], [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "(":
            end = pattern.index(")", index)
            pieces.append(("".join(literal), len(groups)))
            literal = []
            groups.append(pattern[index + 1:end])
            index = end + 1
        elif char == "\\" and pattern[index + 1] == ".":
            literal.append(".")
            index += 2
        elif char in ".^$*+?{}[]|\\":
            raise ValueError(f"cannot invert the rename rule {pattern!r}")
        else:
            literal.append(char)
            index += 1
    tail = "".join(literal)
    regex, last = "", 0
    for match in re.finditer(r"\\(\d)", replacement):
        number = int(match.group(1))
        regex += re.escape(replacement[last:match.start()])
        regex += f"(?P<g{number}>{groups[number - 1]})"
        last = match.end()
    regex += re.escape(replacement[last:])
    return re.compile(regex), pieces, tail


_INVERSE_RULES = tuple(_invert_rule(p, r) for p, r in PUBLISHED_RENAMES)


def published_pose_net_name(key):
    """The published name of this project's pose-network key `key` (the inverse of
    published_pose_net_key), or None."""
    if not key.startswith(POSE):
        return None
    rest = key[len(POSE):]
    for regex, pieces, tail in _INVERSE_RULES:
        match = regex.fullmatch(rest)
        if match:
            name = POSE + "".join(text + match.group(f"g{group + 1}")
                                  for text, group in pieces) + tail
            if published_pose_net_key(name) == key:
                return name
    return None


def published_name(key):
    """The name a published file gives to this project's key `key`."""
    if key == OUR_PROMPTS:
        return PUBLISHED_PROMPTS
    if key.startswith(OUR_CLIP):
        return PUBLISHED_CLIP + key[len(OUR_CLIP):]
    return published_pose_net_name(key) or key


# ---------------------------------------------------------------------------------------------
# Does a converted file fit a model?

def _flag(detected, types, encoder, width):
    """The config override that builds the encoder a file has (every script that loads weights
    takes overrides): its type, or (for a width no published type has, e.g. a test model) its
    width."""
    return f"model.{encoder}.type={detected}" if detected in types \
        else f"model.{encoder}.width={width}"


def _encoder_mismatch(model_state, info, path):
    """A MetaPoseError when the file's HRNet width, CLIP size or prompt count differ from the
    model's, saying which the file has and which flags to pass; else None."""
    hrnet = model_state.get(HRNET_WIDTH_KEY)
    if info.hrnet_width is not None and hrnet is not None and hrnet.shape[0] != info.hrnet_width:
        width = info.hrnet_width
        flag = _flag(info.image_encoder, HRNET_TYPES, "image_encoder", width)
        return MetaPoseError(
            f"'{path}' is a published checkpoint of {info.image_encoder} (level widths "
            f"{width}/{2 * width}/{4 * width}/{8 * width}) but the model was built with HRNet "
            f"width {hrnet.shape[0]}; pass {flag}.")
    clip = model_state.get(OUR_CLIP + "positional_embedding")
    if info.text_width is not None and clip is not None and clip.shape[1] != info.text_width:
        flag = _flag(info.text_encoder, CLIP_TEXT_CONFIGS, "text_encoder", info.text_width)
        return MetaPoseError(
            f"'{path}' is a published checkpoint with the CLIP {info.text_encoder} text tower "
            f"(width {info.text_width}) but the model was built with text width "
            f"{clip.shape[1]}; pass {flag}.")
    prompts = model_state.get(OUR_PROMPTS)
    if info.prompt_tokens is not None and prompts is not None \
            and prompts.shape[0] != NUM_JOINTS * info.prompt_tokens:
        return MetaPoseError(
            f"'{path}' is a published checkpoint with {info.prompt_tokens} prompt tokens per "
            f"joint but the model has {prompts.shape[0] // NUM_JOINTS}; set "
            f"model.text_encoder.prompt_tokens={info.prompt_tokens}.")
    return None


def check_published_fits(model_state, state, info, path):
    """Raises MetaPoseError unless the converted `state` fills `model_state` (a model's
    state_dict) exactly: other encoder widths (with the flags to pass), tensors the file lacks,
    tensors the model has no place for, or a shape that differs — each named as in the file."""
    mismatch = _encoder_mismatch(model_state, info, path)
    if mismatch is not None:
        raise mismatch
    names = info.published_names
    leftover = [names.get(key, key) for key in state if key not in model_state]
    if leftover:
        more = f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""
        raise MetaPoseError(
            f"published checkpoint '{path}' holds '{leftover[0]}'{more}, for which this model "
            "has no place. The file was trained with other model settings (depth, embed_dim, "
            "...); pass the matching --config.")
    missing = [key for key in model_state if key not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        ours = f" (this model's '{missing[0]}')" if published_name(missing[0]) != missing[0] \
            else ""
        raise MetaPoseError(
            f"published checkpoint '{path}' lacks '{published_name(missing[0])}'{ours}{more}. "
            "The file is incomplete or was written by other code; use the complete file "
            "written by the published train.py.")
    for key, value in model_state.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise MetaPoseError(
                f"published checkpoint '{path}': '{names.get(key, key)}' has shape "
                f"{tuple(state[key].shape)} but this model needs {tuple(value.shape)} (its "
                f"'{key}'). The file was trained with other model settings; the published "
                "network is the paper configuration (experiments/human36m/human36m.yaml, e.g. "
                "model.alignment.per_channel=false).")
