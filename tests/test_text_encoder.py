"""Tests of the prompted CLIP text encoder: both layouts against a plain full-length run written
here, its truncated and cached path against the reference function (text_features_reference:
all 77 positions at every call), caching, frozen and trained prompts, initialisation, errors,
loading."""

import functools
import time
import warnings

import pytest
import torch
from torch import nn

from models.text_encoder import (CLIP_TEXT_CONFIGS, CLIPTextTransformer, PromptedTextEncoder,
                                 QuickGELU, build_text_encoder, text_features_reference)
from tests.placeholder_prompts import placeholder_content, placeholder_prompts, write_prompts_file
from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, NUM_JOINTS

SOT, EOT = 49406, 49407


def tiny(mode="joint_action", prompt_tokens=3, width=32, heads=1, layers=1, output_dim=24,
         layout="published", train_prompts=True, texts=None):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short placeholder sentences read on prompts
        return PromptedTextEncoder(width, layers, heads, output_dim, mode, prompt_tokens,
                                   layout=layout, train_prompts=train_prompts,
                                   texts=texts if texts is not None else placeholder_prompts())


def text_param_count(width, layers, output_dim, vocab=49408, context=77):
    per_block = 12 * width * width + 13 * width  # qkv, out, fc, proj weights + biases + 2 LNs
    return vocab * width + context * width + layers * per_block + 2 * width + width * output_dim


# ------------------------------------------------------------------------------ layout, shapes

def test_token_ids_are_plain_clip_tokens_and_read_positions_follow_the_layout():
    from open_clip.tokenizer import SimpleTokenizer

    texts = placeholder_prompts()
    published = tiny(prompt_tokens=4, texts=texts)
    ids = published.token_ids
    assert ids.shape == (len(ACTION_IDS), NUM_JOINTS, 77)
    labels, rows = texts.rows("joint_action")
    expected = SimpleTokenizer()(rows[5])  # CLIP's own tokenisation of action row 5
    assert torch.equal(ids[5], expected)
    end = ids.argmax(-1)
    assert (ids[..., 0] == SOT).all() and (ids.gather(2, end.unsqueeze(-1)) == EOT).all()
    assert torch.equal(published.read_index, end)  # the unshifted end-of-text index
    sot_first = tiny(prompt_tokens=4, layout="sot_first", texts=texts)
    assert torch.equal(sot_first.token_ids, ids)
    assert torch.equal(sot_first.read_index, end + 4)  # the real end-of-text position
    assert sot_first.row_lengths == tuple((end.amax(1) + 5).tolist())
    assert not torch.equal(ids[0], ids[1])  # rows differ between actions
    assert tiny(mode="joint").token_ids.shape == (1, 17, 77)
    # Token buffers are derived data: not in the state dict; prompts are one flat tensor.
    clip_keys = {"clip." + key for key in published.clip.state_dict()}
    assert set(published.state_dict()) == {"prompts"} | clip_keys
    assert published.prompts.shape == (17 * 4, 32)
    assert torch.equal(published.joint_prompts()[3], published.prompts[12:16])


