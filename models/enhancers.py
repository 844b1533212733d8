"""Level sampling and the Spatial- and Semantic-Driven Modality Enhancement (docs/method.md §2.3, 2.5, 2.6).

Shapes: B batch, L image feature levels (4), P joints (17), D embed_dim. Reference points are
(x, y) grid coordinates of grid_sample with the network's align_corners (the grid convention,
see `utils.geometry.crop_pixels_to_grid`); a reference of shape (B, 1, P, 2) serves every level.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.deformable_attention import DeformableSamplingAttention
from models.layers import MLP, DropPath, LAYER_NORM_EPS


class LevelSampling(nn.ModuleList):
    """One Linear(C_l -> D) per level (the list entries), applied to each level's map sampled at
    one point per joint: the level tokens (`feat_embed`), and the resampling of each semantic
    block (its own four)."""

    def __init__(self, level_channels, embed_dim, align_corners=True):
        super().__init__(nn.Linear(channels, embed_dim) for channels in level_channels)
        self.align_corners = bool(align_corners)

    def forward(self, maps, reference):
        """
        Args:
            maps: list of L feature maps (B, C_l, H_l, W_l).
            reference: (B, 1 or L, P, 2) sampling point of each (level,) joint, grid
                coordinates (x, y); outside the map reads zeros (bilinear, zero padding).
        Returns:
            (B, L, P, D) projected samples.
        """
        tokens = []
        for level, (feature, proj) in enumerate(zip(maps, self)):
            grid = reference[:, level if reference.shape[1] > 1 else 0].unsqueeze(2)  # (B,P,1,2)
            sample = F.grid_sample(feature, grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=self.align_corners)  # (B, C_l, P, 1)
            tokens.append(proj(sample.squeeze(3).transpose(1, 2)))  # (B, P, D)
        return torch.stack(tokens, dim=1)


def _attention(embed_dim, level_channels, options):
    return DeformableSamplingAttention(embed_dim, level_channels, options["heads"],
                                       options["points"], options["align_corners"])


class SpatialBlock(nn.Module):
    """y = LN(x + points); x = x + DropPath(DeformAttn(y, crop joints));
    x = x + DropPath(MLP(LN(x))) (`SpatialEn.i`)."""

    def __init__(self, embed_dim, level_channels, mlp_ratio, drop, drop_path, attention):
        super().__init__()
        self.norm_query = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.attn = _attention(embed_dim, level_channels, attention)
        self.norm_mlp = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, point_tokens, reference, maps):
        """x: (B, L, P, D); point_tokens: (B, 1, P, D); reference: (B, 1, P, 2);
        maps: list of L (B, C_l, H_l, W_l) -> (B, L, P, D)."""
        y = self.norm_query(x + point_tokens)
        x = x + self.drop_path(self.attn(y, reference, maps))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class SpatialEnhancer(nn.Module):
    """Spatial-Driven Modality Enhancement: the level tokens, queried with the 2D keypoint
    tokens, attend to the feature maps around the crop joints (the same reference for every
    level and block); the keypoint tokens are appended as a fifth level."""

    def __init__(self, embed_dim, level_channels, drop_path_rates, mlp_ratio=2.0, drop=0.0,
                 **attention):
        super().__init__()
        self.blocks = nn.ModuleList(
            SpatialBlock(embed_dim, level_channels, mlp_ratio, drop, rate, attention)
            for rate in drop_path_rates)

    def forward(self, level_tokens, point_tokens, reference, maps):
        """
        Args:
            level_tokens: (B, L, P, D) sampled image features (+ level position).
            point_tokens: (B, 1, P, D) embedded 2D keypoints (+ joint position).
            reference: (B, 1, P, 2) the crop joints in grid coordinates.
            maps: list of L feature maps (B, C_l, H_l, W_l).
        Returns:
            x_p: (B, L + 1, P, D), the enhanced levels then the point tokens.
        """
        x = level_tokens
        for block in self.blocks:
            x = block(x, point_tokens, reference, maps)
        return torch.cat([x, point_tokens], dim=1)


class SemanticBlock(nn.Module):
    """`SemanticEn.i`: y = LN1(x + text); ref = ref + tanh(ref_step(y));
    y = LN2(y + resample(maps, ref)) + query_pos; x = x + DropPath(DeformAttn(y, ref));
    x = x + DropPath(MLP(LN3(x))). Each block resamples with its own four projections."""

    def __init__(self, embed_dim, level_channels, mlp_ratio, drop, drop_path, attention):
        super().__init__()
        self.norm_query = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.ref_step = nn.Linear(embed_dim, 2)
        self.resample = LevelSampling(level_channels, embed_dim, attention["align_corners"])
        self.norm_sampled = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.attn = _attention(embed_dim, level_channels, attention)
        self.norm_mlp = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)
        with torch.no_grad():  # published: no move at first but a small step along +x
            self.ref_step.weight.zero_()
            self.ref_step.bias.copy_(torch.tensor([0.01, 0.0]))

    def forward(self, x, text_tokens, reference, maps, query_pos):
        """x: (B, L, P, D); text_tokens: (B, 1, P, D); reference: (B, 1 or L, P, 2);
        maps: list of L (B, C_l, H_l, W_l); query_pos: (L, P, D).
        Returns (x (B, L, P, D), moved reference (B, L, P, 2))."""
        y = self.norm_query(x + text_tokens)
        reference = reference + torch.tanh(self.ref_step(y))
        y = self.norm_sampled(y + self.resample(maps, reference)) + query_pos
        x = x + self.drop_path(self.attn(y, reference, maps))
        x = x + self.drop_path(self.mlp(self.norm_mlp(x)))
        return x, reference


class SemanticEnhancer(nn.Module):
    """Semantic-Driven Modality Enhancement: queried with the joint text tokens, each level's
    reference point moves block after block (tanh-bounded steps in grid coordinates, starting
    at the crop joints); the maps are resampled there and attended around it. One query
    position table (`query_pos`, (L * P, D), row l * P + p, N(0, 1) like nn.Embedding) serves
    all blocks. The text tokens are appended as a fifth level."""

    def __init__(self, embed_dim, level_channels, drop_path_rates, joints=17, mlp_ratio=2.0,
                 drop=0.0, **attention):
        super().__init__()
        self.levels, self.joints = len(level_channels), joints
        self.query_pos = nn.Parameter(torch.empty(self.levels * joints, embed_dim))
        nn.init.normal_(self.query_pos)
        self.blocks = nn.ModuleList(
            SemanticBlock(embed_dim, level_channels, mlp_ratio, drop, rate, attention)
            for rate in drop_path_rates)

    def forward(self, level_tokens, text_tokens, reference, maps):
        """
        Args:
            level_tokens: (B, L, P, D) sampled image features (+ level position).
            text_tokens: (B, 1, P, D) embedded joint text features (+ text position).
            reference: (B, 1, P, 2) the crop joints in grid coordinates.
            maps: list of L feature maps (B, C_l, H_l, W_l).
        Returns:
            x_t: (B, L + 1, P, D), the enhanced levels then the text tokens.
        """
        query_pos = self.query_pos.view(self.levels, self.joints, -1)
        x = level_tokens
        for block in self.blocks:
            x, reference = block(x, text_tokens, reference, maps, query_pos)
        return torch.cat([x, text_tokens], dim=1)
