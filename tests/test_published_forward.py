"""The whole pose network against docs/method.md §2 written out a second time, as plain functions of a state
dict in the PUBLISHED names (tests/data/published_checkpoint_layout.json).

The module classes, the rename map (models/published_layout.py), the (head, point, xy) order of
the sampling offsets, the level-major flattening, the per-level and per-block projections, the
eps of every LayerNorm and the grid convention all have to agree for the two computations to
match; a mistake in any of them changes the output far beyond float64 rounding.
"""

import json
import math
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.published_layout import published_pose_net_key
from utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = os.path.join(REPO, "tests", "data", "published_checkpoint_layout.json")
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")

ENHANCER_EPS, LIFTING_BLOCK_EPS = 1e-5, 1e-6


# ----------------------------------------------------------------------------------------------
# docs/method.md §2.3-2.8 as functions of a published-name state dict `w` (float64, evaluation mode)


def linear(w, name, x):
    return F.linear(x, w[name + ".weight"], w[name + ".bias"])


def norm(w, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps)


def mlp(w, name, x):
    return linear(w, name + ".fc2", F.gelu(linear(w, name + ".fc1", x)))


def grid_of(crop, convention):
    """Crop pixels (B, P, 2) -> grid coordinates and align_corners (docs/method.md §2.3 / 2.9)."""
    x, y = crop[..., 0], crop[..., 1]
    if convention == "published":
        return torch.stack([x / 96 - 1, y / 128 - 1], -1), True
    return torch.stack([(x + 0.5) / 96 - 1, (y + 0.5) / 128 - 1], -1), False


def bilinear(feature, points, align):
    """feature (B, C, H, W), points (B, P, N, 2) -> (B, P, N, C), zero padding."""
    return F.grid_sample(feature, points, mode="bilinear", padding_mode="zeros",
                         align_corners=align).permute(0, 2, 3, 1)


def deformable(w, name, y, ref, maps, heads, points, align):
    """docs/method.md §2.4: y (B, L, P, D), ref (B, 1 or L, P, 2)."""
    batch, levels, joints, _ = y.shape
    weights = linear(w, name + ".attention_weights", y).view(batch, levels, joints, heads, points)
    weights = weights.softmax(-1)
    offsets = torch.tanh(linear(w, name + ".sampling_offsets", y))
    where = offsets.view(batch, levels, joints, heads * points, 2) + ref.unsqueeze(3)
    out = []
    for level, feature in enumerate(maps):
        samples = bilinear(feature, where[:, level], align)  # (B, P, H*K, C_l)
        samples = linear(w, f"{name}.embed_proj.{level}", samples)  # every sample, bias included
        samples = samples.view(batch, joints, heads, points, -1)
        out.append((samples * weights[:, level, ..., None]).sum(3).flatten(2))  # (B, P, D)
    return torch.stack(out, 1)


