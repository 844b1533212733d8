"""Lifting transformer (DESIGN 2.8): attention over the 5 levels of each joint, then over the
17 joints at width 5*D, then a linear head to 3D."""

import torch
from torch import nn

from models.layers import Block, init_transformer_weights, layer_norm


class LiftingTransformer(nn.Module):
    """(B, L, P, D) aligned tokens -> (B, P, 3) joint positions (metres, not yet root-relative).

    depth pre-norm blocks over the L levels of each joint (width D, + learned level position),
    then the levels are concatenated per joint (width L*D, + learned joint position) and depth
    blocks run over the P joints; LayerNorm + Linear(L*D -> 3). Stochastic depth rises linearly
    from drop_path[0] to drop_path[1] over the blocks of each stack.
    """

    def __init__(self, embed_dim, levels=5, joints=17, depth=4, heads=8, mlp_ratio=2.0, drop=0.0,
                 drop_path=(0.1, 0.2)):
        super().__init__()
        width = levels * embed_dim
        rates = torch.linspace(float(drop_path[0]), float(drop_path[1]), depth).tolist() \
            if depth > 1 else [float(drop_path[0])] * depth
        self.level_pos = nn.Parameter(torch.zeros(1, levels, embed_dim))
        self.level_blocks = nn.ModuleList(
            Block(embed_dim, heads, mlp_ratio, qkv_bias=True, drop=drop, drop_path=rate)
            for rate in rates)
        self.joint_pos = nn.Parameter(torch.zeros(1, joints, width))
        self.joint_blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, qkv_bias=True, drop=drop, drop_path=rate)
            for rate in rates)
        self.norm = layer_norm(width)
        self.head = nn.Linear(width, 3)
        self.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.level_pos, std=0.02)
        nn.init.trunc_normal_(self.joint_pos, std=0.02)

    def forward(self, tokens):
        """tokens: (B, L, P, D) -> (B, P, 3) metres (camera frame, before root subtraction)."""
        batch, levels, joints, dim = tokens.shape
        x = tokens.transpose(1, 2).reshape(batch * joints, levels, dim) + self.level_pos
        for block in self.level_blocks:
            x = block(x)
        x = x.reshape(batch, joints, levels * dim) + self.joint_pos
        for block in self.joint_blocks:
            x = block(x)
        return self.head(self.norm(x))
