"""The frozen CLIP text transformer with learnable per-joint prompt tokens (DESIGN 2.2)."""

import functools
import os
import pickle
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

from models.prompts import TEXT_MODES, all_sentences
from utils.errors import MetaPoseError
from utils.skeleton import FIRST_ACTION_ID, NUM_ACTIONS, NUM_JOINTS

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
# Tokenisation of the joint sentences
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tokenizer():
    # Imported lazily: open_clip pulls in timm and costs about 2 s to import.
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer()


def tokenize_prompted(rows, prompt_tokens, context_length=CONTEXT_LENGTH):
    """Token ids of prompted sentences: [SOT, prompt_tokens placeholders, sentence, EOT, 0...].

    rows: list of R lists of 17 sentences. Placeholders are id 0; the encoder replaces their
    embeddings by the learned prompts. Returns (token_ids (R, 17, context_length) long,
    eot_index (R, 17) long). Raises MetaPoseError if a sequence does not fit the context.
    """
    tokenizer = _tokenizer()
    # Built on the CPU explicitly (also under a `with torch.device("meta")` construction).
    token_ids = torch.zeros(len(rows), len(rows[0]), context_length, dtype=torch.long,
                            device="cpu")
    eot_index = torch.zeros(len(rows), len(rows[0]), dtype=torch.long, device="cpu")
    for r, sentences in enumerate(rows):
        for j, sentence in enumerate(sentences):
            words = tokenizer.encode(sentence)
            length = 2 + prompt_tokens + len(words)
            if length > context_length:
                room = context_length - 2 - len(words)
                raise MetaPoseError(
                    f"the text prompt {sentence!r} has {len(words)} tokens; with "
                    f"model.text_encoder.prompt_tokens={prompt_tokens} and the start/end tokens "
                    f"it needs {length} positions, more than CLIP's context of {context_length}. "
                    f"Set model.text_encoder.prompt_tokens to at most {max(room, 0)}.")
            sequence = [tokenizer.sot_token_id] + [0] * prompt_tokens + words
            sequence.append(tokenizer.eot_token_id)
            token_ids[r, j, :length] = torch.tensor(sequence, device="cpu")
            eot_index[r, j] = length - 1
    return token_ids, eot_index


# --------------------------------------------------------------------------------------------
# Prompted encoder
# --------------------------------------------------------------------------------------------

