"""The frozen HRNet with its batch norms folded into its convolutions (docs/method.md §2.1).

A frozen trunk's batch norm is a fixed per-channel affine map, so `bn(conv(x))` equals one
convolution with weight `W * s` and bias `beta - mean * s`, `s = gamma / sqrt(var + eps)`. The
folded trunk runs 292 convolutions with a bias, the residual additions and ReLUs in place on
their outputs, instead of 292 convolutions each followed by a batch-norm pass that writes a new
map. (torch.compile of the folded trunk, `speed.compile`, fuses the bias, addition and ReLU
into one pass after each convolution; in eager mode oneDNN's fused convolution+ReLU kernels
measured no faster on a CPU than the in-place operations, so they are not used.)

Folding is a runtime transform of a frozen `models.hrnet.HRNet`, never a checkpoint format: the
folded weights live in a `FoldedHRNet` that the trunk holds outside its module tree (so the
state dict keeps the official layout) and refreshes whenever its own weights change
(`HRNet._folded_trunk`). They are computed in float64 and rounded once to the trunk's dtype.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.hrnet import BasicBlock, Bottleneck, HighResolutionModule, trunk_forward


def fold_batch_norm(conv, norm):
    """(weight, bias) of the one convolution that computes `norm(conv(x))` for an eval-mode
    BatchNorm2d `norm` after the bias-free Conv2d `conv`, in conv's dtype, device and memory
    format (computed in float64)."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = norm.bias.double() - norm.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


class FoldedConv(nn.Module):
    """A convolution and the batch norm after it as one convolution with a bias; optionally
    the residual addition and the ReLU after it too. Holds the folded weights as buffers that
    are not saved, and the (conv, norm) it folds, to refresh them."""

    def __init__(self, conv, norm, relu):
        super().__init__()
        self._source = (conv, norm)  # a plain attribute: not part of this module's tree
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.relu = bool(relu)
        weight, bias = fold_batch_norm(conv, norm)
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    @torch.no_grad()
    def refresh(self):
        """Folds the source conv and norm again. Tensors keep their storage when dtype, device,
        shape and layout are unchanged (a captured CUDA graph or compiled code sees the new
        values); otherwise they are replaced."""
        for name, value in zip(("weight", "bias"), fold_batch_norm(*self._source)):
            current = getattr(self, name)
            if (current.dtype, current.device, current.shape, current.stride()) == \
                    (value.dtype, value.device, value.shape, value.stride()):
                current.copy_(value)
            else:
                setattr(self, name, value)

    def forward(self, x, residual=None):
        """x (B, C_in, H, W) -> (B, C_out, H', W'): relu?(conv(x) * s + shift [+ residual]);
        the addition and the ReLU run in place on the convolution's fresh output."""
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                       self.groups)
        if residual is not None:
            out = out.add_(residual) if out.dtype == residual.dtype else out + residual
        return F.relu(out, inplace=True) if self.relu else out


class FoldedBasicBlock(nn.Module):
    """BasicBlock: conv1+bn1+ReLU, then conv2+bn2 + the input + ReLU, as two convolutions."""

    def __init__(self, block):
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, block.bn1, relu=True)
        self.conv2 = FoldedConv(block.conv2, block.bn2, relu=True)

    def forward(self, x):
        return self.conv2(self.conv1(x), residual=x)


class FoldedBottleneck(nn.Module):
    """Bottleneck: three folded convolutions, the last one adding the (downsampled) input."""

    def __init__(self, block):
        super().__init__()
        self.conv1 = FoldedConv(block.conv1, block.bn1, relu=True)
        self.conv2 = FoldedConv(block.conv2, block.bn2, relu=True)
        self.conv3 = FoldedConv(block.conv3, block.bn3, relu=True)
        self.downsample = None if block.downsample is None else fold_module(block.downsample)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _is_conv_bn(module):
    """Whether `module` is models.hrnet.conv_bn's Sequential(Conv2d, BatchNorm2d[, ReLU])."""
    layers = list(module) if isinstance(module, nn.Sequential) else []
    return (len(layers) in (2, 3) and isinstance(layers[0], nn.Conv2d)
            and isinstance(layers[1], nn.BatchNorm2d)
            and (len(layers) == 2 or isinstance(layers[2], nn.ReLU)))


def fold_module(module):
    """The folded counterpart of one part of an HRNet trunk (new modules; `module` unchanged).

    Raises:
        TypeError for a module kind that holds batch norms this function does not know (a
        change of the trunk that folding must follow).
    """
    if isinstance(module, BasicBlock):
        return FoldedBasicBlock(module)
    if isinstance(module, Bottleneck):
        return FoldedBottleneck(module)
    if _is_conv_bn(module):
        return FoldedConv(module[0], module[1], relu=len(module) == 3)
    if isinstance(module, HighResolutionModule):
        return HighResolutionModule.from_parts(
            module.channels, fold_module(module.branches), fold_module(module.fuse_layers))
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*[fold_module(child) for child in module])
    if isinstance(module, nn.ModuleList):
        return nn.ModuleList(fold_module(child) for child in module)
    if isinstance(module, nn.Identity):
        return nn.Identity()
    raise TypeError(f"cannot fold a {type(module).__name__} of the HRNet trunk")


class FoldedHRNet(nn.Module):
    """The forward pass of a frozen HRNet with every batch norm folded: the same maps (to float
    rounding) through `models.hrnet.trunk_forward`, the same module names as the trunk."""

    def __init__(self, trunk):
        super().__init__()
        self.conv1 = FoldedConv(trunk.conv1, trunk.bn1, relu=True)
        self.conv2 = FoldedConv(trunk.conv2, trunk.bn2, relu=True)
        for name in ("layer1", "transition1", "transition2", "transition3", "stage2", "stage3",
                     "stage4"):
            setattr(self, name, fold_module(getattr(trunk, name)))
        self.track(trunk)

    def track(self, trunk):
        """Remembers the trunk's tensors (again after `.to()` replaced them) and their version."""
        self.sources = list(trunk.parameters()) + list(trunk.buffers())
        self.source_version = self.version_of_sources()

    def version_of_sources(self):
        """A number that grows with every in-place change of the trunk's weights or statistics
        (a load, an optimizer step, an edit under no_grad)."""
        return sum(tensor._version for tensor in self.sources)

    def refresh(self, trunk=None):
        """Folds every layer again from the trunk's current weights (and, given `trunk`, first
        tracks its tensors anew)."""
        for module in self.modules():
            if isinstance(module, FoldedConv):
                module.refresh()
        if trunk is not None:
            self.track(trunk)
        self.source_version = self.version_of_sources()

    def stem(self, images):
        return self.conv2(self.conv1(images))

    def forward(self, images):
        return trunk_forward(self, images)
