"""Lifting transformer (docs/method.md §2.8): attention over the 5 levels of each joint, then over the
17 joints at width 5 D, then a linear head to 3D."""

import torch
from torch import nn

from models.layers import LAYER_NORM_EPS, Block, init_position_table


class LiftingTransformer(nn.Module):
    """(B, V P, D) aligned tokens (level-major) -> (B, P, 3) joint positions in metres (camera
    frame, not shifted to the root).

    `level_blocks` (published `scale_blocks`) run over the V levels of each joint at width D
    (+ `level_pos` (1, V, D)); the levels are concatenated per joint, level-major, to width V D
    (+ `joint_pos` (1, P, V D)) and `joint_blocks` run over the P joints; then `norm`
    (LayerNorm, eps 1e-5) and `head` Linear(V D -> 3). Blocks: pre-norm, LN eps 1e-6.
    """

    def __init__(self, embed_dim, drop_path_rates, levels=5, joints=17, heads=8, mlp_ratio=2.0,
                 drop=0.0):
        super().__init__()
        width = levels * embed_dim
        self.levels, self.joints = levels, joints
        self.level_pos = nn.Parameter(init_position_table(torch.empty(1, levels, embed_dim)))
        self.level_blocks = nn.ModuleList(
            Block(embed_dim, heads, mlp_ratio, drop=drop, drop_path=rate)
            for rate in drop_path_rates)
        self.joint_pos = nn.Parameter(init_position_table(torch.empty(1, joints, width)))
        self.joint_blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, drop=drop, drop_path=rate)
            for rate in drop_path_rates)
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(width, 3)

    def forward(self, tokens):
        """tokens: (B, V * P, D), row v * P + p -> (B, P, 3) metres."""
        batch, _, dim = tokens.shape
        x = tokens.view(batch, self.levels, self.joints, dim).transpose(1, 2)  # (B, P, V, D)
        x = x.reshape(batch * self.joints, self.levels, dim) + self.level_pos
        for block in self.level_blocks:
            x = block(x)
        x = x.reshape(batch, self.joints, self.levels * dim) + self.joint_pos
        for block in self.joint_blocks:
            x = block(x)
        return self.head(self.norm(x))