class PromptedTextEncoder(nn.Module):
    """Per-joint text features from a frozen CLIP text tower with learnable prompt tokens.

    Each joint j owns `prompt_tokens` learnable token embeddings (parameter `prompts`,
    (17, prompt_tokens, W)) placed between the start-of-text token and the joint's sentence.
    The CLIP weights (`clip`) are frozen and always in eval mode; only `prompts` trains.
    Token ids are tokenised once into non-persistent buffers (derived from models/prompts.py,
    so they are not stored in checkpoints). `truncate` (run only up to the longest sentence)
    and `cache` (keep the features of no-grad calls until a parameter changes) save time
    without changing the features.
    """

    def __init__(self, width, layers, heads, output_dim, mode="joint_action", prompt_tokens=10,
                 truncate=True, vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH,
                 cache=True):
        super().__init__()
        if mode not in TEXT_MODES:
            raise MetaPoseError(f"model.text_encoder.mode is {mode!r}; use one of "
                                f"{', '.join(TEXT_MODES)}.")
        if int(prompt_tokens) != prompt_tokens or prompt_tokens < 0:
            raise MetaPoseError(f"model.text_encoder.prompt_tokens is {prompt_tokens!r}; use a "
                                "non-negative integer (the paper uses 10).")
        self.mode = mode
        self.prompt_tokens = int(prompt_tokens)
        self.truncate = bool(truncate)
        self.cache = bool(cache)
        self.output_dim = output_dim
        self.clip = CLIPTextTransformer(width, layers, heads, output_dim, vocab_size,
                                        context_length)
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.prompts = nn.Parameter(torch.empty(NUM_JOINTS, self.prompt_tokens, width))

        # Rows: one per action id (row = id - FIRST_ACTION_ID) in joint_action mode; one in joint.
        token_ids, eot_index = tokenize_prompted(all_sentences(mode), self.prompt_tokens,
                                                 context_length)
        self.register_buffer("token_ids", token_ids, persistent=False)   # (R, 17, C)
        self.register_buffer("eot_index", eot_index, persistent=False)   # (R, 17)
        # Sequence length each row needs (plain ints so truncation never syncs with the device).
        self.row_lengths = tuple(int(v) + 1 for v in eot_index.amax(dim=1).tolist())
        self.encoder_runs = 0   # number of transformer passes; read by tests and benchmarks
        # With gradients, encode every action instead of the distinct ones of the batch: None =
        # when the ids are on an accelerator, where finding the distinct ids (torch.unique and
        # reading them back) would wait for the device; a training batch of hundreds of frames
        # holds all 15 actions anyway. The features are the same either way.
        self.encode_all_actions = None
        self._cache = None      # (key, features (R, 17, Dt)) for no-grad calls
        self._watched = None    # parameters whose versions key the cache
        self.reset_prompts()

    def reset_prompts(self):
        """Draws the prompts from N(mean, std) of CLIP's token embedding table, per channel.
        Call after loading CLIP weights (build_text_encoder does)."""
        with torch.no_grad():
            table = self.clip.token_embedding.weight.float()
            mean, std = table.mean(dim=0), table.std(dim=0)  # (W,)
            noise = torch.randn(self.prompts.shape, device=table.device)
            self.prompts.copy_(mean + std * noise)

    def train(self, mode=True):
        """Sets the module's mode; the frozen CLIP tower stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def clear_cache(self):
        self._cache = None

    def _encode_rows(self, rows, length):
        """Features of whole rows of sentences.

        rows: (U,) long row indices into the token buffers, or None for all rows.
        length: number of leading token positions to run (>= every selected EOT index + 1).
        Returns (U, 17, Dt).
        """
        token_ids, eot_index = self.token_ids, self.eot_index
        if rows is not None:
            token_ids, eot_index = token_ids.index_select(0, rows), eot_index.index_select(0, rows)
        token_ids = token_ids[..., :length]
        num_rows, num_joints = token_ids.shape[:2]
        x = self.clip.token_embedding(token_ids)  # (U, 17, L, W)
        prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(num_rows, -1, -1, -1)
        x = torch.cat([x[:, :, :1], prompts, x[:, :, 1 + self.prompt_tokens:]], dim=2)
        x = x + self.clip.positional_embedding[:length]
        features = self.clip.encode_embeddings(x.flatten(0, 1), eot_index.flatten())
        self.encoder_runs += 1
        return features.view(num_rows, num_joints, -1)

    def _sequence_length(self, row_indices):
        if not self.truncate:
            return self.token_ids.shape[-1]
        return max(self.row_lengths[r] for r in row_indices)

    def _cache_key(self):
        # In-place updates (optimizer steps, load_state_dict) bump _version; autocast changes
        # the output dtype. The parameter list is gathered once (walking the module tree costs
        # more than the check) and again after .to()/.half()/.cuda() (see _apply).
        if self._watched is None:
            self._watched = tuple(self.parameters())
        device_type = self.prompts.device.type
        autocast = (torch.is_autocast_enabled(device_type)
                    and torch.get_autocast_dtype(device_type))
        return (autocast,) + tuple((p.data_ptr(), p._version) for p in self._watched)

    def _apply(self, fn, *args, **kwargs):
        self._cache, self._watched = None, None
        return super()._apply(fn, *args, **kwargs)

    def all_features(self):
        """Features of every row, (R, 17, Dt) with R = 15 (joint_action) or 1 (joint), cached:
        recomputed only when a parameter changed since the last call."""
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            rows = range(len(self.row_lengths))
            with torch.no_grad():
                features = self._encode_rows(None, self._sequence_length(rows))
            self._cache = (key, features)
        return self._cache[1]

    def _check_actions(self, action_ids):
        if not isinstance(action_ids, torch.Tensor) or action_ids.dim() != 1 \
                or action_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("action_ids must be a 1-D LongTensor of H36M action ids (2..16)")

    def forward(self, action_ids):
        """Text features of the 17 joints for each action.

        action_ids: (A,) long, H36M action ids 2..16 (ignored in joint mode, only A is used).
        Returns (A, 17, Dt) float, Dt = output_dim, joints in H36M order. In joint mode the A
        rows are one (17, Dt) tensor expanded (a view: do not write into it in place).
        Without gradients to track (no_grad / inference, or frozen prompts) the features of all
        actions are cached until a parameter changes (unless `cache` is off); otherwise only
        the distinct requested actions are encoded, truncated to their longest sentence (on an
        accelerator all actions, see `encode_all_actions`).
        """
        self._check_actions(action_ids)
        num = action_ids.shape[0]
        joint_mode = self.mode == "joint"
        if self.cache and not (torch.is_grad_enabled() and self.prompts.requires_grad):
            features = self.all_features()
            if joint_mode:
                return features.expand(num, -1, -1)
            # index_select rejects negative rows (no silent wrap-around for ids below 2).
            return features.index_select(0, action_ids.long() - FIRST_ACTION_ID)

        if joint_mode:
            return self._encode_rows(None, self._sequence_length([0])).expand(num, -1, -1)
        encode_all = self.encode_all_actions
        if encode_all is None:
            encode_all = action_ids.device.type != "cpu"
        if encode_all:
            features = self._encode_rows(None, self._sequence_length(range(NUM_ACTIONS)))
            return features.index_select(0, action_ids.long() - FIRST_ACTION_ID)
        unique, inverse = torch.unique(action_ids.long(), return_inverse=True)
        rows = (unique - FIRST_ACTION_ID).tolist()  # one device sync per training step
        if rows and (rows[0] < 0 or rows[-1] >= NUM_ACTIONS):
            bad = [r + FIRST_ACTION_ID for r in rows if not 0 <= r < NUM_ACTIONS]
            raise ValueError(f"action ids {bad} are outside the H36M range 2..16")
        features = self._encode_rows(unique - FIRST_ACTION_ID, self._sequence_length(rows))
        return features[inverse]


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


def build_text_encoder(type, pretrained, mode, prompt_tokens, width=None, layers=None,
                       truncate=True, cache=True):
    """Builds the prompted CLIP text encoder.

    type: 'ViT-B/32' or 'ViT-L/14' (model.text_encoder.type).
    pretrained: path to an OpenAI CLIP .pt (TorchScript) or a state dict, or None for a random
        initialisation (warns).
    mode: 'joint' | 'joint_action'; prompt_tokens: learnable tokens per joint.
    width / layers: override the transformer size for tests and CPU demos; then
        heads = max(1, width // 64) and output_dim = width (no pretrained file fits such a model).
    truncate: run the causal encoder only up to the longest requested sentence
        (speed.truncate_text).
    cache: keep the features of no-grad calls (evaluation) until a parameter changes
        (speed.cache_text).
    """
    if type not in CLIP_TEXT_CONFIGS:
        raise MetaPoseError(f"model.text_encoder.type is {type!r}; valid types are "
                            f"{', '.join(CLIP_TEXT_CONFIGS)}.")
    spec = CLIP_TEXT_CONFIGS[type]
    width_value = spec["width"] if width is None else int(width)
    output_dim = spec["output_dim"] if width is None else width_value
    layer_count = spec["layers"] if layers is None else int(layers)
    if width_value < 1 or layer_count < 1:
        raise MetaPoseError(f"model.text_encoder.width ({width}) and layers ({layers}) must be "
                            "positive integers or null.")
    heads = max(1, width_value // HEAD_WIDTH)
    encoder = PromptedTextEncoder(width_value, layer_count, heads, output_dim, mode,
                                  prompt_tokens, truncate, cache=cache)
    if pretrained is None:
        warnings.warn(f"model.text_encoder.pretrained is null: the CLIP text encoder {type} is "
                      "randomly initialised, so its features carry no language knowledge "
                      "(fine for tests and the synthetic demo).", stacklevel=2)
        return encoder
    if not os.path.isfile(pretrained):
        raise MetaPoseError(
            f"CLIP weights '{pretrained}' (model.text_encoder.pretrained) do not exist. Put the "
            f"OpenAI file at data/pretrained/clip/{spec['file']} or set "
            "model.text_encoder.pretrained=null for a random initialisation.")
    load_clip_text_weights(encoder.clip, pretrained, type)
    encoder.reset_prompts()
    return encoder