def test_forward_shapes_and_modes():
    encoder = tiny().train()
    actions = torch.tensor([2, 16, 2, 9])
    out = encoder(actions)
    assert out.shape == (4, 17, 24) and out.dtype == torch.float32 and encoder.output_dim == 24
    assert torch.equal(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    assert encoder.encoder_runs == 1  # distinct actions encoded once
    # Each sample gets the features of its own action, whatever the batch order (the published
    # code builds distinct action i's sentence with the name of sample i: never here).
    reordered = encoder(torch.tensor([9, 2, 16]))
    torch.testing.assert_close(reordered, out[[3, 0, 1]], rtol=0, atol=0)

    joint = tiny(mode="joint").train()
    out = joint(actions)
    assert out.shape == (4, 17, 24)
    assert torch.equal(out[0], out[3]) and torch.equal(out[1], out[2])
    assert not torch.allclose(out[0, 0], out[0, 1])  # joints differ


def test_invalid_action_ids():
    encoder = tiny().train()
    with pytest.raises(ValueError, match="2..16"):
        encoder(torch.tensor([1, 3]))
    with pytest.raises((IndexError, RuntimeError)):
        with torch.no_grad():
            encoder(torch.tensor([0, 3]))
    with pytest.raises(TypeError):
        encoder(torch.tensor([2.0]))


# ------------------------------------------------------------ plain full-length reference run

def open_clip_reference(width=32, heads=2, layers=2, output_dim=24):
    from open_clip.transformer import QuickGELU as OpenClipQuickGELU
    from open_clip.transformer import TextTransformer

    torch.manual_seed(1)
    reference = TextTransformer(width=width, heads=heads, layers=layers, output_dim=output_dim,
                                act_layer=OpenClipQuickGELU).double().eval()
    with torch.no_grad():  # non-zero biases and LN affines so every parameter matters
        for name, param in reference.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                param.add_(0.1 * torch.randn_like(param))
    return reference


def plain_full_run(reference, sentences, prompts, layout):
    """The published / corrected text path written out literally: CLIP's 77 tokens of each
    sentence, the joint's prompts placed before (published) or after the start token
    (sot_first), the whole 77-position sequence through open_clip's transformer, read at the
    unshifted (published) or real (sot_first) end of text. sentences: 17 strings; prompts
    (17, P, W). Returns (17, output_dim)."""
    from open_clip.tokenizer import SimpleTokenizer

    ids = SimpleTokenizer()(sentences)  # (17, 77)
    count = prompts.shape[1]
    embedded = reference.token_embedding(ids)
    if layout == "published":
        x = torch.cat([prompts, embedded[:, :77 - count]], dim=1)
        read = ids.argmax(-1)
    else:
        x = torch.cat([embedded[:, :1], prompts, embedded[:, 1:77 - count]], dim=1)
        read = ids.argmax(-1) + count
    x = reference.transformer(x + reference.positional_embedding, attn_mask=reference.attn_mask)
    return reference.ln_final(x)[torch.arange(17), read] @ reference.text_projection


@pytest.mark.parametrize("layout", ["published", "sot_first"])
@pytest.mark.parametrize("mode", ["joint", "joint_action"])
def test_truncated_and_cached_features_equal_the_plain_full_run(layout, mode):
    """float64: trained prompts (autograd path, features and prompt gradients) and frozen
    prompts (cached path), the encoder's truncated path and the full-length reference function,
    against plain_full_run."""
    reference = open_clip_reference()
    texts = placeholder_prompts()
    labels, rows = texts.rows(mode)
    actions = torch.tensor([2, 16, 9, 2]) if mode == "joint_action" else torch.tensor([2, 2])
    picked = actions - 2 if mode == "joint_action" else torch.zeros(2, dtype=torch.long)
    count = 8 if mode == "joint" else 3  # joint mode: short sentences read on prompts
    for train_prompts in (True, False):
        encoder = tiny(mode, count, width=32, heads=2, layers=2, layout=layout,
                       train_prompts=train_prompts, texts=texts).double()
        encoder.clip.load_state_dict(reference.state_dict())
        encoder.reset_prompts()
        if layout == "published" and mode == "joint":
            assert (encoder.read_index < count).all()  # the feature sits on a prompt
        if layout == "published" and mode == "joint_action":
            assert (encoder.read_index >= count).all()
        assert max(encoder.row_lengths) < 77 and encoder.prompts.requires_grad == train_prompts

        prompts = encoder.joint_prompts().detach().clone().requires_grad_(True)
        expected = torch.stack([plain_full_run(reference, rows[r], prompts, layout)
                                for r in picked.tolist()])
        weights = torch.randn(expected.shape, dtype=torch.float64)
        (expected * weights).sum().backward()
        for path in (encoder, functools.partial(text_features_reference, encoder)):
            encoder.clear_cache()
            encoder.train()
            features = path(actions)
            torch.testing.assert_close(features, expected.detach(), rtol=1e-12, atol=1e-12)
            if train_prompts:
                encoder.prompts.grad = None
                (features * weights).sum().backward()
                torch.testing.assert_close(encoder.prompts.grad.view_as(prompts), prompts.grad,
                                           rtol=1e-10, atol=1e-12)
            else:
                assert not features.requires_grad
            with torch.no_grad():
                torch.testing.assert_close(path(actions), expected.detach(),
                                           rtol=1e-12, atol=1e-12)
        error = (encoder(actions) - expected).abs().max().item()
        print(f"{layout} {mode} train_prompts={train_prompts}: max |cached - full run| {error:.1e}")


def test_matches_open_clip_text_transformer():
    """Our CLIP tower equals open_clip's (OpenAI layout, QuickGELU) on plain token ids."""
    from open_clip.tokenizer import SimpleTokenizer

    reference = open_clip_reference(width=128, heads=2, layers=2, output_dim=48)
    ours = CLIPTextTransformer(width=128, layers=2, heads=2, output_dim=48).double()
    ours.load_state_dict(reference.state_dict(), strict=True)  # identical key layout
    tokens = SimpleTokenizer()(["a person's left wrist.", "a photo of a dog walking on a leash"])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours(tokens[:, :20]), reference(tokens),
                                   rtol=1e-12, atol=1e-12)  # causal: padding never matters


