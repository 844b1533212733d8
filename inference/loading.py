"""A trained MetaPose ready for inference: any accepted checkpoint, its config, the text features
computed once (a constant table, so neither CLIP nor the tokenizer runs afterwards) and the HRNet
heatmap head for 2D joints where one is available."""

import difflib
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from utils.checkpoint import load_checkpoint, load_model_state, load_model_weights
from utils.cli import resolve_device
from utils.config import CHOICES, config_from_mapping, load_config
from utils.errors import MetaPoseError
from utils.input_files import file_problem, require_file
from utils.skeleton import ACTION_IDS, ACTION_NAMES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(REPO_ROOT, "experiments", "human36m", "human36m.yaml")
WEIGHTS_FORMAT = "metapose-weights-v1"  # tools/convert_published_checkpoint.py
ALL_ACTIONS = "all"
JOINT_ROW = "joint"


class TextFeatureTable(nn.Module):
    """Stands in for the text encoder once its features are known: row r of a constant table.

    features: (R, 17, Dt). Rows: ("joint",) in joint mode; ("all", Directions, ..., WalkTogether)
    in joint_action mode, the 15 actions in H36M id order after row 0, their mean. forward(rows)
    takes (B,) long row indices (not action ids) and returns (B, 17, Dt).
    """

    def __init__(self, features, names):
        super().__init__()
        self.register_buffer("features", features.detach().clone())
        self.names = tuple(names)
        self.output_dim = int(features.shape[-1])

    def forward(self, rows):
        return self.features.index_select(0, rows)

    def row(self, name):
        return self.names.index(name)


def text_table(text_encoder, mode):
    """The TextFeatureTable of a prompted text encoder (features as in evaluation: its cache).

    "all" is the mean of the 15 actions' text features, not of 15 predictions: one forward pass
    like any other action (15 would cost 15 pose-network passes), the same table row in the
    exported graph, and the text tokens enter the pose network through a linear projection, so
    the mean feature is the mean of the projected action tokens.
    """
    with torch.no_grad():
        features = text_encoder.all_features().float()
    if mode == "joint":
        return TextFeatureTable(features[:1], (JOINT_ROW,))
    names = (ALL_ACTIONS,) + tuple(ACTION_NAMES[i] for i in ACTION_IDS)
    return TextFeatureTable(torch.cat([features.mean(dim=0, keepdim=True), features]), names)


def resolve_action(action, mode, where="--action"):
    """The table row name for the user's `action` (None, "all", a CamelCase H36M name in any case,
    or an action id 2..16) under text `mode`.

    Raises:
        MetaPoseError when a joint_action model gets no action, or an unknown one.
    """
    if mode == "joint":
        if action is not None:
            warnings.warn(f"{where} {action!r} is ignored: this model's text mode is joint, "
                          "which describes each joint without an action.", stacklevel=3)
        return JOINT_ROW
    names = [ACTION_NAMES[i] for i in ACTION_IDS]
    if action is None:
        raise MetaPoseError(
            f"this checkpoint's text mode is joint_action (its text describes the action), so "
            f"it needs {where}: one of {', '.join(names)}, or 'all' (the average of the 15 "
            "actions' text features) when the action is unknown.")
    text = str(action).strip()
    if text.lower() == ALL_ACTIONS:
        return ALL_ACTIONS
    if text.isdigit() and int(text) in ACTION_NAMES:
        return ACTION_NAMES[int(text)]
    by_lower = {name.lower(): name for name in names}
    if text.lower() in by_lower:
        return by_lower[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(by_lower), n=1, cutoff=0.5)
    hint = f" Did you mean {by_lower[close[0]]}?" if close else ""
    raise MetaPoseError(f"{where} {action!r} is not an H36M action.{hint} Use one of "
                        f"{', '.join(names)}, an action id 2..16, or 'all'.")


def _looks_like_metapose(state, path):
    if any(key.startswith("pose_net.") for key in state) and \
            any(key.startswith("image_encoder.") for key in state):
        return
    first = next(iter(state), None)
    raise MetaPoseError(f"'{path}' is not a MetaPose checkpoint: its {len(state)} tensors "
                        f"(first '{first}') include no pose_net.* and image_encoder.* weights. "
                        "Pass a checkpoint of this project (logs/<run>/checkpoints/best.pt), a "
                        "converted one or one written by the published train.py.")


