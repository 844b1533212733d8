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
    product-and-sum applies the weights; a few kernels per level instead of H x K.

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
    return torch.stack([sample_level(value, locations[:, level], weights[:, level])
                        for level, value in enumerate(values)], dim=1)


def sample_level(value, locations, weights):
    """One level of `deformable_sample_fast`.

    Args:
        value: (B, H, Dh, H_l, W_l) value map split into heads.
        locations: (B, P, H, K, 2) grid coordinates (x, y), align_corners=False.
        weights: (B, P, H, K).
    Returns:
        (B, P, H * Dh).
    """
    batch, heads, head_dim = value.shape[:3]
    tokens, points = locations.shape[1], locations.shape[3]
    # (B, P, H, K, 2) -> (B*H, P, K, 2): heads folded into the batch, like the value map.
    grid = locations.transpose(1, 2).reshape(batch * heads, tokens, points, 2)
    value = value.reshape(batch * heads, head_dim, *value.shape[-2:])  # free: heads are outer
    samples = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*H, Dh, P, K)
    samples = samples.view(batch, heads, head_dim, tokens, points)
    # weights (B, P, H, K) -> (B, H, 1, P, K), broadcast over Dh; sum over K.
    out = (samples * weights.transpose(1, 2).unsqueeze(2)).sum(-1)  # (B, H, Dh, P)
    return out.permute(0, 3, 1, 2).reshape(batch, tokens, heads * head_dim)


def sample_then_project(feature, weight, bias, locations, weights):
    """One level of the deformable sampling with the 1x1 value projection applied after the
    sampling instead of before: the same result as projecting the whole map, sampling it and
    weighting the samples (what `sample_level` does with `value = conv1x1(feature)`), without
    ever building the projected map.

    Exact because both steps are linear: bilinear sampling mixes the (up to 4) pixels around a
    point with weights w_c, so sample(W f + b) = W sample(f) + b * sum_c w_c, where the sum runs
    over the corners inside the map (zero padding; it is 1 inside and falls to 0 across the
    border). That in-map share is `grid_sample` of a map of ones, so values and gradients match
    the projected-map path up to floating-point rounding. Pays off where the P x H x K samples of
    C_l channels are fewer numbers than the D channels of the whole map (high-resolution levels).

    Args:
        feature: (B, C_l, H_l, W_l) the level's feature map.
        weight: (D, C_l, 1, 1) or (D, C_l) the value projection; D = H * Dh, head h owns output
            channels h*Dh .. (h+1)*Dh-1.
        bias: (D,) or None.
        locations: (B, P, H, K, 2) grid coordinates (x, y), align_corners=False.
        weights: (B, P, H, K) weight of each point.
    Returns:
        (B, P, H * Dh).
    """
    batch, channels = feature.shape[:2]
    _, tokens, heads, points, _ = locations.shape
    grid = locations.reshape(batch, tokens, heads * points, 2)
    samples = F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B, C_l, P, H*K)
    samples = samples.view(batch, channels, tokens, heads, points)
    mixed = (samples * weights.unsqueeze(1)).sum(-1)  # (B, C_l, P, H): weighted over K
    weight = weight.reshape(heads, -1, channels)  # (H, Dh, C_l)
    out = torch.einsum("bcph,hdc->bphd", mixed, weight)  # (B, P, H, Dh)
    if bias is not None:
        # In-map share of each point: one sample of a map of ones (batch folded into the grid).
        ones = feature.new_ones((1, 1) + tuple(feature.shape[-2:]))
        share = F.grid_sample(ones, grid.reshape(1, batch * tokens, heads * points, 2),
                              mode="bilinear", padding_mode="zeros", align_corners=False)
        share = (share.view(batch, tokens, heads, points) * weights).sum(-1)  # (B, P, H)
        out = out + share.unsqueeze(-1) * bias.view(heads, -1)
    return out.reshape(batch, tokens, -1)


def samples_are_smaller(channels, height, width, embed_dim, tokens, heads, points):
    """Whether `sample_then_project` keeps fewer numbers per sample than the projected map
    (P*H*K sampled points of C_l channels against D channels of H_l*W_l pixels); this is also
    what autograd stores for the backward pass."""
    return tokens * heads * points * channels < embed_dim * height * width


class DeformableSamplingAttention(nn.Module):
    """Each token (level l, joint p) samples level l's value map at H x K points around its
    reference point and returns the softmax-weighted sum (DESIGN 2.4).

    Per level a 1x1 projection C_l -> D makes the value map (split into H heads of D/H
    channels); offsets = tanh(Linear(D -> H*K*2)(query)) in grid coordinates, added to the
    reference; weights = softmax over K of Linear(D -> H*K)(query); heads concatenated, then
    Linear(D -> D). Initialisation: offsets on rings (head h at angle 2*pi*h/H, point k at radius
    0.01*(k+1)), weight layer zero (uniform weights), value and output projections Xavier.

    Paths (equal up to floating-point rounding): `fast=False` projects every map and samples it
    with `deformable_sample_reference`; `fast=True` samples each level with a few batched
    kernels, and with `sample_then_project` (also fast only) levels whose samples are fewer
    numbers than their projected map (the high-resolution ones) sample the raw features and
    project the samples (`sample_then_project`), so the D-channel map of such a level is never
    built nor kept for the backward pass.
    """

    def __init__(self, embed_dim, level_channels, heads=4, points=4, fast=True,
                 sample_then_project=True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
        self.embed_dim = embed_dim
        self.heads = heads
        self.points = points
        self.fast = fast
        self.sample_then_project = sample_then_project
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
        shape = (batch, levels, tokens, self.heads, self.points)
        offsets = torch.tanh(self.sampling_offsets(queries)).view(*shape, 2)
        locations = reference[:, :, :, None, None, :] + offsets  # (B, L, P, H, K, 2)
        weights = self.attention_weights(queries).view(shape).softmax(-1)  # (B, L, P, H, K)

        def value_map(proj, feature):  # (B, H, Dh, H_l, W_l)
            return proj(feature).view(batch, self.heads, head_dim, *feature.shape[-2:])

        if not self.fast:
            values = [value_map(proj, feature) for proj, feature in zip(self.value_proj, maps)]
            return self.output_proj(deformable_sample_reference(values, locations, weights))
        out = []
        for level, (proj, feature) in enumerate(zip(self.value_proj, maps)):
            if self.sample_then_project and samples_are_smaller(
                    feature.shape[1], *feature.shape[-2:], dim, tokens, self.heads, self.points):
                out.append(sample_then_project(feature, proj.weight, proj.bias,
                                               locations[:, level], weights[:, level]))
            else:
                out.append(sample_level(value_map(proj, feature), locations[:, level],
                                        weights[:, level]))
        return self.output_proj(torch.stack(out, dim=1))  # (B, L, P, D) before the projection
