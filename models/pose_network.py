"""The pose network of MetaPose (docs/method.md §2.3-2.8), everything between the two frozen encoders and
the 3D pose: modality tokens, the two enhancers, the transformation alignment and the lifting.
`MetaPose.pose_net` is one of these; its parameters are "the pose network" of the paper
(14,999,309 for HRNet-W32 + ViT-B/32). `models/published_layout.py` maps the published names
onto its state-dict keys.

Shapes: B batch, L = 4 image levels, P = 17 joints (H36M order), D embed_dim, Dt text width.
"""

import torch
from torch import nn

from models.alignment import TransformationAlignment
from models.enhancers import LevelSampling, SemanticEnhancer, SpatialEnhancer
from models.layers import drop_path_rates, init_position_table
from models.lifting import LiftingTransformer
from utils.geometry import crop_pixels_to_grid, grid_align_corners
from utils.skeleton import NUM_JOINTS


class ModalityTokens(nn.Module):
    """The three token sets (docs/method.md §2.3):
    points = point_embed(kp2d) + point_pos            (B, 1, P, D)  Linear(2 -> D), (1, P, D)
    text   = text_embed(text features) + text_pos     (B, 1, P, D)  Linear(Dt -> D), (1, P, D)
    levels = level_embed[l](map_l at the crop joints) + level_pos
                                                      (B, L, P, D)  Linear(C_l -> D), (1, L, P, D)
    then dropout on the level tokens. Position tables start from N(0, 0.02)."""

    def __init__(self, level_channels, text_dim, embed_dim, joints=NUM_JOINTS, drop=0.0,
                 align_corners=True):
        super().__init__()
        levels = len(level_channels)
        self.point_embed = nn.Linear(2, embed_dim)
        self.point_pos = nn.Parameter(init_position_table(torch.empty(1, joints, embed_dim)))
        self.text_embed = nn.Linear(text_dim, embed_dim)
        self.text_pos = nn.Parameter(init_position_table(torch.empty(1, joints, embed_dim)))
        self.level_embed = LevelSampling(level_channels, embed_dim, align_corners)
        self.level_pos = nn.Parameter(
            init_position_table(torch.empty(1, levels, joints, embed_dim)))
        self.drop = nn.Dropout(drop)

    def forward(self, keypoints_2d, text_features, reference, maps):
        """keypoints_2d: (B, P, 2) normalised screen; text_features: (B, P, Dt);
        reference: (B, 1, P, 2) crop joints in grid coordinates; maps: list of L
        (B, C_l, H_l, W_l). Returns (points, text, levels) as in the class docstring."""
        points = self.point_embed(keypoints_2d).unsqueeze(1) + self.point_pos
        text = self.text_embed(text_features.to(points.dtype)).unsqueeze(1) + self.text_pos
        levels = self.drop(self.level_embed(maps, reference) + self.level_pos)
        return points, text, levels


class PoseNetwork(nn.Module):
    """Feature maps, 2D joints and text features -> (B, P, 3) joints in metres (camera frame,
    raw: not shifted to the root; `MetaPose` applies model.root_shift).

    grid_convention: how crop pixels become grid coordinates and the align_corners of every
    grid_sample (`published` | `pixel_centre`, utils.geometry). eval_noise, per_channel: the
    alignment switches (models/alignment.py). The network is built for the 17 H36M joints, and the
    alignment's cross-attention has its published 4 heads.
    """

    def __init__(self, level_channels, text_dim, embed_dim=128, depth=4, deform_heads=4,
                 deform_points=4, mlp_ratio=2.0, lift_heads=8, drop_rate=0.0,
                 drop_path=(0.1, 0.2), grid_convention="published", eval_noise="mean",
                 per_channel=False):
        super().__init__()
        level_channels = list(level_channels)
        levels = len(level_channels)
        joints = NUM_JOINTS
        align_corners = grid_align_corners(grid_convention)
        self.grid_convention = grid_convention
        rates = drop_path_rates(drop_path, depth)
        attention = dict(heads=deform_heads, points=deform_points, align_corners=align_corners)
        self.tokens = ModalityTokens(level_channels, text_dim, embed_dim, joints, drop_rate,
                                     align_corners)
        self.spatial = SpatialEnhancer(embed_dim, level_channels, rates, mlp_ratio, drop_rate,
                                       **attention)
        self.semantic = SemanticEnhancer(embed_dim, level_channels, rates, joints, mlp_ratio,
                                         drop_rate, **attention)
        self.alignment = TransformationAlignment(embed_dim, levels + 1, joints, drop=drop_rate,
                                                 eval_noise=eval_noise, per_channel=per_channel)
        self.lifting = LiftingTransformer(embed_dim, rates, levels + 1, joints, lift_heads,
                                          mlp_ratio, drop_rate)

    def forward(self, maps, keypoints_2d, keypoints_2d_crop, text_features):
        """
        Args:
            maps: list of L feature maps (B, C_l, H_l, W_l), high to low resolution.
            keypoints_2d: (B, P, 2) normalised screen coordinates.
            keypoints_2d_crop: (B, P, 2) crop pixels (x in [0, 192), y in [0, 256)).
            text_features: (B, P, Dt) per-joint text features.
        Returns:
            pose (B, P, 3) metres (raw), kl (scalar, the alignment KL term).
        """
        reference = crop_pixels_to_grid(keypoints_2d_crop, self.grid_convention).unsqueeze(1)
        # Maps are sampled in the precision of the points: under autocast grid_sample promotes a
        # bf16 map to float32 at every call (and keeps each copy for the backward pass); one cast
        # here gives the same numbers once. A no-op without autocast.
        maps = [feature.to(reference.dtype) for feature in maps]
        points, text, level_tokens = self.tokens(keypoints_2d, text_features, reference, maps)
        x_p = self.spatial(level_tokens, points, reference, maps)  # (B, L+1, P, D)
        x_t = self.semantic(level_tokens, text, reference, maps)  # (B, L+1, P, D)
        fused, kl = self.alignment(x_p, x_t)  # (B, (L+1) P, D)
        return self.lifting(fused), kl
