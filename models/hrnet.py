"""HRNet pose trunk (official COCO 256x192 `pose_hrnet` key layout, without `final_layer`) and its
builder; the COCO heatmap head `final_layer` is a separate module (`build_keypoint_head`), used
by inference for 2D joints and never part of the pose network or its checkpoints."""

import os
import pickle
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path

BN_MOMENTUM = 0.1

# type name -> width C of the highest-resolution branch
HRNET_TYPES = {"hrnet_32": 32, "hrnet_48": 48}

# the official multi-resolution stages: (modules, branches); every branch has 4 BasicBlocks
STAGES = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4


def default_checkpoint_path(type_name):
    """Where the official COCO checkpoint of `type_name` is expected (relative to the repo root)."""
    return f"data/pretrained/coco/pose_hrnet_w{HRNET_TYPES[type_name]}_256x192.pth"


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv_bn(in_channels, out_channels, kernel_size, stride, relu):
    """Sequential(conv, BN[, ReLU]) -> keys `0.weight`, `1.weight|bias|running_*`."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (channels unchanged in pose_hrnet's branches)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block of `layer1`."""

    expansion = 4

    def __init__(self, in_channels, planes, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class HighResolutionModule(nn.Module):
    """Parallel branches (BasicBlocks, one per resolution) followed by the exchange unit.

    `channels[i]` is the width of branch i (resolution halves with i). With
    `multi_scale_output=False` only the highest-resolution fused map is produced (and only
    `fuse_layers.0` exists), as in the last module of the official stage 4.
    """

    def __init__(self, channels, num_blocks, multi_scale_output=True):
        super().__init__()
        self.channels = list(channels)
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(num_blocks)]) for c in channels)
        fuse_layers = []
        for i in range(n if multi_scale_output else 1):
            row = []
            for j in range(n):
                if j > i:
                    # 1x1 conv + BN; the nearest upsampling to branch i's size happens in forward
                    row.append(conv_bn(channels[j], channels[i], 1, 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    # i - j stride-2 3x3 convs; only the last one changes channels and has no ReLU
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        steps.append(conv_bn(channels[j], channels[i] if last else channels[j],
                                             3, 2, relu=not last))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=False)

    @classmethod
    def from_parts(cls, channels, branches, fuse_layers):
        """A module with the given branches and exchange unit (ModuleLists shaped like those
        that __init__ builds), e.g. their batch-norm-folded counterparts
        (models/hrnet_folding.py)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.channels = list(channels)
        module.branches, module.fuse_layers = branches, fuse_layers
        module.relu = nn.ReLU(inplace=False)
        return module

    def run_branches(self, xs):
        """xs: list of n maps (B, channels[i], H_i, W_i) -> the n branch outputs (same shapes)."""
        return [branch(x) for branch, x in zip(self.branches, xs)]

    def fuse(self, xs):
        """The exchange unit: n branch outputs -> len(fuse_layers) fused maps (new tensors;
        the inputs are left untouched)."""
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                z = layer(xs[j])
                if j > i:
                    # size= (not scale_factor) so odd input sizes line up exactly
                    z = F.interpolate(z, size=size, mode="nearest")
                y = y + z
            out.append(self.relu(y))
        return out

    def forward(self, xs):
        """xs: list of n maps (B, channels[i], H_i, W_i) -> list of len(fuse_layers) fused maps."""
        return self.fuse(self.run_branches(xs))


def make_transition(previous, current):
    """Official transition: adapt existing branches whose width changes (3x3 conv, BN, ReLU) and
    create new branches from the lowest-resolution one with stride-2 convs. Unchanged branches
    get an Identity (the official model stores None there; neither has state)."""
    layers = []
    for i, channels in enumerate(current):
        if i < len(previous):
            if previous[i] != channels:
                layers.append(conv_bn(previous[i], channels, 3, 1, relu=True))
            else:
                layers.append(nn.Identity())
        else:
            steps = []
            for k in range(i + 1 - len(previous)):
                last = k == i - len(previous)
                steps.append(conv_bn(previous[-1], channels if last else previous[-1], 3, 2, relu=True))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def _next_inputs(transition, outputs):
    """The next stage's inputs: branches that exist take the previous stage's output (through
    an identity or width adapter); new branches are made from the lowest-resolution output."""
    return [layer(outputs[i] if i < len(outputs) else outputs[-1])
            for i, layer in enumerate(transition)]


def trunk_forward(trunk, images):
    """The trunk's computation from `trunk.stem(images)` to the 4 maps (see HRNet.forward);
    shared by HRNet and its batch-norm-folded counterpart (models/hrnet_folding.py), which
    have the same parts: stem, layer1, transition1..3, stage2..4."""
    x = trunk.layer1(trunk.stem(images))
    xs = [layer(x) for layer in trunk.transition1]
    ys = trunk.stage2(xs)
    xs = _next_inputs(trunk.transition2, ys)
    ys = trunk.stage3(xs)
    xs = _next_inputs(trunk.transition3, ys)
    first, *others = trunk.stage4
    branches = first.run_branches(xs)
    ys = first.fuse(branches)
    for module in others:
        ys = module(ys)
    return [ys[0], branches[1], branches[2], branches[3]]


class HRNet(nn.Module):
    """The pose_hrnet trunk of width C (32 for W32, 48 for W48; any positive int for tests).

    state_dict keys follow the official pose_hrnet checkpoints (`conv1`, `bn1`, `conv2`, `bn2`,
    `layer1`, `transition1..3`, `stage2..4`) without the heatmap head `final_layer`.

    A frozen trunk runs with its batch norms folded into its convolutions
    (models/hrnet_folding.py): the same maps to float rounding, one pass per layer instead of
    two. The folded weights are a runtime copy, outside the state dict, refreshed after every
    load_state_dict (of the trunk or of a model holding it), every `.to()`/`.double()`/`.cuda()`
    and every other in-place change of the weights or statistics (checked at each call).
    `fold_batch_norm = False` runs the plain layers (models/reference_paths.py does so).
    """

    def __init__(self, width: int = 32, frozen: bool = False):
        super().__init__()
        if width < 1:
            raise MetaPoseError(f"HRNet width must be a positive integer, got {width}.")
        self.width = width
        self.level_channels = [width, 2 * width, 4 * width, 8 * width]
        self.frozen = False
        self.fold_batch_norm = True  # when frozen (see the class docstring)
        self._folded = None  # models.hrnet_folding.FoldedHRNet, built at the first folded call
        self.register_load_state_dict_post_hook(HRNet._weights_loaded)

        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(
            nn.Conv2d(64, 64 * Bottleneck.expansion, 1, bias=False),
            nn.BatchNorm2d(64 * Bottleneck.expansion, momentum=BN_MOMENTUM),
        )
        self.layer1 = nn.Sequential(
            Bottleneck(64, 64, downsample),
            *[Bottleneck(64 * Bottleneck.expansion, 64) for _ in range(3)],
        )

        previous = [64 * Bottleneck.expansion]
        for index, (num_modules, num_branches) in enumerate(STAGES, start=2):
            channels = self.level_channels[:num_branches]
            setattr(self, f"transition{index - 1}", make_transition(previous, channels))
            last_stage = index == 1 + len(STAGES)
            modules = [
                HighResolutionModule(
                    channels, BLOCKS_PER_BRANCH,
                    # the official stage 4 is built with multi_scale_output=False: its last
                    # module fuses only into the highest resolution
                    multi_scale_output=not (last_stage and m == num_modules - 1))
                for m in range(num_modules)
            ]
            setattr(self, f"stage{index}", nn.Sequential(*modules))
            previous = channels

        self.init_weights()
        if frozen:
            self.freeze()

    def init_weights(self):
        """Official random initialisation: convs N(0, 0.001), BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def calibrate_batch_norm(self, height=128, width=96, batch=4):
        """Sets every BN's running statistics from one forward of N(0, 1) images (drawn from a
        private generator, so the global RNG is untouched).

        Only for a randomly initialised trunk that stays frozen: with the official N(0, 0.001)
        convolutions and untouched running statistics (mean 0, var 1), each layer shrinks its
        input about 40-fold and the stage-4 maps come out near 1e-8..1e-12, so the image
        pathway would carry nothing. Calibrated, every BN outputs unit-scale activations.
        """
        generator = torch.Generator().manual_seed(0)
        device = next(self.parameters()).device
        images = torch.randn(batch, 3, height, width, generator=generator).to(device)
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: one batch sets the statistics exactly
        was_training, frozen = self.training, self.frozen
        self.frozen = False
        super().train(True)
        self(images)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.frozen = frozen
        self.train(was_training)
        return self

    def freeze(self):
        """No gradients, and eval mode for good (batch-norm statistics never update)."""
        self.frozen = True
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True):
        # a frozen trunk ignores train() from a parent module: BN keeps its running statistics
        return super().train(False if self.frozen else mode)

    def stem(self, images):
        """The two stride-2 convolutions: (B, 3, H, W) -> (B, 64, ceil(H/4), ceil(W/4))."""
        x = self.relu(self.bn1(self.conv1(images)))
        return self.relu(self.bn2(self.conv2(x)))

    # ------------------------------------------------------------------------------------------
    # Batch norms folded into the convolutions (frozen trunks)

    @property
    def folds(self):
        """Whether calls run the batch-norm-folded trunk (frozen, in eval mode, folding on)."""
        return self.frozen and self.fold_batch_norm and not self.training

    def folded_trunk(self):
        """The FoldedHRNet that computes this trunk's forward pass, up to date with its
        weights (built at the first call, refreshed when they changed since)."""
        if self._folded is None:
            from models.hrnet_folding import FoldedHRNet
            # a plain attribute, not a submodule: outside the state dict and the module tree
            object.__setattr__(self, "_folded", FoldedHRNet(self))
        elif self._folded.source_version != self._folded.version_of_sources():
            self._folded.refresh()
        return self._folded

    @staticmethod
    def _weights_loaded(module, incompatible_keys):
        """load_state_dict post-hook (also called when a parent module loads): refold now, so
        that a loaded model runs the loaded weights whatever happens next."""
        if module._folded is not None:
            module._folded.refresh()

    def _apply(self, fn, recurse=True):
        """`.to()`, `.cuda()`, `.double()`, ...: the folded weights follow the trunk's new dtype,
        device and memory format (folded again from the converted weights, in float64)."""
        result = super()._apply(fn, recurse)
        if self._folded is not None:
            self._folded.refresh(self)
        return result

    def compile(self, *args, **kwargs):
        """torch.compile in place: the folded trunk when this one folds (its fixed weights are
        what runs), else the trunk itself (nn.Module.compile)."""
        if self.frozen and self.fold_batch_norm:
            self.folded_trunk().compile(*args, **kwargs)
        else:
            super().compile(*args, **kwargs)

    def forward(self, images):
        """images: (B, 3, H, W) float RGB normalised with the ImageNet mean/std (any H, W >= 1).

        Returns a list of 4 maps, from high to low resolution (docs/method.md §2.1):
          [0] (B, C,  ceil(H/4),  ceil(W/4))   the fused highest-resolution output of stage 4
          [1] (B, 2C, ceil(H/8),  ceil(W/8))   branch 1 of stage 4's first module, before its fuse
          [2] (B, 4C, ceil(H/16), ceil(W/16))  branch 2 of that module, before its fuse
          [3] (B, 8C, ceil(H/32), ceil(W/32))  branch 3 of that module, before its fuse
        (each size is the previous one halved and rounded up; 64x48, 32x24, 16x12, 8x6 for
        256x192). Levels 1-3 are what the published trunk returns: the list it hands to stage 4,
        which the official module overwrites in place with its branch outputs.
        """
        if self.folds:
            return self.folded_trunk()(images)
        return trunk_forward(self, images)


