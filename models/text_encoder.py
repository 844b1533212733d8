"""Per-joint text features: prompted sentences through the frozen CLIP text tower (docs/method.md §2.2).

Two layouts of the sequence fed to the transformer (`model.text_encoder.layout`, docs/method.md §2.9):

- `published` (the paper configuration): [the P prompts of joint j, then the first 77 - P token
  embeddings of the sentence], read at position argmax(token ids) of the *unshifted* sentence,
  i.e. P positions before the real end-of-text token. Causal attention then means that the
  feature never sees the last P tokens of the sentence (its end-of-text token and the P - 1
  words before it), nor the 77 - P cut (which lies after the read position anyway).
- `sot_first` (corrected): [SOT, the P prompts, words, EOT], read at the real end-of-text token.

The encoder runs the causal tower only up to the longest read position (causal attention: the
positions after it change nothing) and serves calls without gradients from a cache. For tests and
benchmarks, `text_features_reference` is the published way of computing the same features: all
77 positions, encoded again at every call.
"""

import functools
import importlib.util
import os
import warnings

import torch
from torch import nn

from models.clip_text import (CLIP_TEXT_CONFIGS, CONTEXT_LENGTH, HEAD_WIDTH, VOCAB_SIZE,
                              CLIPTextTransformer, QuickGELU, load_clip_text_weights)
from models.prompts import DEFAULT_PROMPTS_FILE, TEXT_MODES, load_prompts
from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path
from utils.skeleton import FIRST_ACTION_ID, JOINT_NAMES, NUM_ACTIONS, NUM_JOINTS

__all__ = ["CLIP_TEXT_CONFIGS", "CLIPTextTransformer", "QuickGELU", "PromptedTextEncoder",
           "TEXT_LAYOUTS", "build_text_encoder", "tokenize_rows", "read_positions",
           "text_features_reference"]

TEXT_LAYOUTS = ("published", "sot_first")