def config_for_checkpoint(checkpoint, info, path, config_path=None, overrides=()):
    """The config to build the checkpoint's model with.

    --config wins; otherwise the config stored in this project's checkpoints; for a published
    file (or one converted by tools/convert_published_checkpoint.py) the paper configuration
    with the encoders the file implies. A plain state dict needs --config.
    """
    overrides = list(overrides)
    if config_path is not None:
        return load_config(config_path, overrides)
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if isinstance(saved, dict):
        return config_from_mapping(
            saved, f"the config stored in '{path}'", overrides,
            remedy="Pass --config FILE (the experiment YAML it was trained with, plus its "
                   "key=value overrides) to build the model from that file instead.")
    encoders = {}
    if info.published:
        encoders = {"image_encoder": info.image_encoder, "text_encoder": info.text_encoder,
                    "prompt_tokens": info.prompt_tokens}
    elif isinstance(checkpoint, dict) and checkpoint.get("format") == WEIGHTS_FORMAT:
        encoders = {key: checkpoint.get(key) for key in ("image_encoder", "text_encoder",
                                                         "prompt_tokens")}
    else:
        raise MetaPoseError(f"'{path}' holds MetaPose weights but no config; pass --config FILE "
                            "(the experiment YAML it was trained with, plus its KEY=VALUE "
                            "overrides).")
    flags = []
    if encoders.get("image_encoder") in CHOICES["model.image_encoder.type"]:
        flags.append(f"model.image_encoder.type={encoders['image_encoder']}")
    elif info.hrnet_width:
        flags.append(f"model.image_encoder.width={info.hrnet_width}")
    if encoders.get("text_encoder") in CHOICES["model.text_encoder.type"]:
        flags.append(f"model.text_encoder.type={encoders['text_encoder']}")
    if isinstance(encoders.get("prompt_tokens"), int):
        flags.append(f"model.text_encoder.prompt_tokens={encoders['prompt_tokens']}")
    return load_config(PAPER_CONFIG, flags + overrides)


def _existing_file(path, flag=None):
    """`path` as given, or relative to the repository, if it names a regular file; else None
    (or, with `flag`, a MetaPoseError that says what the path is instead)."""
    if path is None:
        return None
    candidates = (os.fspath(path), os.path.join(REPO_ROOT, os.fspath(path)))
    for candidate in candidates:
        if file_problem(candidate) is None:
            return candidate
    if flag is not None:
        require_file(candidates[0], f"HRNet file ({flag})",
                     "Pass the official COCO pose_hrnet file that holds the heatmap head.")
    return None


RANDOM_HEAD_WARNING = (
    "the model's HRNet was randomly initialised (model.image_encoder.pretrained: null), so its "
    "heatmap head is random too: the 2D joints it gives mean nothing. Give 2D joints with "
    "--keypoints for real use.")


@dataclass
class KeypointHead:
    """The HRNet COCO heatmap head and where it came from (or why there is none); `warning` is
    said once, when the head is first used."""

    module: Optional[nn.Module]
    source: str
    warning: Optional[str] = None


@dataclass
class HeadPlan:
    """Where the heatmap head would come from, known before any model is built: `path` (an
    official file), `random` (a random HRNet's random head) or neither (`reason` says why)."""

    path: Optional[str]
    random: bool
    reason: str

    @property
    def available(self):
        return self.path is not None or self.random


def plan_keypoint_head(config, head_file=None):
    """The HeadPlan of a config: 1. `head_file` (an official pose_hrnet file; --hrnet), else the
    config's image_encoder.pretrained file when it exists; 2. a model trained with a random HRNet
    (pretrained: null, the demo and the tests): a random head; 3. otherwise none.

    Raises:
        MetaPoseError when `head_file` is given but is not a readable regular file.
    """
    pretrained = config.model.image_encoder.pretrained
    path = _existing_file(head_file if head_file is not None else pretrained,
                          "--hrnet" if head_file is not None else None)
    if path is not None:
        return HeadPlan(path, False, f"heatmap head of '{path}'")
    if pretrained is None:
        return HeadPlan(None, True, "random heatmap head (random HRNet)")
    return HeadPlan(None, False, f"the HRNet file '{pretrained}' (model.image_encoder.pretrained), "
                                 "which holds the heatmap head, is not here")


