"""Level tokens and the Spatial- and Semantic-Driven Modality Enhancement (DESIGN 2.3, 2.5, 2.6).

Shapes: B batch, L image feature levels (4), P joints (17), D embed_dim. Reference points are in
the grid coordinates of `grid_sample(align_corners=False)` (x, y; -1/+1 are the outer edges of
the crop), see `utils.geometry.crop_pixels_to_grid` and `models.deformable_attention`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.deformable_attention import DeformableSamplingAttention
from models.layers import MLP, DropPath, init_transformer_weights, layer_norm


class LevelSampler(nn.Module):
    """Bilinearly samples each level's feature map at one point per joint and projects the
    C_l channels to D: the level tokens (DESIGN 2.3), reused by the semantic enhancer to resample
    at its refined reference points (one set of projections for both)."""

    def __init__(self, level_channels, embed_dim):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(channels, embed_dim) for channels in level_channels)

    def forward(self, maps, grid):
        """
        Args:
            maps: list of L feature maps (B, C_l, H_l, W_l).
            grid: (B, L, P, 2) sampling point of each level and joint, grid coordinates (x, y),
                align_corners=False; outside the map reads zeros.
        Returns:
            (B, L, P, D) projected samples.
        """
        tokens = []
        for level, (feature, proj) in enumerate(zip(maps, self.proj)):
            sample = F.grid_sample(feature, grid[:, level].unsqueeze(2), mode="bilinear",
                                   padding_mode="zeros", align_corners=False)  # (B, C_l, P, 1)
            tokens.append(proj(sample.squeeze(3).transpose(1, 2)))  # (B, P, D)
        return torch.stack(tokens, dim=1)


class SpatialBlock(nn.Module):
    """y = LN(x + points); x = x + DropPath(DeformAttn(y, ref)); x = x + DropPath(MLP(LN(x)))."""

    def __init__(self, embed_dim, level_channels, heads, points, mlp_ratio, drop, drop_path, fast,
                 sample_then_project=True):
        super().__init__()
        self.norm_query = layer_norm(embed_dim)
        self.attn = DeformableSamplingAttention(embed_dim, level_channels, heads, points, fast=fast,
                                                sample_then_project=sample_then_project)
        self.norm_mlp = layer_norm(embed_dim)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, point_tokens, reference, maps):
        """x: (B, L, P, D); point_tokens: (B, P, D); reference: (B, L, P, 2) grid coords;
        maps: list of L (B, C_l, H_l, W_l) -> (B, L, P, D)."""
        y = self.norm_query(x + point_tokens.unsqueeze(1))
        x = x + self.drop_path(self.attn(y, reference, maps))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class SpatialEnhancer(nn.Module):
    """Spatial-Driven Modality Enhancement: the level tokens attend, around the 2D crop joints,
    to the feature maps, queried with the 2D keypoint tokens; the keypoint tokens are appended
    as a fifth level."""

    def __init__(self, embed_dim, level_channels, depth=4, heads=4, points=4, mlp_ratio=2.0,
                 drop=0.0, drop_path=0.1, fast=True, sample_then_project=True):
        super().__init__()
        self.blocks = nn.ModuleList(
            SpatialBlock(embed_dim, level_channels, heads, points, mlp_ratio, drop, drop_path, fast,
                         sample_then_project)
            for _ in range(depth))
        self.apply(init_transformer_weights)
        for block in self.blocks:
            block.attn.reset_parameters()

    def forward(self, level_tokens, point_tokens, reference, maps):
        """
        Args:
            level_tokens: (B, L, P, D) sampled image features (+ level embedding).
            point_tokens: (B, P, D) embedded 2D keypoints (+ joint position).
            reference: (B, L, P, 2) reference points, grid coordinates (the 2D crop joints).
            maps: list of L feature maps (B, C_l, H_l, W_l).
        Returns:
            x_p: (B, L + 1, P, D), the enhanced levels then the point tokens.
        """
        x = level_tokens
        for block in self.blocks:
            x = block(x, point_tokens, reference, maps)
        return torch.cat([x, point_tokens.unsqueeze(1)], dim=1)


class SemanticBlock(nn.Module):
    """y = LN(x + text); ref = ref + tanh(Linear(y)); y = LN(y + resample(ref)) + query_pos;
    x = x + DropPath(DeformAttn(y, ref)); x = x + DropPath(MLP(LN(x)))."""

    def __init__(self, embed_dim, level_channels, joints, heads, points, mlp_ratio, drop, drop_path,
                 fast, sample_then_project=True):
        super().__init__()
        self.norm_query = layer_norm(embed_dim)
        self.ref_offset = nn.Linear(embed_dim, 2)
        self.norm_sampled = layer_norm(embed_dim)
        self.query_pos = nn.Parameter(torch.zeros(len(level_channels), joints, embed_dim))
        self.attn = DeformableSamplingAttention(embed_dim, level_channels, heads, points, fast=fast,
                                                sample_then_project=sample_then_project)
        self.norm_mlp = layer_norm(embed_dim)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, text_tokens, reference, maps, sampler):
        """x: (B, L, P, D); text_tokens: (B, P, D); reference: (B, L, P, 2) grid coords;
        maps: list of L (B, C_l, H_l, W_l); sampler: LevelSampler.
        Returns (x (B, L, P, D), refined reference (B, L, P, 2))."""
        y = self.norm_query(x + text_tokens.unsqueeze(1))
        reference = reference + torch.tanh(self.ref_offset(y))
        y = self.norm_sampled(y + sampler(maps, reference)) + self.query_pos
        x = x + self.drop_path(self.attn(y, reference, maps))
        x = x + self.drop_path(self.mlp(self.norm_mlp(x)))
        return x, reference


class SemanticEnhancer(nn.Module):
    """Semantic-Driven Modality Enhancement: queried with the joint text tokens, each level's
    reference point moves block after block (tanh-bounded steps in grid coordinates, starting at
    the 2D crop joints); the map is resampled there and attended around it. The text tokens are
    appended as a fifth level. The reference step layer starts at zero (no move)."""

    def __init__(self, embed_dim, level_channels, joints=17, depth=4, heads=4, points=4,
                 mlp_ratio=2.0, drop=0.0, drop_path=0.1, fast=True, sample_then_project=True):
        super().__init__()
        self.blocks = nn.ModuleList(
            SemanticBlock(embed_dim, level_channels, joints, heads, points, mlp_ratio, drop,
                          drop_path, fast, sample_then_project)
            for _ in range(depth))
        self.apply(init_transformer_weights)
        for block in self.blocks:
            block.attn.reset_parameters()
            nn.init.zeros_(block.ref_offset.weight)
            nn.init.zeros_(block.ref_offset.bias)
            nn.init.trunc_normal_(block.query_pos, std=0.02)

    def forward(self, level_tokens, text_tokens, reference, maps, sampler):
        """
        Args:
            level_tokens: (B, L, P, D) sampled image features (+ level embedding).
            text_tokens: (B, P, D) embedded joint text features (+ text position).
            reference: (B, L, P, 2) initial reference points, grid coordinates (2D crop joints).
            maps: list of L feature maps (B, C_l, H_l, W_l).
            sampler: the LevelSampler that made the level tokens (shared projections).
        Returns:
            x_t: (B, L + 1, P, D), the enhanced levels then the text tokens.
        """
        x = level_tokens
        for block in self.blocks:
            x, reference = block(x, text_tokens, reference, maps, sampler)
        return torch.cat([x, text_tokens.unsqueeze(1)], dim=1)