# --------------------------------------------------------------------------------------------
# Tokenisation and read positions
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tokenizer():
    """open_clip's CLIP BPE tokenizer (its vocabulary ships with the package, no download).

    Only its `tokenizer.py` is loaded: importing the `open_clip` package runs its __init__,
    which imports timm, torchvision and every model definition, about 4 s in every process
    (each torchrun rank, every DataLoader-free tool start). The tokenizer module imports nothing
    of the package, so it is loaded from the package's folder on its own; if that ever fails
    (another packaging), the ordinary import is used."""
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "tokenizer.py")
        try:
            module_spec = importlib.util.spec_from_file_location("_metapose_clip_tokenizer",
                                                                 path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.SimpleTokenizer()
        except (ImportError, OSError, AttributeError):
            pass
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer()


def _where(label, joint, source):
    row = f"action {label}" if label is not None else "the joint mode"
    return f"the sentence of {row}, joint {joint} ({JOINT_NAMES[joint]}) of '{source}'"


def tokenize_rows(labels, rows, source, context_length=CONTEXT_LENGTH):
    """CLIP token ids of every sentence, as CLIP's tokenizer gives them: [SOT, words, EOT, 0...].

    labels: R row labels (action names; None in joint mode), for messages.
    rows: R lists of 17 sentences (H36M joint order). source: the prompts file, for messages.
    Returns (R, 17, context_length) long, on the CPU. A sentence of more than context_length
    tokens is refused (CLIP's own tokenizer refuses it too) with a MetaPoseError naming it.
    """
    tokenizer = _tokenizer()
    # Built on the CPU explicitly (also under a `with torch.device("meta")` construction).
    token_ids = torch.zeros(len(rows), NUM_JOINTS, context_length, dtype=torch.long, device="cpu")
    for r, sentences in enumerate(rows):
        for j, sentence in enumerate(sentences):
            sequence = [tokenizer.sot_token_id] + tokenizer.encode(sentence)
            sequence.append(tokenizer.eot_token_id)
            if len(sequence) > context_length:
                raise MetaPoseError(
                    f"{_where(labels[r], j, source)} is {len(sequence)} tokens long with its "
                    f"start and end tokens, more than CLIP's context of {context_length}: "
                    f"{sentence!r}. Shorten the template or that description.")
            token_ids[r, j, :len(sequence)] = torch.tensor(sequence, device="cpu")
    return token_ids


def read_positions(token_ids, labels, layout, prompt_tokens, source):
    """Position of each feature in the sequence fed to the transformer, (R, 17) long.

    published: the end-of-text index of the unshifted sentence (argmax of its ids);
    sot_first: that index + prompt_tokens (the real end-of-text token), which must fit in the
    context: a sentence that does not is a MetaPoseError naming it and the largest prompt count
    that fits.
    """
    end_of_text = token_ids.argmax(dim=-1)  # the end-of-text id is the largest id
    if layout == "published":
        return end_of_text
    if layout != "sot_first":
        raise MetaPoseError(f"model.text_encoder.layout is {layout!r}; use one of "
                            f"{', '.join(TEXT_LAYOUTS)}.")
    context_length = token_ids.shape[-1]
    positions = end_of_text + prompt_tokens
    too_long = (positions >= context_length).nonzero().tolist()
    if too_long:
        r, j = too_long[0]
        longest = int(end_of_text.max()) + 1
        raise MetaPoseError(
            f"{_where(labels[r], j, source)} has {int(end_of_text[r, j]) + 1} tokens; with "
            f"model.text_encoder.prompt_tokens={prompt_tokens} placed after its start token it "
            f"needs {int(positions[r, j]) + 1} positions, more than CLIP's context of "
            f"{context_length} ({len(too_long)} sentence(s) do not fit). Set prompt_tokens to at "
            f"most {context_length - longest} or shorten the sentences.")
    return positions


# --------------------------------------------------------------------------------------------
# Prompted encoder
# --------------------------------------------------------------------------------------------

class PromptedTextEncoder(nn.Module):
    """Per-joint text features from a frozen CLIP text tower with learnable prompt tokens.

    `prompts` is ONE parameter of shape (17 * prompt_tokens, W): rows P*j .. P*j + P - 1 belong
    to joint j (the published `learnable_prompts` layout, so a published checkpoint converts by a
    rename). With `train_prompts` False (published) it has requires_grad False and the features
    of every action are constants, served from the cache at every step. The CLIP weights
    (`clip`) are frozen and always in eval mode. Token ids are tokenised once from the prompts
    file into non-persistent buffers (not stored in checkpoints). The tower runs only up to the
    longest read position of the rows it encodes, and the features of calls without gradients
    are kept until a parameter changes: both save time without changing the features
    (`text_features_reference` computes them the plain way).

    texts: a models.prompts.Prompts (None: the default prompts file). layout: 'published' |
    'sot_first' (module docstring). train_prompts defaults to True for the bare module;
    build_text_encoder (and so the config, model.text_encoder.train_prompts) defaults to the
    published False.
    """

    def __init__(self, width, layers, heads, output_dim, mode="joint_action", prompt_tokens=10,
                 vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH, layout="published",
                 train_prompts=True, texts=None):
        super().__init__()
        if mode not in TEXT_MODES:
            raise MetaPoseError(f"model.text_encoder.mode is {mode!r}; use one of "
                                f"{', '.join(TEXT_MODES)}.")
        if layout not in TEXT_LAYOUTS:
            raise MetaPoseError(f"model.text_encoder.layout is {layout!r}; use one of "
                                f"{', '.join(TEXT_LAYOUTS)}.")
        if isinstance(prompt_tokens, bool) or int(prompt_tokens) != prompt_tokens \
                or prompt_tokens < 0:
            raise MetaPoseError(f"model.text_encoder.prompt_tokens is {prompt_tokens!r}; use a "
                                "non-negative integer (the paper uses 10).")
        self.mode, self.layout = mode, layout
        self.prompt_tokens = int(prompt_tokens)
        self.insert_at = 0 if layout == "published" else 1  # where the prompts enter the sentence
        self.output_dim = output_dim
        self.clip = CLIPTextTransformer(width, layers, heads, output_dim, vocab_size,
                                        context_length)
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.prompts = nn.Parameter(torch.empty(NUM_JOINTS * self.prompt_tokens, width),
                                    requires_grad=bool(train_prompts))

        # Rows: one per action id (row = id - FIRST_ACTION_ID) in joint_action mode; one in joint.
        texts = load_prompts() if texts is None else texts
        labels, rows = texts.rows(mode)
        token_ids = tokenize_rows(labels, rows, texts.path, context_length)
        read_index = read_positions(token_ids, labels, layout, self.prompt_tokens, texts.path)
        self._warn_unread_sentences(read_index, texts.path)
        self.register_buffer("token_ids", token_ids, persistent=False)    # (R, 17, C)
        self.register_buffer("read_index", read_index, persistent=False)  # (R, 17)
        # Sequence length each row needs (plain ints so truncation never syncs with the device).
        self.row_lengths = tuple(int(v) + 1 for v in read_index.amax(dim=1).tolist())
        self.encoder_runs = 0   # number of transformer passes; read by tests and benchmarks
        # With gradients, encode every action instead of the distinct ones of the batch: None =
        # when the ids are on an accelerator, where finding the distinct ids (torch.unique and
        # reading them back) would wait for the device; a training batch of hundreds of frames
        # holds all 15 actions anyway. The features are the same either way.
        self.encode_all_actions = None
        self._cache = None      # (key, features (R, 17, Dt)) for calls without gradients
        self._watched = None    # parameters whose versions key the cache
        self.reset_prompts()

    def _warn_unread_sentences(self, read_index, source):
        """Published layout: a sentence of at most P tokens is read on a prompt position, so its
        feature does not depend on its words at all (the published joint mode, whose sentence
        is the joint name alone, is such a case)."""
        if self.layout != "published" or not self.prompt_tokens:
            return
        unread = int((read_index < self.prompt_tokens).sum())
        if unread:
            warnings.warn(
                f"model.text_encoder.layout=published: {unread} of {read_index.numel()} "
                f"sentences of '{source}' ({self.mode} mode) are at most {self.prompt_tokens} "
                "tokens long, so their features are read on a prompt and do not depend on their "
                "words (the published computation). Use layout=sot_first to read every word.",
                stacklevel=3)

    def reset_prompts(self):
        """Draws the prompts from N(mean, std) with the two scalars mean and std of CLIP's whole
        token-embedding table (as published). Call after loading CLIP weights
        (build_text_encoder does)."""
        with torch.no_grad():
            table = self.clip.token_embedding.weight.float()
            mean, std = table.mean(), table.std()
            noise = torch.randn(self.prompts.shape, device=table.device)
            self.prompts.copy_(noise * std + mean)

    def joint_prompts(self):
        """The prompts as (17, prompt_tokens, W): [j] are joint j's."""
        return self.prompts.view(NUM_JOINTS, self.prompt_tokens, -1)

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
        length: number of leading sequence positions to run (> every selected read index).
        Returns (U, 17, Dt).
        """
        token_ids, read_index = self.token_ids, self.read_index
        if rows is not None:
            token_ids = token_ids.index_select(0, rows)
            read_index = read_index.index_select(0, rows)
        num_rows = token_ids.shape[0]
        # Sequence position p >= insert_at + P holds sentence token p - P: tokens at or after
        # `length` can never enter the first `length` positions.
        tokens = self.clip.token_embedding(token_ids[..., :length])  # (U, 17, <=L, W)
        prompts = self.joint_prompts().to(tokens.dtype).expand(num_rows, -1, -1, -1)
        at = self.insert_at
        x = torch.cat([tokens[:, :, :at], prompts, tokens[:, :, at:]], dim=2)[:, :, :length]
        x = x + self.clip.positional_embedding[:length]
        features = self.clip.encode_embeddings(x.flatten(0, 1), read_index.flatten())
        self.encoder_runs += 1
        return features.view(num_rows, NUM_JOINTS, -1)

    def sequence_length(self, row_indices):
        """Positions the tower runs for these rows: the longest read position + 1 (causal
        attention: what follows a read position never reaches it)."""
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
                features = self._encode_rows(None, self.sequence_length(rows))
            self._cache = (key, features)
        return self._cache[1]

    def _check_actions(self, action_ids):
        if not isinstance(action_ids, torch.Tensor) or action_ids.dim() != 1 \
                or action_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("action_ids must be a 1-D LongTensor of H36M action ids (2..16)")

    def _distinct_rows(self, action_ids):
        """(rows (U,) long, the same as a list, inverse (A,) long): the rows of the distinct
        actions in `action_ids` (one device sync) and, for each sample, its entry in them. Ids
        outside 2..16 are a ValueError."""
        unique, inverse = torch.unique(action_ids.long(), return_inverse=True)
        rows = unique - FIRST_ACTION_ID
        listed = rows.tolist()
        if listed and (listed[0] < 0 or listed[-1] >= NUM_ACTIONS):
            bad = [r + FIRST_ACTION_ID for r in listed if not 0 <= r < NUM_ACTIONS]
            raise ValueError(f"action ids {bad} are outside the H36M range 2..16")
        return rows, listed, inverse

    def forward(self, action_ids):
        """Text features of the 17 joints for each action.

        action_ids: (A,) long, H36M action ids 2..16 (ignored in joint mode, only A is used).
        Returns (A, 17, Dt) float, Dt = output_dim, joints in H36M order. In joint mode the A
        rows are one (17, Dt) tensor expanded (a view: do not write into it in place).
        Without gradients to track (no_grad / inference, or frozen prompts) the features of all
        actions are cached until a parameter changes; otherwise only the distinct requested
        actions are encoded, truncated to their longest sentence (on an accelerator all actions,
        see `encode_all_actions`).
        """
        self._check_actions(action_ids)
        num = action_ids.shape[0]
        joint_mode = self.mode == "joint"
        if not (torch.is_grad_enabled() and self.prompts.requires_grad):
            features = self.all_features()
            if joint_mode:
                return features.expand(num, -1, -1)
            # index_select rejects negative rows (no silent wrap-around for ids below 2).
            return features.index_select(0, action_ids.long() - FIRST_ACTION_ID)

        if joint_mode:
            return self._encode_rows(None, self.sequence_length([0])).expand(num, -1, -1)
        encode_all = self.encode_all_actions
        if encode_all is None:
            encode_all = action_ids.device.type != "cpu"
        if encode_all:
            features = self._encode_rows(None, self.sequence_length(range(NUM_ACTIONS)))
            return features.index_select(0, action_ids.long() - FIRST_ACTION_ID)
        rows, listed, inverse = self._distinct_rows(action_ids)  # one device sync per step
        return self._encode_rows(rows, self.sequence_length(listed))[inverse]


def text_features_reference(encoder, action_ids):
    """What `encoder(action_ids)` returns, computed the published way: the sentences of the
    batch's distinct actions (the one joint-mode row) through all positions of CLIP's context,
    encoded again at every call (no cache, no truncation), with gradients wherever the encoder's
    own call has them. For tests and benchmarks, which compare the encoder's fast path with it;
    the encoder never runs it itself."""
    encoder._check_actions(action_ids)
    full = encoder.token_ids.shape[-1]
    if encoder.mode == "joint":
        return encoder._encode_rows(None, full).expand(action_ids.shape[0], -1, -1)
    rows, _, inverse = encoder._distinct_rows(action_ids)
    return encoder._encode_rows(rows, full)[inverse]


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------

def build_text_encoder(type, pretrained, mode, prompt_tokens, width=None, layers=None,
                       layout="published", train_prompts=False, prompts=DEFAULT_PROMPTS_FILE,
                       weights_from_checkpoint=False):
    """Builds the prompted CLIP text encoder.

    type: 'ViT-B/32' or 'ViT-L/14' (model.text_encoder.type).
    pretrained: path to an OpenAI CLIP .pt (TorchScript) or a state dict, or None for a random
        initialisation (warns).
    mode: 'joint' | 'joint_action'; prompt_tokens: learnable tokens per joint.
    width / layers: override the transformer size for tests and CPU demos; then
        heads = max(1, width // 64) and output_dim = width (no pretrained file fits such a model).
    layout: 'published' | 'sot_first' (model.text_encoder.layout).
    train_prompts: whether the prompts are trained (model.text_encoder.train_prompts; False as
        published: they keep their initial values and are not in the optimiser).
    prompts: path of the prompts file (model.text_encoder.prompts).
    weights_from_checkpoint: the CLIP weights and the prompts will be loaded from a checkpoint:
        `pretrained` is not read (it need not exist) and no random-initialisation warning.
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
    texts = load_prompts(prompts)
    encoder = PromptedTextEncoder(width_value, layer_count, heads, output_dim, mode,
                                  prompt_tokens, layout=layout, train_prompts=train_prompts,
                                  texts=texts)
    if weights_from_checkpoint:
        return encoder
    if pretrained is None:
        warnings.warn(f"model.text_encoder.pretrained is null: the CLIP text encoder {type} is "
                      "randomly initialised, so its features carry no language knowledge "
                      "(fine for tests and the synthetic demo).", stacklevel=2)
        return encoder
    problem = file_problem(pretrained)
    if problem is not None:
        raise MetaPoseError(
            f"CLIP weights '{shown_path(pretrained)}' (model.text_encoder.pretrained) {problem}. "
            f"Put the OpenAI file at data/pretrained/clip/{spec['file']} or set "
            "model.text_encoder.pretrained=null for a random initialisation.")
    load_clip_text_weights(encoder.clip, pretrained, type)
    encoder.reset_prompts()
    return encoder