def test_float32_truncation_matches_full_context():
    for layout in ("published", "sot_first"):
        encoder = tiny(layers=2, output_dim=32, layout=layout).eval()
        assert max(encoder.row_lengths) < 77  # the encoder's path really is truncated
        with torch.no_grad():
            truncated = encoder(torch.tensor(ACTION_IDS)).clone()
            full = text_features_reference(encoder, torch.tensor(ACTION_IDS))
        torch.testing.assert_close(truncated, full, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ caching

def test_cache_reused_in_eval_and_refreshed_after_optimizer_step():
    encoder = tiny()
    optimizer = torch.optim.SGD([encoder.prompts], lr=10.0)
    actions = torch.tensor([3, 3, 10])

    encoder.eval()
    with torch.no_grad():
        first = encoder(actions)
        runs = encoder.encoder_runs
        again = encoder(torch.tensor([10, 3, 3, 2]))
        assert encoder.encoder_runs == runs == 1  # all 15 actions encoded once, then reused
    with torch.inference_mode():
        encoder(actions)
    assert encoder.encoder_runs == 1
    torch.testing.assert_close(again[0], first[2])

    # A training step: gradients flow (no cache), the optimizer updates the prompts in place.
    encoder.train()
    loss = encoder(actions).square().mean()
    assert encoder.encoder_runs == 2
    loss.backward()
    optimizer.step()

    encoder.eval()
    with torch.no_grad():
        after = encoder(actions)
        assert encoder.encoder_runs == 3
        encoder(actions)
        assert encoder.encoder_runs == 3
    assert not torch.allclose(after, first)

    # Autocast changes the cache key (and the output dtype).
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder(actions).dtype == torch.bfloat16
    with torch.no_grad():
        assert encoder(actions).dtype == torch.float32
    assert encoder.encoder_runs == 5


def test_frozen_prompts_serve_training_steps_from_the_cache_until_they_change():
    encoder = tiny(train_prompts=False).train()
    assert [name for name, p in encoder.named_parameters() if p.requires_grad] == []
    first = encoder(torch.tensor([2, 5]))
    for _ in range(3):
        torch.testing.assert_close(encoder(torch.tensor([5, 7, 2]))[[2, 0]], first,
                                   rtol=0, atol=0)
    assert encoder.encoder_runs == 1 and not first.requires_grad
    with torch.no_grad():  # a change of the prompts (e.g. loading a checkpoint) recomputes
        encoder.prompts.add_(0.5)
    changed = encoder(torch.tensor([2, 5]))
    assert encoder.encoder_runs == 2 and not torch.allclose(changed, first)
    encoder.prompts.data = torch.randn_like(encoder.prompts)  # a new tensor: recomputed too
    encoder(torch.tensor([2]))
    assert encoder.encoder_runs == 3


def test_cache_follows_load_state_dict_and_dtype():
    encoder = tiny(mode="joint").eval()
    other = tiny(mode="joint")
    with torch.no_grad():
        other.prompts.add_(1.0)
        before = encoder(torch.tensor([2]))
        encoder.load_state_dict(other.state_dict())
        after = encoder(torch.tensor([2]))
        assert not torch.allclose(before, after)
        assert encoder.double()(torch.tensor([2])).dtype == torch.float64
    assert encoder.encoder_runs == 3


# ------------------------------------------------------------------------------ gradients

def test_trained_prompts_are_the_only_parameters_with_gradients():
    encoder = tiny(train_prompts=True).train()
    assert not encoder.clip.training  # frozen tower stays in eval mode
    assert [name for name, p in encoder.named_parameters() if p.requires_grad] == ["prompts"]
    encoder(torch.tensor([2, 7, 7])).square().sum().backward()
    grad = encoder.prompts.grad.view(17, 3, 32)
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()  # every joint's prompts get a gradient
    assert all(p.grad is None for p in encoder.clip.parameters())

    joint = tiny(mode="joint", layout="sot_first").train()
    joint(torch.tensor([2, 3])).sum().backward()
    assert (joint.prompts.grad.view(17, -1).abs().sum(dim=1) > 0).all()


def test_prompt_initialisation_uses_the_two_scalars_of_the_token_table():
    encoder = tiny(prompt_tokens=10)
    with torch.no_grad():  # channels with very different means and spreads
        channel_mean = torch.linspace(-3.0, 3.0, 32)
        channel_std = torch.linspace(0.1, 2.0, 32)
        table = encoder.clip.token_embedding.weight
        table.copy_(torch.randn_like(table) * channel_std + channel_mean)
    encoder.reset_prompts()
    prompts = encoder.prompts
    assert prompts.shape == (170, 32)
    assert abs(prompts.mean().item() - table.mean().item()) < 0.05
    assert abs(prompts.std().item() / table.std().item() - 1) < 0.05
    # One scalar mean for every channel: the prompts do not follow the per-channel means.
    per_channel = prompts.mean(dim=0)
    assert per_channel.std() < 0.5 and channel_mean.std() > 1.5


# ------------------------------------------------------------------------------ sentences

def test_sentences_that_do_not_fit_name_the_action_and_the_joint():
    long = placeholder_content()
    long["descriptions"]["Walking"] = " ".join(["word"] * 80)
    with pytest.raises(MetaPoseError, match=r"action Walking, joint 0 \(pelvis\).*Shorten"):
        tiny(texts=placeholder_prompts_from(long))
    medium = placeholder_content()
    medium["descriptions"]["Smoking"] = " ".join(["word"] * 60)  # fits 77, not with 20 prompts
    tiny(prompt_tokens=20, texts=placeholder_prompts_from(medium))  # published: the cut is unread
    with pytest.raises(MetaPoseError, match=r"action Smoking, joint 0 .*prompt_tokens to at most"):
        tiny(prompt_tokens=20, layout="sot_first", texts=placeholder_prompts_from(medium))


def placeholder_prompts_from(content):
    from models.prompts import parse_prompts
    return parse_prompts(content, "<test prompts>")


def test_published_layout_warns_when_sentences_are_read_on_prompts():
    with pytest.warns(UserWarning, match=r"17 of 17 sentences .* read on a prompt"):
        PromptedTextEncoder(32, 1, 1, 24, "joint", 8, texts=placeholder_prompts())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PromptedTextEncoder(32, 1, 1, 24, "joint", 8, layout="sot_first",
                            texts=placeholder_prompts())


# ------------------------------------------------------------------------------ builder

def test_builder_errors_and_random_init_warning(tmp_path):
    with pytest.raises(MetaPoseError, match="ViT-B/32, ViT-L/14"):
        build_text_encoder("RN50", None, "joint", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match="joint, joint_action"):
        build_text_encoder("ViT-B/32", None, "action", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match="published, sot_first"):
        build_text_encoder("ViT-B/32", None, "joint", 2, width=32, layers=1, layout="middle")
    with pytest.raises(MetaPoseError, match=r"data/pretrained/clip/ViT-B-32\.pt.*pretrained=null"):
        build_text_encoder("ViT-B/32", str(tmp_path / "nope.pt"), "joint", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match=r"data/pretrained/clip/ViT-L-14\.pt"):
        build_text_encoder("ViT-L/14", str(tmp_path / "nope.pt"), "joint", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match=r"prompts file .*nope\.yaml.* does not exist"):
        build_text_encoder("ViT-B/32", None, "joint", 2, width=32, layers=1,
                           prompts=str(tmp_path / "nope.yaml"))
    with pytest.warns(UserWarning, match="randomly initialised"):
        encoder = build_text_encoder("ViT-L/14", None, "joint_action", 2, width=96, layers=1)
    assert encoder.output_dim == 96 and encoder.clip.transformer.resblocks[0].attn.heads == 1
    assert encoder.layout == "published"
    assert not encoder.prompts.requires_grad  # published: frozen prompts


def test_builder_reads_the_prompts_file_and_skips_weights_from_a_checkpoint(tmp_path):
    path = write_prompts_file(tmp_path / "prompts.yaml", placeholder_content(
        template="{description} at {joint}", joint_template="{part} {joint}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-initialisation warning, no file read
        encoder = build_text_encoder("ViT-B/32", str(tmp_path / "absent.pt"), "joint_action", 2,
                                     width=32, layers=1, layout="sot_first", train_prompts=True,
                                     prompts=path, weights_from_checkpoint=True)
    from open_clip.tokenizer import SimpleTokenizer
    first = placeholder_content()["descriptions"]["Directions"] + " at jointname0"
    assert torch.equal(encoder.token_ids[0, 0], SimpleTokenizer()([first])[0])
    assert encoder.prompts.requires_grad


def test_real_model_shapes():
    start = time.perf_counter()
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        encoder = build_text_encoder("ViT-B/32", None, "joint", 10, layout="sot_first")
    clip = encoder.clip
    count = sum(p.numel() for p in clip.parameters())
    print(f"ViT-B/32 text tower: {count:,} parameters, prompts {encoder.prompts.numel():,}")
    assert count == text_param_count(512, 12, 512) == 63_428_096
    assert encoder.prompts.shape == (170, 512) and encoder.prompts.numel() == 87_040
    assert encoder.output_dim == 512
    assert clip.token_embedding.weight.shape == (49408, 512)
    assert clip.positional_embedding.shape == (77, 512) and clip.text_projection.shape == (512, 512)
    assert len(clip.transformer.resblocks) == 12 and clip.transformer.resblocks[0].attn.heads == 8
    with torch.no_grad():
        assert encoder(torch.tensor([2, 3])).shape == (2, 17, 512)  # 17 short sequences

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        large = build_text_encoder("ViT-L/14", None, "joint_action", 10)
    count = sum(p.numel() for p in large.clip.parameters())
    print(f"ViT-L/14 text tower: {count:,} parameters, prompts {large.prompts.numel():,}")
    assert count == text_param_count(768, 12, 768) == 123_650_304
    assert large.output_dim == 768 and large.prompts.shape == (170, 768)
    assert large.prompts.numel() == 130_560
    assert large.clip.transformer.resblocks[0].attn.heads == 12
    assert large.token_ids.device.type == "cpu"
    print(f"real-shape construction took {time.perf_counter() - start:.2f} s")


# ------------------------------------------------------------------------------ loading

class FakeOpenAIClip(nn.Module):
    """Holds a text tower at the top level plus visual / logit_scale entries, like OpenAI's
    published CLIP models; traced into a TorchScript archive below."""

    def __init__(self, text):
        super().__init__()
        self.visual = nn.Linear(4, 4)
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def forward(self, x):
        return self.visual(x) * self.logit_scale.exp()


def assert_same_text_weights(encoder, source):
    for key, value in source.state_dict().items():
        torch.testing.assert_close(encoder.clip.state_dict()[key], value.float(), rtol=0, atol=0)


def test_load_openai_torchscript_archive(tmp_path):
    torch.manual_seed(3)
    source = CLIPTextTransformer(width=32, layers=1, heads=1, output_dim=32)
    fake = FakeOpenAIClip(source).half()  # OpenAI's archives store fp16 weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14
        archive = torch.jit.trace(fake, torch.zeros(1, 4, dtype=torch.half))
    assert "visual.weight" in archive.state_dict() and "logit_scale" in archive.state_dict()
    path = tmp_path / "ViT-B-32.pt"
    archive.save(str(path))

    encoder = build_text_encoder("ViT-B/32", str(path), "joint_action", 3, width=32, layers=1)
    assert_same_text_weights(encoder, source.half())
    assert encoder.clip.token_embedding.weight.dtype == torch.float32
    assert not encoder.clip.token_embedding.weight.requires_grad
    # Prompts are drawn from the loaded table's statistics.
    table = encoder.clip.token_embedding.weight
    assert abs(encoder.prompts.mean() - table.mean()) < 0.01
    assert abs(encoder.prompts.std() / table.std() - 1) < 0.2


def test_load_plain_state_dicts(tmp_path):
    torch.manual_seed(4)
    source = CLIPTextTransformer(width=32, layers=2, heads=1, output_dim=32)
    plain = tmp_path / "plain.pt"
    torch.save({**source.state_dict(), "logit_scale": torch.tensor(1.0)}, plain)
    encoder = build_text_encoder("ViT-B/32", str(plain), "joint", 2, width=32, layers=2)
    assert_same_text_weights(encoder, source)

    wrapped = tmp_path / "wrapped.pt"
    prefixed = {"module." + key: value for key, value in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": prefixed}, wrapped)
    encoder = build_text_encoder("ViT-L/14", str(wrapped), "joint", 2, width=32, layers=2)
    assert_same_text_weights(encoder, source)


def test_load_errors_name_file_key_and_shapes(tmp_path):
    torch.manual_seed(5)
    wide = CLIPTextTransformer(width=64, layers=1, heads=1, output_dim=64)
    path = tmp_path / "wide.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(MetaPoseError) as error:
        build_text_encoder("ViT-B/32", str(path), "joint", 2, width=32, layers=1)
    message = str(error.value)
    # The first mis-shaped key in state_dict order is positional_embedding.
    assert str(path) in message and "'positional_embedding'" in message
    assert "(77, 64)" in message and "(77, 32)" in message

    state = CLIPTextTransformer(width=32, layers=1, heads=1, output_dim=32).state_dict()
    del state["transformer.resblocks.0.mlp.c_fc.bias"]
    torch.save(state, path)
    with pytest.raises(MetaPoseError, match=r"transformer\.resblocks\.0\.mlp\.c_fc\.bias"):
        build_text_encoder("ViT-B/32", str(path), "joint", 2, width=32, layers=1)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MetaPoseError, match="cannot be read"):
        build_text_encoder("ViT-B/32", str(path), "joint", 2, width=32, layers=1)


def test_quick_gelu():
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    assert set(CLIP_TEXT_CONFIGS) == {"ViT-B/32", "ViT-L/14"}


def test_train_prompts_decides_what_the_model_trains():
    """model.text_encoder.train_prompts: false (published) trains the pose network alone, true
    adds the prompts (paper: 14,999,309 vs 15,086,349; here the tiny configuration)."""
    import os

    from models import build_model
    from utils.config import load_config

    tiny_yaml = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "experiments", "tests", "tiny.yaml")
    counts = {}
    for train_prompts in (False, True):
        config = load_config(tiny_yaml, [f"model.text_encoder.train_prompts={train_prompts}"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(config)
        trainable = {id(p) for p in model.trainable_parameters()}
        assert (id(model.text_encoder.prompts) in trainable) == train_prompts
        assert {id(p) for p in model.pose_net.parameters()} <= trainable
        counts[train_prompts] = sum(p.numel() for p in model.trainable_parameters())
        pose = sum(p.numel() for p in model.pose_net.parameters())
    assert counts[False] == pose and counts[True] == pose + 17 * 2 * 32
