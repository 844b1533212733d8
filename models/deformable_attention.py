"""Deformable sampling attention (docs/method.md §2.4): the published module, the fast sampling it
runs and the plain reference of that sampling.

Coordinates. Locations are (x, y) grid coordinates of `F.grid_sample` with the network's
`align_corners` (True under the published grid convention, False under pixel_centre, see
`utils.geometry.crop_pixels_to_grid`); sampling is bilinear with zero padding, so a point
outside the map reads zeros (partly, within a pixel of the border).

Shapes. B batch, L levels, P tokens per level (17 joints), H heads, K points per head, C_l the
channels of level l's map (H_l, W_l), Dh = D / H. Level l's tokens sample only map l, and
every sample is projected by the level's one Linear(C_l -> Dh) (weight (Dh, C_l), bias (Dh,)),
shared by the H heads: a sample that falls outside the map is exactly the bias.

The module always runs `deformable_sample_fast`, which picks per level whichever of two
one-grid_sample orders keeps fewer numbers; both equal the reference up to floating-point
rounding because the projection is linear:
- `sample_then_project`: one grid_sample of the raw features per level, the weighted sum over K
  first, then the projection: W (sum_k w_k s_k) + b sum_k w_k.
- `project_then_sample`: project the map once with W only (Dh channels), one grid_sample of it,
  weighted sum over K, plus b sum_k w_k (sampling a bias-free projected map gives W s_k exactly,
  also outside the map, so the out-of-map share needs no correction).
For tests and benchmarks only, `deformable_sample_reference` is docs/method.md §2.4 written
literally (per level, head and point: grid_sample the point, project it, weight it, sum over K;
heads concatenated), and `deformable_attention_reference` is the whole module computed with it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _grid_sample(feature, grid, align_corners):
    return F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=align_corners)


def _check_shapes(maps, projections, locations, weights):
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError(f"locations must be (B, L, P, H, K, 2), got {tuple(locations.shape)}")
    if weights.shape != locations.shape[:-1]:
        raise ValueError(f"weights {tuple(weights.shape)} must be locations.shape[:-1] = "
                         f"{tuple(locations.shape[:-1])}")
    if not len(maps) == len(projections) == locations.shape[1]:
        raise ValueError(f"{len(maps)} maps, {len(projections)} projections and "
                         f"{locations.shape[1]} location levels must agree")
    for level, (feature, (weight, _)) in enumerate(zip(maps, projections)):
        if feature.dim() != 4 or feature.shape[0] != locations.shape[0] \
                or weight.shape[-1] != feature.shape[1]:
            raise ValueError(f"level {level}: map {tuple(feature.shape)} and projection weight "
                             f"{tuple(weight.shape)} do not fit batch {locations.shape[0]}")


def deformable_sample_reference(maps, projections, locations, weights, align_corners):
    """The sampling of the published module, written as plainly as possible (one grid_sample
    and one projection per level, head and point): the slow ground truth of the fast paths, for
    tests and benchmarks only (the module runs `deformable_sample_fast`).

    Args:
        maps: list of L feature maps (B, C_l, H_l, W_l).
        projections: list of L (weight (Dh, C_l), bias (Dh,) or None), one per level, shared by
            all heads.
        locations: (B, L, P, H, K, 2) sampling points, grid coordinates (x, y); any real value.
        weights: (B, L, P, H, K) weight of each point (softmax over K in the module; any real
            numbers here).
        align_corners: of every grid_sample (see the module docstring).
    Returns:
        (B, L, P, H * Dh): per token, for each head the weighted sum over its K projected
        samples; head h fills channels h*Dh .. (h+1)*Dh - 1.
    """
    _check_shapes(maps, projections, locations, weights)
    levels = []
    for level, (feature, (weight, bias)) in enumerate(zip(maps, projections)):
        heads = []
        for head in range(locations.shape[3]):
            total = 0.0
            for point in range(locations.shape[4]):
                grid = locations[:, level, :, head, point, :].unsqueeze(2)  # (B, P, 1, 2)
                sample = _grid_sample(feature, grid, align_corners)  # (B, C_l, P, 1)
                projected = F.linear(sample.squeeze(3).transpose(1, 2), weight, bias)  # (B,P,Dh)
                total = total + projected * weights[:, level, :, head, point].unsqueeze(-1)
            heads.append(total)
        levels.append(torch.cat(heads, dim=-1))  # (B, P, H*Dh)
    return torch.stack(levels, dim=1)


def _add_bias(out, bias, weights):
    """out (B, P, H, Dh) + bias (Dh,) * sum_k weights (B, P, H, K): every sample carries the
    bias once, inside the map or not."""
    if bias is None:
        return out
    return out + weights.sum(-1).unsqueeze(-1) * bias


def sample_then_project(feature, weight, bias, locations, weights, align_corners):
    """One level: grid_sample the raw features at all P x H x K points, weight and sum over K,
    then project (the D/H-channel projected map is never built). Pays off where the samples are
    fewer numbers than the projected map (the high-resolution levels).

    Args:
        feature: (B, C_l, H_l, W_l); weight: (Dh, C_l); bias: (Dh,) or None.
        locations: (B, P, H, K, 2) grid coordinates (x, y); weights: (B, P, H, K).
        align_corners: of the grid_sample.
    Returns:
        (B, P, H * Dh), equal to the level's slice of `deformable_sample_reference`.
    """
    batch, channels = feature.shape[:2]
    _, tokens, heads, points, _ = locations.shape
    grid = locations.reshape(batch, tokens, heads * points, 2)
    samples = _grid_sample(feature, grid, align_corners)  # (B, C_l, P, H*K)
    samples = samples.view(batch, channels, tokens, heads, points)
    mixed = (samples * weights.unsqueeze(1)).sum(-1)  # (B, C_l, P, H)
    out = torch.einsum("bcph,dc->bphd", mixed, weight)  # (B, P, H, Dh)
    return _add_bias(out, bias, weights).reshape(batch, tokens, -1)


def project_then_sample(feature, weight, bias, locations, weights, align_corners):
    """One level: project the whole map with the weight alone (Dh channels, shared by the heads),
    grid_sample it at all P x H x K points, weight and sum over K, add the bias once per unit of
    weight. Pays off where the projected map is smaller than the samples (low resolutions).

    Same arguments and result as `sample_then_project`.
    """
    batch = feature.shape[0]
    _, tokens, heads, points, _ = locations.shape
    value = F.conv2d(feature, weight[:, :, None, None])  # (B, Dh, H_l, W_l), no bias
    grid = locations.reshape(batch, tokens, heads * points, 2)
    samples = _grid_sample(value, grid, align_corners)  # (B, Dh, P, H*K)
    samples = samples.view(batch, -1, tokens, heads, points)
    out = (samples * weights.unsqueeze(1)).sum(-1).permute(0, 2, 3, 1)  # (B, P, H, Dh)
    return _add_bias(out, bias, weights).reshape(batch, tokens, -1)


def samples_are_smaller(channels, height, width, head_dim, tokens, heads, points):
    """Whether `sample_then_project` keeps fewer numbers per sample than `project_then_sample`
    (P*H*K samples of C_l channels against the Dh x H_l x W_l projected map); this is also what
    autograd stores for the backward pass."""
    return tokens * heads * points * channels < head_dim * height * width


def deformable_sample_fast(maps, projections, locations, weights, align_corners):
    """Same arguments, result and gradients as `deformable_sample_reference`, with one
    grid_sample per level: `sample_then_project` where the samples are the smaller tensor and
    `project_then_sample` elsewhere."""
    _check_shapes(maps, projections, locations, weights)
    _, _, tokens, heads, points, _ = locations.shape
    out = []
    for level, (feature, (weight, bias)) in enumerate(zip(maps, projections)):
        use_samples = samples_are_smaller(feature.shape[1], *feature.shape[-2:], weight.shape[0],
                                          tokens, heads, points)
        function = sample_then_project if use_samples else project_then_sample
        out.append(function(feature, weight, bias, locations[:, level], weights[:, level],
                            align_corners))
    return torch.stack(out, dim=1)


class DeformableSamplingAttention(nn.Module):
    """Each token (level l, joint p) samples map l at H x K points around its reference point,
    projects the samples with `sample_proj[l]` and returns, per head, the softmax-weighted sum of
    its K samples, heads concatenated (docs/method.md §2.4). No value projection before the sampling and
    no output projection after it.

    sampling_offsets: Linear(D -> 2 H K), laid out (H, K, xy); tanh is applied to its output and
    the result added to the reference. attention_weights: Linear(D -> H K), softmax over K.
    sample_proj[l]: Linear(C_l -> D / H), one per level, shared by the heads.
    Initialisation (published): offsets weight 0 and bias the square ring of `ring_offsets`
    (that is the bias itself, before tanh); weight layer 0 (uniform weights); sample_proj the
    PyTorch default.

    The sampling runs `deformable_sample_fast`; `deformable_attention_reference(module, ...)`
    computes the same output with the reference sampling (tests and benchmarks).
    """

    def __init__(self, embed_dim, level_channels, heads=4, points=4, align_corners=True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.points = points
        self.align_corners = bool(align_corners)
        self.attention_weights = nn.Linear(embed_dim, heads * points)
        self.sampling_offsets = nn.Linear(embed_dim, heads * points * 2)
        self.sample_proj = nn.ModuleList(nn.Linear(channels, embed_dim // heads)
                                         for channels in level_channels)
        self.reset_parameters()

    def ring_offsets(self):
        """(H, K, 2) initial sampling-offset bias: head h points along (cos, sin)(2 pi h / H)
        divided by max(|cos|, |sin|) (a square of directions), point k at 0.01 (k + 1) times
        that; x then y."""
        angles = torch.arange(self.heads, dtype=torch.float64) * (2.0 * math.pi / self.heads)
        direction = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (H, 2)
        direction = direction / direction.abs().amax(dim=-1, keepdim=True)
        steps = 0.01 * torch.arange(1, self.points + 1, dtype=torch.float64)
        return direction[:, None, :] * steps[None, :, None]

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.zeros_(self.sampling_offsets.weight)
        ring = self.ring_offsets().flatten().to(self.sampling_offsets.bias.dtype)
        self.sampling_offsets.bias.copy_(ring)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def sampling(self, queries, reference, maps):
        """Where and with what weight each token samples, and the level projections.

        Args:
            queries: (B, L, P, D) tokens; the token of level l samples maps[l] only.
            reference: (B, 1 or L, P, 2) reference points, grid coordinates (x, y) of the
                module's align_corners; one row is shared by all levels.
            maps: list of L feature maps (B, C_l, H_l, W_l).
        Returns:
            (projections, locations (B, L, P, H, K, 2), weights (B, L, P, H, K)): the arguments
            of `deformable_sample_fast` / `deformable_sample_reference` after `maps`.
        """
        batch, levels, tokens, _ = queries.shape
        if len(maps) != levels or len(maps) != len(self.sample_proj):
            raise ValueError(f"{len(maps)} maps for {levels} query levels and "
                             f"{len(self.sample_proj)} sample projections")
        shape = (batch, levels, tokens, self.heads, self.points)
        offsets = torch.tanh(self.sampling_offsets(queries)).view(*shape, 2)
        locations = reference[:, :, :, None, None, :] + offsets  # (B, L, P, H, K, 2)
        weights = self.attention_weights(queries).view(shape).softmax(-1)  # (B, L, P, H, K)
        projections = [(proj.weight, proj.bias) for proj in self.sample_proj]
        return projections, locations, weights

    def forward(self, queries, reference, maps):
        """queries (B, L, P, D), reference (B, 1 or L, P, 2), maps (list of L (B, C_l, H_l,
        W_l); see `sampling`) -> (B, L, P, D)."""
        return deformable_sample_fast(maps, *self.sampling(queries, reference, maps),
                                      self.align_corners)


def deformable_attention_reference(module, queries, reference, maps):
    """What `module(queries, reference, maps)` computes, with `deformable_sample_reference` in
    place of the fast sampling: the plain path that tests and benchmarks compare the module
    with (a DeformableSamplingAttention never runs it itself)."""
    return deformable_sample_reference(maps, *module.sampling(queries, reference, maps),
                                       module.align_corners)
