"""OpenAI CLIP's text tower (state-dict keys of OpenAI's checkpoints) and reading its weights
from OpenAI's published files or from state dicts (docs/method.md §2.2)."""

import os
import pickle
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import MetaPoseError

VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
HEAD_WIDTH = 64  # CLIP text towers use 64 channels per attention head

# The text towers of the OpenAI CLIP models: transformer width, depth, projected feature size,
# and the file name OpenAI publishes (looked for under data/pretrained/clip/).
CLIP_TEXT_CONFIGS = {
    "ViT-B/32": {"width": 512, "layers": 12, "output_dim": 512, "file": "ViT-B-32.pt"},
    "ViT-L/14": {"width": 768, "layers": 12, "output_dim": 768, "file": "ViT-L-14.pt"},
}


# --------------------------------------------------------------------------------------------
# CLIP text transformer (state_dict keys = the text part of OpenAI's CLIP checkpoints)
# --------------------------------------------------------------------------------------------

class QuickGELU(nn.Module):
    """The GELU approximation x * sigmoid(1.702 x) that OpenAI CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with nn.MultiheadAttention's parameter names
    (in_proj_weight, in_proj_bias, out_proj), computed with fused scaled_dot_product_attention."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x):
        """x: (N, L, W) tokens -> (N, L, W); token i attends to tokens 0..i only."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # (N, L, 3W) -> (3, N, heads, L, W / heads)
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """CLIP's feed-forward layer: c_fc (W -> 4W), QuickGELU, c_proj (4W -> W)."""

    def __init__(self, width):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = CLIPMLP(width)

    def forward(self, x):
        """x: (N, L, W) -> (N, L, W)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CLIPTransformer(nn.Module):
    """A stack of `layers` causal residual attention blocks (keys transformer.resblocks.{i}.*)."""

    def __init__(self, width, layers, heads):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x):
        """x: (N, L, W) -> (N, L, W)."""
        for block in self.resblocks:
            x = block(x)
        return x


class CLIPTextTransformer(nn.Module):
    """The text tower of CLIP. Its state_dict keys are exactly those of the text part of an
    OpenAI CLIP checkpoint: token_embedding.weight, positional_embedding,
    transformer.resblocks.{i}.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj},
    ln_final, text_projection (W, output_dim; features are x @ text_projection)."""

    def __init__(self, width, layers, heads, output_dim, vocab_size=VOCAB_SIZE,
                 context_length=CONTEXT_LENGTH):
        super().__init__()
        if width % heads:
            raise MetaPoseError(f"CLIP text width {width} is not divisible by its {heads} "
                                "attention heads; choose a width that is a multiple of 64 "
                                "(or below 64).")
        self.width = width
        self.output_dim = output_dim
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = CLIPTransformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.reset_parameters()

    def reset_parameters(self):
        """CLIP's random initialisation (used when no pretrained file is given)."""
        width, layers = self.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width ** -0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)
        nn.init.normal_(self.text_projection, std=attn_std)

    def encode_embeddings(self, x, eot_index):
        """Runs the transformer on already embedded tokens.

        x: (N, L, W) token embeddings plus positional embedding, L <= context_length.
        eot_index: (N,) long, position of the end-of-text token of each sequence (< L).
        Returns (N, output_dim) features read at the end-of-text tokens.
        """
        x = self.transformer(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]  # (N, W)
        return self.ln_final(x) @ self.text_projection

    def forward(self, token_ids):
        """Plain CLIP encode_text. token_ids: (N, L) long, L <= context_length, zero-padded, the
        end-of-text token (the largest id) ends each sequence. Returns (N, output_dim)."""
        x = self.token_embedding(token_ids) + self.positional_embedding[:token_ids.shape[1]]
        return self.encode_embeddings(x, token_ids.argmax(dim=-1))


# --------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------

def _is_torchscript_archive(path):
    """TorchScript archives (OpenAI's published CLIP .pt files) are zips holding code/ and
    constants.pkl; torch.save files hold data.pkl only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def read_clip_state_dict(path):
    """The state dict stored in a CLIP checkpoint: an OpenAI TorchScript archive, a plain
    state dict, or a training checkpoint with a 'state_dict' entry ('module.' prefixes removed)."""
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(path, map_location="cpu").state_dict()
        except (RuntimeError, ValueError) as error:
            raise MetaPoseError(f"CLIP checkpoint '{path}' looks like a TorchScript archive but "
                                f"cannot be loaded ({str(error).splitlines()[0]}). Download the "
                                "file again.") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        raise MetaPoseError(
            f"CLIP checkpoint '{path}' cannot be read as a PyTorch file "
            f"({str(error).splitlines()[0]}). Use OpenAI's published .pt file or a file saved "
            "with torch.save(model.state_dict()).") from None
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict):
        raise MetaPoseError(f"CLIP checkpoint '{path}' holds a {type(content).__name__}, not a "
                            "state dict; save it with torch.save(model.state_dict()).")
    return {(key[len("module."):] if key.startswith("module.") else key): value
            for key, value in content.items()}


def load_clip_text_weights(clip, path, type_name):
    """Copies the text-tower weights stored in `path` into `clip` (a CLIPTextTransformer).
    Other keys (visual.*, logit_scale, ...) are ignored. Raises MetaPoseError naming the file,
    the first missing or mis-shaped key and both shapes."""
    state = read_clip_state_dict(path)
    expected = clip.state_dict()
    for key, target in expected.items():
        if key not in state:
            raise MetaPoseError(
                f"CLIP checkpoint '{path}' has no text-encoder key '{key}' (it holds "
                f"{len(state)} keys). Use the OpenAI CLIP file for {type_name} "
                f"(e.g. data/pretrained/clip/{CLIP_TEXT_CONFIGS[type_name]['file']}).")
        if not isinstance(state[key], torch.Tensor) or state[key].shape != target.shape:
            found = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else state[key]
            raise MetaPoseError(
                f"CLIP checkpoint '{path}': key '{key}' has shape {found} but "
                f"model.text_encoder.type {type_name} needs {tuple(target.shape)}. The file is "
                "probably for another CLIP model; match model.text_encoder.type to the file.")
    clip.load_state_dict({key: state[key] for key in expected}, strict=True)