def lifting_block(w, name, x, heads):
    """Pre-norm block, LN eps 1e-6, attention scale (width / heads) ** -0.5."""
    tokens, length, width = x.shape
    h = norm(w, name + ".norm1", x, LIFTING_BLOCK_EPS)
    q, k, v = linear(w, name + ".attn.qkv", h).view(tokens, length, 3, heads, -1).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (N, heads, T, width/heads)
    attention = (q @ k.transpose(-1, -2) * (width // heads) ** -0.5).softmax(-1)
    h = (attention @ v).transpose(1, 2).reshape(tokens, length, width)
    x = x + linear(w, name + ".attn.proj", h)
    return x + mlp(w, name + ".mlp", norm(w, name + ".norm2", x, LIFTING_BLOCK_EPS))


def published_pose_net(w, maps, keypoints_2d, keypoints_crop, text_features, depth, heads=4,
                       points=4, align_heads=4, lift_heads=8, convention="published"):
    """The raw (B, P, 3) output of docs/method.md §2 in evaluation with eps = 0 (eval_noise mean)."""
    grid, align = grid_of(keypoints_crop, convention)
    batch, joints, _ = keypoints_2d.shape
    levels = len(maps)
    point_tokens = linear(w, "coord_embed", keypoints_2d)[:, None] + w["Spatial_pos_embed"]
    text_tokens = linear(w, "text_proj", text_features)[:, None] + w["Spatial_txt_embed"]
    level_tokens = torch.stack([
        linear(w, f"feat_embed.{level}", bilinear(feature, grid[:, :, None], align)[:, :, 0])
        for level, feature in enumerate(maps)], 1) + w["Spatial_img_embed"]

    ref = grid[:, None]  # (B, 1, P, 2)
    x = level_tokens
    for i in range(depth):  # docs/method.md §2.5
        y = norm(w, f"SpatialEn.{i}.norm1", x + point_tokens, ENHANCER_EPS)
        x = x + deformable(w, f"SpatialEn.{i}.de_att", y, ref, maps, heads, points, align)
        x = x + mlp(w, f"SpatialEn.{i}.mlp", norm(w, f"SpatialEn.{i}.norm2", x, ENHANCER_EPS))
    x_p = torch.cat([x, point_tokens], 1)

    query_pos = w["query_embed.weight"].view(levels, joints, -1)
    x, ref = level_tokens, grid[:, None]
    for i in range(depth):  # docs/method.md §2.6
        block = f"SemanticEn.{i}"
        y = norm(w, block + ".norm1", x + text_tokens, ENHANCER_EPS)
        ref = ref + torch.tanh(linear(w, block + ".offsets", y))  # becomes (B, L, P, 2)
        resampled = torch.stack([
            linear(w, f"{block}.embed_proj.{level}",
                   bilinear(feature, ref[:, level, :, None], align)[:, :, 0])
            for level, feature in enumerate(maps)], 1)
        y = norm(w, block + ".norm2", y + resampled, ENHANCER_EPS) + query_pos
        x = x + deformable(w, block + ".de_att", y, ref, maps, heads, points, align)
        x = x + mlp(w, block + ".mlp", norm(w, block + ".norm3", x, ENHANCER_EPS))
    x_t = torch.cat([x, text_tokens], 1)

    dim = x_p.shape[-1]
    mu = linear(w, "dist_proj", x_p)[..., :1]  # eps = 0: the prompt is the mean
    prompt = mu.expand_as(x_p).flatten(1, 2)  # (B, 5P, D), level-major
    fused = torch.stack([linear(w, f"fusion.{v}", torch.cat([x_p[:, v], x_t[:, v]], -1))
                         for v in range(levels + 1)], 1).flatten(1, 2)

    def split(t):
        return t.view(batch, t.shape[1], align_heads, dim // align_heads).transpose(1, 2)

    q = split(linear(w, "dis_cross.query", norm(w, "dis_cross.norm", fused, ENHANCER_EPS)))
    keys_in = norm(w, "dis_cross.text_norm", prompt, ENHANCER_EPS)
    k, v = split(linear(w, "dis_cross.key", keys_in)), split(linear(w, "dis_cross.value", keys_in))
    attention = (q @ k.transpose(-1, -2) / math.sqrt(dim // align_heads)).softmax(-1)
    fused = fused + (attention @ v).transpose(1, 2).reshape(batch, -1, dim)

    x = fused.view(batch, levels + 1, joints, dim).transpose(1, 2).reshape(-1, levels + 1, dim)
    x = x + w["scale_pos_embed"]
    for i in range(depth):
        x = lifting_block(w, f"scale_blocks.{i}", x, lift_heads)
    x = x.reshape(batch, joints, -1) + w["joint_pos_embed"]
    for i in range(depth):
        x = lifting_block(w, f"joint_blocks.{i}", x, lift_heads)
    return linear(w, "head.1", norm(w, "head.0", x, ENHANCER_EPS))


# ----------------------------------------------------------------------------------------------


def _published_names(depth):
    """The published pose_net names of a network with `depth` blocks per stack."""
    with open(LAYOUT) as handle:
        names = [name for name in json.load(handle)["pose_net_and_prompts"]
                 if name.startswith("pose_net.")]
    keep = []
    for name in names:
        block = re.match(r"pose_net\.(SpatialEn|SemanticEn|scale_blocks|joint_blocks)\.(\d+)\.",
                         name)
        if block is None or int(block.group(2)) < depth:
            keep.append(name)
    return keep


@pytest.mark.parametrize("convention", ["published", "pixel_centre"])
def test_pose_network_is_design_2_in_published_names(convention):
    depth = 2
    config = load_config(TINY, [f"model.depth={depth}", f"model.grid_convention={convention}",
                                "model.embed_dim=32"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random encoders on purpose
        model = build_model(config).double().eval()
    ours = model.state_dict()
    published = {}
    for name in _published_names(depth):
        published[name[len("pose_net."):]] = ours[published_pose_net_key(name)]
    assert len(published) == sum(key.startswith("pose_net.") for key in ours)  # one to one
    # Non-trivial values where the initialisation leaves zeros or a ring, so every term counts.
    generator = torch.Generator().manual_seed(1)
    for name, tensor in published.items():
        if "attention_weights" in name or "sampling_offsets" in name or "offsets" in name:
            tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.5)

    batch = 3
    maps = [torch.randn(batch, c, h, w, generator=generator, dtype=torch.float64)
            for c, (h, w) in zip(model.image_encoder.level_channels,
                                 [(16, 12), (8, 6), (4, 3), (2, 2)])]
    keypoints_2d = torch.rand(batch, 17, 2, generator=generator, dtype=torch.float64) * 2 - 1
    crop = torch.rand(batch, 17, 2, generator=generator, dtype=torch.float64)
    crop = crop * torch.tensor([230.0, 300.0], dtype=torch.float64) - 20.0  # some outside
    text = torch.randn(batch, 17, model.text_encoder.output_dim, generator=generator,
                       dtype=torch.float64)

    with torch.no_grad():
        got, _ = model.pose_net(maps, keypoints_2d, crop, text)
        want = published_pose_net(published, maps, keypoints_2d, crop, text, depth,
                                  heads=config.model.deform_heads,
                                  points=config.model.deform_points,
                                  lift_heads=config.model.lift_heads, convention=convention)
    assert got.shape == want.shape == (batch, 17, 3)
    assert want.abs().max() > 1e-3  # a real output, not a degenerate one
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
