"""Deformable sampling attention (DESIGN 2.4): a reference and a fast sampling op, and the module.

Coordinates. Every location is in the normalised grid coordinates of
`F.grid_sample(align_corners=False)`: x (width) first, then y (height); -1 and +1 are the outer
edges of the map (not the centres of the border pixels), so one location means the same image
point on every level whatever its resolution. Pixel (i, j) of an (H_l, W_l) map has its centre at
x = (2 j + 1) / W_l - 1, y = (2 i + 1) / H_l - 1. Outside the map the values are zero
(bilinear interpolation against zero padding).

Shapes. B batch, L levels, P tokens per level (17 joints), H heads, K points per head,
Dh = D / H channels per head; level l's value map has spatial size (H_l, W_l).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_shapes(values, locations, weights):
    batch, heads, head_dim = values[0].shape[:3]
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError(f"locations must be (B, L, P, H, K, 2), got {tuple(locations.shape)}")
    if tuple(locations.shape[:2]) != (batch, len(values)) or locations.shape[3] != heads:
        raise ValueError(f"locations {tuple(locations.shape)} do not match {len(values)} value "
                         f"maps of batch {batch} and {heads} heads")
    if weights.shape != locations.shape[:-1]:
        raise ValueError(f"weights {tuple(weights.shape)} must be locations.shape[:-1] = "
                         f"{tuple(locations.shape[:-1])}")
    for level, value in enumerate(values):
        if value.dim() != 5 or value.shape[:3] != (batch, heads, head_dim):
            raise ValueError(f"value map {level} must be (B={batch}, H={heads}, Dh={head_dim}, "
                             f"H_l, W_l), got {tuple(value.shape)}")


def deformable_sample_reference(values, locations, weights):
    """Weighted bilinear sampling, written as plainly as possible (one grid_sample per level,
    head and point). The slow ground truth that `deformable_sample_fast` is tested against.

    Args:
        values: list of L tensors (B, H, Dh, H_l, W_l): the value map of each level, split into
            H heads of Dh channels (head h holds channels h*Dh .. (h+1)*Dh-1 of the projection).
        locations: (B, L, P, H, K, 2) sampling points in grid coordinates (x, y), see the module
            docstring; the token of level l samples only values[l]. Any real value is allowed;
            points outside [-1, 1] read zeros (partly, near the edge).
        weights: (B, L, P, H, K) weight of each sampled point (softmax over K in the module,
            but any real numbers work here).
    Returns:
        (B, L, P, H * Dh): for each token the weighted sum over K of its H heads' samples,
        heads concatenated in order.
    """
    _check_shapes(values, locations, weights)
    levels = []
    for level, value in enumerate(values):
        heads = []
        for head in range(value.shape[1]):
            total = 0.0
            for point in range(locations.shape[4]):
                grid = locations[:, level, :, head, point, :].unsqueeze(2)  # (B, P, 1, 2)
                sample = F.grid_sample(value[:, head], grid, mode="bilinear",
                                       padding_mode="zeros", align_corners=False)  # (B, Dh, P, 1)
                sample = sample.squeeze(3).transpose(1, 2)  # (B, P, Dh)
                total = total + sample * weights[:, level, :, head, point].unsqueeze(-1)
            heads.append(total)
        levels.append(torch.cat(heads, dim=-1))  # (B, P, H*Dh)
    return torch.stack(levels, dim=1)  # (B, L, P, H*Dh)


def deformable_sample_fast(values, locations, weights):
    """Same arguments, result and gradients as `deformable_sample_reference`, batched: per level
    one `grid_sample` call samples all heads (folded into the batch) at all P x K points, and one
    product-and-sum applies the weights; L + 2 kernels instead of L x H x K.

    (A single gather over all levels at once, from a table of the concatenated value maps, was
    measured 5-7x slower on CPU: building the table copies every pixel of every map, while
    grid_sample reads only the 4 corners of each sampled point.)

    Args:
        values: list of L tensors (B, H, Dh, H_l, W_l); sizes may differ per level.
        locations: (B, L, P, H, K, 2) grid coordinates (x, y), align_corners=False.
        weights: (B, L, P, H, K).
    Returns:
        (B, L, P, H * Dh).
    """
    _check_shapes(values, locations, weights)
    batch, heads, head_dim = values[0].shape[:3]
    _, levels, tokens, _, points, _ = locations.shape
    # (B, L, P, H, K, 2) -> (L, B*H, P, K, 2): level first, heads folded into the batch.
    grids = locations.permute(1, 0, 3, 2, 4, 5).reshape(levels, batch * heads, tokens, points, 2)
    samples = []
    for level, value in enumerate(values):
        value = value.reshape(batch * heads, head_dim, *value.shape[-2:])  # free: heads are outer
        samples.append(F.grid_sample(value, grids[level], mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B*H, Dh, P, K)
    samples = torch.stack(samples, dim=0).view(levels, batch, heads, head_dim, tokens, points)
    # weights (B, L, P, H, K) -> (L, B, H, 1, P, K), broadcast over Dh; sum over K.
    weights = weights.permute(1, 0, 3, 2, 4).unsqueeze(3)
    out = (samples * weights).sum(-1)  # (L, B, H, Dh, P)
    return out.permute(1, 0, 4, 2, 3).reshape(batch, levels, tokens, heads * head_dim)


class DeformableSamplingAttention(nn.Module):
    """Each token (level l, joint p) samples level l's value map at H x K points around its
    reference point and returns the softmax-weighted sum (DESIGN 2.4).

    Per level a 1x1 projection C_l -> D makes the value map (split into H heads of D/H
    channels); offsets = tanh(Linear(D -> H*K*2)(query)) in grid coordinates, added to the
    reference; weights = softmax over K of Linear(D -> H*K)(query); heads concatenated, then
    Linear(D -> D). Initialisation: offsets on rings (head h at angle 2*pi*h/H, point k at radius
    0.01*(k+1)), weight layer zero (uniform weights), value and output projections Xavier.
    """

    def __init__(self, embed_dim, level_channels, heads=4, points=4, fast=True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
        self.embed_dim = embed_dim
        self.heads = heads
        self.points = points
        self.fast = fast
        self.value_proj = nn.ModuleList(nn.Conv2d(channels, embed_dim, kernel_size=1)
                                        for channels in level_channels)
        self.sampling_offsets = nn.Linear(embed_dim, heads * points * 2)
        self.attention_weights = nn.Linear(embed_dim, heads * points)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def ring_offsets(self):
        """(H, K, 2) initial offsets in grid coordinates: head h at angle 2*pi*h/H, point k at
        radius 0.01*(k+1), x then y."""
        angles = torch.arange(self.heads, dtype=torch.float64) * (2.0 * math.pi / self.heads)
        radii = 0.01 * torch.arange(1, self.points + 1, dtype=torch.float64)
        direction = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (H, 2)
        return direction[:, None, :] * radii[None, :, None]  # (H, K, 2)

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.zeros_(self.sampling_offsets.weight)
        ring = torch.atanh(self.ring_offsets()).flatten()  # tanh(bias) is the ring
        self.sampling_offsets.bias.copy_(ring.to(self.sampling_offsets.bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in self.value_proj:
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, queries, reference, maps):
        """
        Args:
            queries: (B, L, P, D) tokens; the token of level l samples maps[l] only.
            reference: (B, L, P, 2) reference points in grid coordinates (x, y),
                align_corners=False (e.g. `utils.geometry.crop_pixels_to_grid` of crop joints).
            maps: list of L feature maps (B, C_l, H_l, W_l).
        Returns:
            (B, L, P, D).
        """
        batch, levels, tokens, dim = queries.shape
        if len(maps) != levels or len(maps) != len(self.value_proj):
            raise ValueError(f"{len(maps)} maps for {levels} query levels and "
                             f"{len(self.value_proj)} value projections")
        head_dim = dim // self.heads
        values = [proj(feature).view(batch, self.heads, head_dim, *feature.shape[-2:])
                  for proj, feature in zip(self.value_proj, maps)]
        shape = (batch, levels, tokens, self.heads, self.points)
        offsets = torch.tanh(self.sampling_offsets(queries)).view(*shape, 2)
        locations = reference[:, :, :, None, None, :] + offsets  # (B, L, P, H, K, 2)
        weights = self.attention_weights(queries).view(shape).softmax(-1)  # (B, L, P, H, K)
        sample = deformable_sample_fast if self.fast else deformable_sample_reference
        return self.output_proj(sample(values, locations, weights))
