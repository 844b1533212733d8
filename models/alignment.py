"""Transformation Alignment (DESIGN 2.7): Gaussian prompt from the spatial tokens, per-level fusion
of the two modalities, and cross-attention of the fused tokens to the prompt."""

import torch
from torch import nn

from models.layers import CrossAttention, init_transformer_weights, layer_norm


class TransformationAlignment(nn.Module):
    """From x_p, Linear(D -> 2) gives each token a mean mu and a log-variance (shared by its D
    channels); the Gaussian prompt is g = mu + sigma * eps, eps ~ N(0, I) of shape (B, L, P, D),
    in training and g = mu in evaluation (deterministic). Each level fuses the modalities,
    f_l = Linear(2D -> D)(concat(x_p[l], x_t[l])), and the flattened tokens attend to the prompt:
    f = f + CrossAttention(query = LN(f), key = value = LN(g))."""

    def __init__(self, embed_dim, heads=4, drop=0.0):
        super().__init__()
        self.gaussian = nn.Linear(embed_dim, 2)
        self.fuse = nn.Linear(2 * embed_dim, embed_dim)
        self.norm_query = layer_norm(embed_dim)
        self.norm_prompt = layer_norm(embed_dim)
        self.cross_attn = CrossAttention(embed_dim, heads, qkv_bias=True, proj_drop=drop)
        self.apply(init_transformer_weights)

    def forward(self, x_p, x_t):
        """
        Args:
            x_p: (B, L, P, D) spatial-enhanced tokens (L = 5: four image levels + keypoints).
            x_t: (B, L, P, D) semantic-enhanced tokens (four image levels + text).
        Returns:
            f: (B, L, P, D) aligned tokens.
            kl: scalar, KL(N(mu, sigma^2) || N(0, 1)) per channel, averaged over all B*L*P*D.
        """
        batch, levels, joints, dim = x_p.shape
        mu, logvar = self.gaussian(x_p).unsqueeze(-2).unbind(-1)  # each (B, L, P, 1)
        if self.training:
            noise = torch.randn(batch, levels, joints, dim, device=x_p.device, dtype=x_p.dtype)
            prompt = mu + torch.exp(0.5 * logvar) * noise
        else:
            prompt = mu.expand(batch, levels, joints, dim)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).mean()

        fused = self.fuse(torch.cat([x_p, x_t], dim=-1)).view(batch, levels * joints, dim)
        prompt = prompt.reshape(batch, levels * joints, dim)
        fused = fused + self.cross_attn(self.norm_query(fused), self.norm_prompt(prompt))
        return fused.view(batch, levels, joints, dim), kl
