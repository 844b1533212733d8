"""Transformation Alignment (docs/method.md §2.7): the Gaussian prompt from the spatial tokens, one fusion
layer per level, and cross-attention of the fused tokens to the prompt.

Shapes: B batch, V = 5 token levels (4 image levels + the keypoint or text level), P joints,
D embed_dim.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import LAYER_NORM_EPS
from utils.errors import MetaPoseError

EVAL_NOISE_MODES = ("mean", "fixed")
FIXED_NOISE_SEED = 20240917  # the one draw of eval_noise=fixed (any constant; never the global RNG)


class PromptCrossAttention(nn.Module):
    """`dis_cross`: q = query(norm_query(f)), k = key(norm_prompt(g)), v = value(norm_prompt(g))
    (three Linear(D -> D) with bias; one LayerNorm for the queries, one serving keys and
    values), H heads, softmax over the keys of q.k / sqrt(D / H), dropout, weighted sum of v,
    heads concatenated. No output projection."""

    def __init__(self, dim, heads=4, attn_drop=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.attn_drop = attn_drop
        self.norm_query = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_prompt = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, fused, prompt):
        """fused: (B, N, D) queries; prompt: (B, M, D) keys = values -> (B, N, D)."""
        batch, tokens, dim = fused.shape

        def split(x):  # (B, n, D) -> (B, H, n, D/H)
            return x.view(batch, x.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        prompt = self.norm_prompt(prompt)
        q = split(self.query(self.norm_query(fused)))
        k, v = split(self.key(prompt)), split(self.value(prompt))
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return out.transpose(1, 2).reshape(batch, tokens, dim)


class TransformationAlignment(nn.Module):
    """mu, log-variance = gaussian(x_p) (Linear(D -> 2): one of each per token, shared by its D
    channels; with `per_channel`, Linear(D -> 2D): one of each per channel, an ablation);
    prompt g = mu + exp(logvar / 2) * eps. Fusion f_v = fusion[v](concat(x_p[:, v], x_t[:, v]))
    (Linear(2D -> D), one per level), flattened level-major to (B, V P, D);
    f = f + PromptCrossAttention(f, g).

    eps: fresh N(0, I) draws of shape (B, V, P, D) in training. In evaluation (always
    deterministic and independent of the batch; the published code draws there too):
    `eval_noise="mean"` uses eps = 0; `"fixed"` one draw of shape (V, P, D) from a private
    generator seeded with FIXED_NOISE_SEED (a non-persistent buffer), the same for every sample.
    Note that as published (per-token mu and sigma) norm_prompt removes them: LN(g) = LN(eps).
    """

    def __init__(self, embed_dim, levels=5, joints=17, heads=4, drop=0.0, eval_noise="mean",
                 per_channel=False):
        super().__init__()
        if eval_noise not in EVAL_NOISE_MODES:
            raise MetaPoseError(f"model.alignment.eval_noise is {eval_noise!r}; use one of "
                                f"{', '.join(EVAL_NOISE_MODES)}.")
        self.eval_noise = eval_noise
        self.per_channel = bool(per_channel)
        self.gaussian = nn.Linear(embed_dim, 2 * embed_dim if self.per_channel else 2)
        self.fusion = nn.ModuleList(nn.Linear(2 * embed_dim, embed_dim) for _ in range(levels))
        self.cross_attn = PromptCrossAttention(embed_dim, heads, attn_drop=drop)
        generator = torch.Generator(device="cpu").manual_seed(FIXED_NOISE_SEED)
        noise = torch.randn(levels, joints, embed_dim, generator=generator, device="cpu")
        self.register_buffer("fixed_noise", noise, persistent=False)

    def _noise(self, like):
        if self.training:
            return torch.randn_like(like)
        if self.eval_noise == "fixed":
            return self.fixed_noise.to(like.dtype).expand_as(like)
        return None  # the mean: eps = 0

    def forward(self, x_p, x_t):
        """
        Args:
            x_p: (B, V, P, D) spatial-enhanced tokens (four image levels + keypoints).
            x_t: (B, V, P, D) semantic-enhanced tokens (four image levels + text).
        Returns:
            f: (B, V * P, D) aligned tokens, level-major (row v * P + p).
            kl: scalar, 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) over every Gaussian
                parameter of the batch (summed, as published; weight 0 in the paper setting).
        """
        batch, levels, joints, dim = x_p.shape
        mu, logvar = self.gaussian(x_p).chunk(2, dim=-1)  # each (B, V, P, 1 or D)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum()
        shape = (batch, levels, joints, dim)
        noise = self._noise(x_p)
        prompt = mu.expand(shape) if noise is None else mu + torch.exp(0.5 * logvar) * noise
        fused = torch.stack([fusion(torch.cat([x_p[:, v], x_t[:, v]], dim=-1))
                             for v, fusion in enumerate(self.fusion)], dim=1)
        fused = fused.reshape(batch, levels * joints, dim)
        prompt = prompt.reshape(batch, levels * joints, dim)
        return fused + self.cross_attn(fused, prompt), kl