def find_keypoint_head(config, image_encoder, head_file=None):
    """The heatmap head that fits the model's HRNet (see `plan_keypoint_head`). A head read from
    a file whose HRNet differs from the checkpoint's (trained unfrozen, or another file) and a
    random head carry a warning, said when the head is used."""
    from models.hrnet import build_keypoint_head, load_keypoint_head

    plan = plan_keypoint_head(config, head_file)
    width = image_encoder.width
    if plan.path is not None:
        head, same = load_keypoint_head(plan.path, width, trunk=image_encoder)
        warning = None if same else (
            f"the checkpoint's HRNet differs from '{plan.path}' (trained unfrozen, or another "
            "file): that file's heatmap head may not fit it, so check the 2D joints or give your "
            "own.")
        return KeypointHead(head, plan.reason, warning)
    if plan.random:
        return KeypointHead(build_keypoint_head(width), plan.reason, RANDOM_HEAD_WARNING)
    return KeypointHead(None, plan.reason)


@dataclass
class LoadedModel:
    """A model ready for inference. `model` is a MetaPose in eval mode whose text encoder is the
    constant TextFeatureTable; `text_mode` is "joint" or "joint_action"."""

    model: nn.Module
    config: object
    info: object
    path: str
    text_mode: str
    keypoint_head: KeypointHead


@dataclass
class CheckpointFile:
    """A checkpoint read and understood, before any model is built: its weights, what they are
    (utils.checkpoint.load_model_state) and the config to build their model with."""

    path: str
    state: dict
    info: object
    config: object


def read_trained_checkpoint(checkpoint, config_path=None, overrides=()):
    """Reads any accepted checkpoint (see `load_trained_model`) and its config, building nothing:
    tools/infer.py checks the action and the heatmap head against this before it builds.

    Raises:
        MetaPoseError for a missing or unreadable file, a file that is not a MetaPose
        checkpoint, or a config it does not fit.
    """
    path = os.fspath(checkpoint)
    loaded = load_checkpoint(path)
    state, info = load_model_state(loaded, path)
    _looks_like_metapose(state, path)
    config = config_for_checkpoint(loaded, info, path, config_path, overrides)
    return CheckpointFile(path, state, info, config)


def build_trained_model(checkpoint_file, device="cpu", head_file=None):
    """The LoadedModel of a CheckpointFile (its `state` is released)."""
    device = resolve_device(device)
    from models import build_model  # heavy: imported once the input is known to be good

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no random-initialisation warnings: weights come next
        model = build_model(checkpoint_file.config, weights_from_checkpoint=True)
    load_model_weights(model, checkpoint_file.state, checkpoint_file.path, checkpoint_file.info)
    checkpoint_file.state = None
    return prepare_for_inference(model, checkpoint_file.config, checkpoint_file.info,
                                 checkpoint_file.path, device, head_file)


def load_trained_model(checkpoint, config_path=None, overrides=(), device="cpu", head_file=None):
    """Loads any accepted checkpoint (this project's best.pt / last.pt, a weights file written by
    tools/convert_published_checkpoint.py, a published train.py file, or a plain state dict
    with --config) for inference on `device`.

    Raises:
        MetaPoseError for a missing or unreadable file, a file that is not a MetaPose
        checkpoint, a config it does not fit, or CUDA asked for but not available.
    """
    resolve_device(device)
    return build_trained_model(read_trained_checkpoint(checkpoint, config_path, overrides),
                               device, head_file)


def prepare_for_inference(model, config, info=None, path="(in memory)", device="cpu",
                          head_file=None):
    """Freezes a built MetaPose for inference: eval mode, text table, heatmap head, `device`."""
    model.eval().requires_grad_(False)
    mode = config.model.text_encoder.mode
    model.text_encoder = text_table(model.text_encoder, mode)
    head = find_keypoint_head(config, model.image_encoder, head_file)
    device = resolve_device(device)
    model.to(device)
    if head.module is not None:
        head.module.to(device)
    return LoadedModel(model, config, info, path, mode, head)