def _read_state_dict(path):
    """torch.load a checkpoint file (weights only) and return its flat {key: tensor} dict."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
            OSError, AttributeError, TypeError, KeyError, IndexError) as error:
        raise MetaPoseError(
            f"could not read the HRNet checkpoint {path} ({type(error).__name__}): it is not a "
            "PyTorch checkpoint of plain tensors, or it is truncated. Download the official "
            "pose_hrnet file again, or set model.image_encoder.pretrained=null for random "
            "initialisation.") from None
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise MetaPoseError(
            f"the HRNet checkpoint {path} does not hold a state_dict (got {type(loaded).__name__}); "
            "expected the official pose_hrnet .pth file (a dict of tensors, possibly under "
            "'state_dict' or 'model').")
    state = {}
    for key, value in loaded.items():
        key = str(key)
        if key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def _shape(value):
    return tuple(value.shape) if torch.is_tensor(value) else type(value).__name__


def load_pretrained(model, path, type_name):
    """Load an official pose_hrnet checkpoint into `model` (in place), strictly.

    No missing keys (a missing `num_batches_tracked` counter is tolerated: it only matters for
    BN momentum=None); unexpected keys only under `final_layer.`; every shape must match.
    Any other case raises MetaPoseError naming the file and the first offending key.
    """
    state = _read_state_dict(path)
    expected = model.state_dict()

    for key, value in expected.items():
        if key in state and (not torch.is_tensor(state[key]) or state[key].shape != value.shape):
            hint = ""
            guess = state.get("transition1.0.0.weight")
            if torch.is_tensor(guess) and guess.dim() == 4:
                hint = f" (its transition1.0.0.weight says width {guess.shape[0]})"
            raise MetaPoseError(
                f"checkpoint {path} has {key} of shape {_shape(state[key])} but the {type_name} "
                f"model (width {model.width}) expects {tuple(value.shape)}: this looks like a "
                f"checkpoint for another width{hint}; set model.image_encoder.type accordingly "
                "(hrnet_32 or hrnet_48) and leave model.image_encoder.width null.")

    missing = [key for key in expected
               if key not in state and not key.endswith("num_batches_tracked")]
    if missing:
        raise MetaPoseError(
            f"checkpoint {path} lacks {len(missing)} keys of the {type_name} trunk, first "
            f"{missing[0]} (others: {', '.join(missing[1:4])}{' ...' if len(missing) > 4 else ''}); "
            "it is not an official pose_hrnet checkpoint. Use pose_hrnet_w32_256x192.pth / "
            "pose_hrnet_w48_256x192.pth, or set model.image_encoder.pretrained=null.")
    unexpected = [key for key in state if key not in expected and not key.startswith("final_layer.")]
    if unexpected:
        raise MetaPoseError(
            f"checkpoint {path} has {len(unexpected)} keys that the {type_name} trunk does not know, "
            f"first {unexpected[0]}; only the heatmap head final_layer.* may be extra. Is this a "
            "pose_hrnet checkpoint (not a classification HRNet or a full MetaPose checkpoint)?")

    to_load = {key: state.get(key, value) for key, value in expected.items()}
    model.load_state_dict(to_load, strict=True)
    return model


def build_image_encoder(type: str, pretrained, frozen: bool = True, width=None,
                        weights_from_checkpoint: bool = False) -> HRNet:
    """Build the HRNet trunk for `type` ('hrnet_32' | 'hrnet_48').

    pretrained: path of the official COCO pose_hrnet checkpoint, or None for random
    initialisation (warns; a frozen random trunk gets its batch norm calibrated). frozen: no
    gradients and BN statistics never update. width: overrides C (tests and CPU demos only).
    weights_from_checkpoint: the caller loads every weight from a checkpoint next, so
    `pretrained` is neither checked nor read, nothing warns and nothing is calibrated.
    """
    if type not in HRNET_TYPES:
        raise MetaPoseError(
            f"unknown model.image_encoder.type {type!r}; valid types: {', '.join(HRNET_TYPES)}.")
    channels = HRNET_TYPES[type] if width is None else int(width)
    if pretrained is not None and not weights_from_checkpoint:
        pretrained = os.fspath(pretrained)
        problem = file_problem(pretrained)
        if problem is not None:
            raise MetaPoseError(
                f"HRNet checkpoint '{shown_path(pretrained)}' (model.image_encoder.pretrained) "
                f"{problem}. Put the official COCO 256x192 pose_hrnet checkpoint for {type} at "
                f"{default_checkpoint_path(type)} (hrnet_32: {default_checkpoint_path('hrnet_32')}, "
                f"hrnet_48: {default_checkpoint_path('hrnet_48')}) and point "
                "model.image_encoder.pretrained at it, or set model.image_encoder.pretrained=null "
                "for random initialisation.")
    model = HRNet(channels)
    if weights_from_checkpoint:
        pass
    elif pretrained is None:
        warnings.warn(
            f"image encoder {type} (width {channels}) is randomly initialised "
            "(model.image_encoder.pretrained is null); results will not match the paper.",
            stacklevel=2)
        if frozen:
            model.calibrate_batch_norm()
    else:
        load_pretrained(model, pretrained, type)
    if frozen:
        model.freeze()
    return model


# The official heatmap head: a 1x1 conv from the fused level-0 map (C channels) to 17 COCO joints.
KEYPOINT_HEAD_PREFIX = "final_layer."
COCO_JOINTS = 17


def build_keypoint_head(width, seed=0):
    """The COCO heatmap head `final_layer` (Conv2d(C, 17, 1)) with the official random
    initialisation (weights N(0, 0.001), bias 0), drawn from a private generator seeded `seed`
    (the global RNG is untouched, and the same trunk width always gets the same head)."""
    head = nn.Conv2d(int(width), COCO_JOINTS, kernel_size=1)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.001)
        head.bias.zero_()
    return head.requires_grad_(False).eval()


def load_keypoint_head(path, width, trunk=None):
    """The heatmap head `final_layer.*` of an official pose_hrnet file (kept here; the trunk
    loader ignores it).

    Args:
        path: the official COCO pose_hrnet .pth file.
        width: the trunk width C the head must read.
        trunk: optional HRNet; then also returns whether its weights equal the file's (a head
            only fits the trunk it was trained with).
    Returns:
        the head module, or (head, same_trunk) when `trunk` is given.
    Raises:
        MetaPoseError for an unreadable file, a file without final_layer, or another width.
    """
    state = _read_state_dict(path)
    weight, bias = state.get(KEYPOINT_HEAD_PREFIX + "weight"), state.get(KEYPOINT_HEAD_PREFIX + "bias")
    if not (torch.is_tensor(weight) and torch.is_tensor(bias)):
        raise MetaPoseError(
            f"HRNet file {path} has no heatmap head (final_layer.weight / final_layer.bias): it is "
            "not the official COCO pose_hrnet file. Use pose_hrnet_w32_256x192.pth / "
            "pose_hrnet_w48_256x192.pth, or give the 2D joints yourself (--keypoints).")
    expected = (COCO_JOINTS, int(width), 1, 1)
    if tuple(weight.shape) != expected or tuple(bias.shape) != (COCO_JOINTS,):
        raise MetaPoseError(
            f"the heatmap head of {path} has shape {tuple(weight.shape)}, but the model's HRNet "
            f"(width {width}) needs {expected}: the file is for another HRNet width or another "
            "joint set.")
    head = build_keypoint_head(width)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    if trunk is None:
        return head
    trunk_state = trunk.state_dict()
    same = all(key in state and torch.is_tensor(state[key])
               and state[key].shape == value.shape and torch.equal(state[key].to(value), value)
               for key, value in trunk_state.items() if value.is_floating_point())
    return head, same
