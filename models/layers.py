"""Transformer pieces shared by the pose network: LayerNorm widths, stochastic depth rates,
DropPath, the MLP, self-attention and the pre-norm block of the lifting transformer."""

import torch
import torch.nn.functional as F
from torch import nn

# LayerNorm eps of the published network (docs/method.md §2): 1e-5 everywhere (PyTorch's default) except
# inside the lifting blocks, which use 1e-6.
LAYER_NORM_EPS = 1e-5
LIFTING_BLOCK_EPS = 1e-6


def drop_path_rates(drop_path, depth):
    """Stochastic-depth rate of each of the `depth` blocks of one stack: linspace(first, last)
    of `drop_path` = (first, last); (0.1, 0.2) over 4 blocks gives 0.1, 0.133, 0.167, 0.2.
    Every stack (spatial, semantic, level lifting, joint lifting) uses the same list."""
    first, last = (float(rate) for rate in drop_path)
    return torch.linspace(first, last, depth, dtype=torch.float64).tolist()


class DropPath(nn.Module):
    """Stochastic depth: in training, zeroes the whole residual branch of a sample with
    probability `rate` and scales the kept ones by 1 / (1 - rate); identity in evaluation."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x):
        """x: (B, ...) residual branch -> same shape."""
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"rate={self.rate}"


class MLP(nn.Module):
    """fc1 Linear(dim -> hidden) -> GELU -> Dropout -> fc2 Linear(hidden -> dim) -> Dropout."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        """x: (..., dim) -> (..., dim)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention: one fused qkv Linear(dim -> 3 dim) with bias, softmax of
    q.k * head_dim^-0.5, heads concatenated, then proj Linear(dim -> dim)."""

    def __init__(self, dim, heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        """x: (B, N, dim) tokens -> (B, N, dim)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, dim/heads)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))


class Block(nn.Module):
    """Pre-norm transformer block of the lifting stacks: x + DropPath(Attn(LN(x))), then
    x + DropPath(MLP(LN(x))); LayerNorm eps `LIFTING_BLOCK_EPS`."""

    def __init__(self, dim, heads, mlp_ratio=2.0, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LIFTING_BLOCK_EPS)
        self.attn = Attention(dim, heads, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LIFTING_BLOCK_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x):
        """x: (B, N, dim) -> (B, N, dim)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_position_table(table):
    """Position tables start from N(0, 0.02) (a plain normal, as published)."""
    with torch.no_grad():
        return nn.init.normal_(table, mean=0.0, std=0.02)
