"""Tests of the prompted CLIP text encoder: layout, truncation, caching, gradients, loading."""

import time
import warnings

import pytest
import torch
from torch import nn

from models.text_encoder import (CLIP_TEXT_CONFIGS, CLIPTextTransformer, PromptedTextEncoder,
                                 QuickGELU, build_text_encoder)
from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, NUM_JOINTS

SOT, EOT = 49406, 49407


def tiny(mode="joint_action", prompt_tokens=3, width=32, heads=1, layers=1, output_dim=24,
         truncate=True):
    torch.manual_seed(0)
    return PromptedTextEncoder(width, layers, heads, output_dim, mode, prompt_tokens, truncate)


def text_param_count(width, layers, output_dim, vocab=49408, context=77):
    per_block = 12 * width * width + 13 * width  # qkv, out, fc, proj weights + biases + 2 LNs
    return vocab * width + context * width + layers * per_block + 2 * width + width * output_dim


# ------------------------------------------------------------------------------ layout, shapes

def test_token_layout():
    encoder = tiny(prompt_tokens=4)
    ids, eot = encoder.token_ids, encoder.eot_index
    assert ids.shape == (len(ACTION_IDS), NUM_JOINTS, 77) and eot.shape == (15, 17)
    assert (ids[..., 0] == SOT).all()
    assert (ids[..., 1:5] == 0).all()  # prompt placeholders
    assert (ids.gather(2, eot.unsqueeze(-1)) == EOT).all()
    positions = torch.arange(77)
    assert (ids[positions > eot.unsqueeze(-1)] == 0).all()
    assert (ids[(positions < eot.unsqueeze(-1)) & (positions >= 5)] > 0).all()
    assert encoder.row_lengths == tuple((eot.amax(1) + 1).tolist())
    assert max(encoder.row_lengths) < 77
    # Action sentences differ between actions; joint sentences are one row.
    assert not torch.equal(ids[0], ids[1])
    assert tiny(mode="joint").token_ids.shape == (1, 17, 77)
    # Token buffers are derived data: not in the state dict.
    clip_keys = {"clip." + key for key in encoder.clip.state_dict()}
    assert set(encoder.state_dict()) == {"prompts"} | clip_keys


def test_forward_shapes_and_modes():
    encoder = tiny().train()
    actions = torch.tensor([2, 16, 2, 9])
    out = encoder(actions)
    assert out.shape == (4, 17, 24) and out.dtype == torch.float32 and encoder.output_dim == 24
    assert torch.equal(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    assert encoder.encoder_runs == 1  # distinct actions encoded once

    joint = tiny(mode="joint").train()
    out = joint(actions)
    assert out.shape == (4, 17, 24)
    assert torch.equal(out[0], out[3]) and torch.equal(out[1], out[2])
    assert not torch.allclose(out[0, 0], out[0, 1])  # joints differ


def test_too_long_prompt_is_a_clear_error():
    with pytest.raises(MetaPoseError, match="prompt_tokens"):
        tiny(prompt_tokens=60)


def test_invalid_action_ids():
    encoder = tiny().train()
    with pytest.raises(ValueError, match="2..16"):
        encoder(torch.tensor([1, 3]))
    with pytest.raises((IndexError, RuntimeError)):
        with torch.no_grad():
            encoder(torch.tensor([0, 3]))
    with pytest.raises(TypeError):
        encoder(torch.tensor([2.0]))


# ------------------------------------------------------------------ reference implementation

def test_matches_open_clip_text_transformer():
    """Our CLIP tower equals open_clip's (OpenAI layout, QuickGELU), and the prompted path equals
    open_clip's transformer run on hand-built [SOT, prompts, sentence, EOT] embeddings."""
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import QuickGELU as OpenClipQuickGELU
    from open_clip.transformer import TextTransformer

    torch.manual_seed(1)
    reference = TextTransformer(width=128, heads=2, layers=2, output_dim=48,
                                act_layer=OpenClipQuickGELU).double().eval()
    with torch.no_grad():  # non-zero biases and LN affines so every parameter matters
        for name, param in reference.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                param.add_(0.1 * torch.randn_like(param))

    ours = CLIPTextTransformer(width=128, layers=2, heads=2, output_dim=48).double()
    ours.load_state_dict(reference.state_dict(), strict=True)  # identical key layout
    tokenizer = SimpleTokenizer()
    tokens = tokenizer(["a person's left wrist.", "a photo of a dog walking on a leash"])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours(tokens[:, :20]), reference(tokens),
                                   rtol=1e-12, atol=1e-12)  # causal: padding never matters

    encoder = PromptedTextEncoder(128, 2, 2, 48, "joint_action", prompt_tokens=5).double()
    encoder.clip.load_state_dict(reference.state_dict())
    encoder.reset_prompts()
    with torch.no_grad():
        ours_features = encoder(torch.tensor([4]))[0]  # (17, 48)
        ids, eot = encoder.token_ids[4 - 2], encoder.eot_index[4 - 2]
        x = reference.token_embedding(ids)
        x[:, 1:6] = encoder.prompts
        x = reference.transformer(x + reference.positional_embedding, attn_mask=reference.attn_mask)
        x = reference.ln_final(x)[torch.arange(17), eot] @ reference.text_projection
    torch.testing.assert_close(ours_features, x, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ truncation

@pytest.mark.parametrize("mode", ["joint", "joint_action"])
def test_truncation_matches_full_context(mode):
    actions = torch.tensor([2, 5, 14, 16, 5])
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        encoder = tiny(mode=mode, width=32, layers=2, output_dim=32).to(dtype).train()
        assert max(encoder.row_lengths) < 77
        results = {}
        for truncate in (True, False):
            encoder.truncate = truncate
            encoder.clear_cache()
            grad_path = encoder(actions)
            with torch.no_grad():
                cached_path = encoder(actions)
            torch.testing.assert_close(grad_path.detach(), cached_path, rtol=tol, atol=tol)
            results[truncate] = cached_path
        error = (results[True] - results[False]).abs().max() / results[False].abs().max()
        print(f"{mode} {dtype}: max relative difference truncated vs 77 tokens {error:.2e}")
        assert error < tol


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

    # Frozen prompts carry no gradient: even with grad enabled, the cache is used.
    encoder.prompts.requires_grad_(False)
    encoder(actions)
    assert encoder.encoder_runs == 5


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

def test_only_prompts_receive_gradients():
    encoder = tiny().train()
    assert not encoder.clip.training  # frozen tower stays in eval mode
    assert [name for name, p in encoder.named_parameters() if p.requires_grad] == ["prompts"]
    encoder(torch.tensor([2, 7, 7])).square().sum().backward()
    grad = encoder.prompts.grad
    assert grad is not None and grad.shape == (17, 3, 32)
    assert (grad.abs().sum(dim=(1, 2)) > 0).all()  # every joint's prompts get a gradient
    assert all(p.grad is None for p in encoder.clip.parameters())

    joint = tiny(mode="joint").train()
    joint(torch.tensor([2, 3])).sum().backward()
    assert (joint.prompts.grad.abs().sum(dim=(1, 2)) > 0).all()


def test_prompt_initialisation_follows_token_table():
    encoder = tiny(prompt_tokens=10)
    with torch.no_grad():
        encoder.clip.token_embedding.weight.normal_(3.0, 0.5)
    encoder.reset_prompts()
    assert encoder.prompts.shape == (17, 10, 32)
    assert abs(encoder.prompts.mean().item() - 3.0) < 0.05
    assert abs(encoder.prompts.std().item() - 0.5) < 0.05


# ------------------------------------------------------------------------------ builder

def test_builder_errors_and_random_init_warning(tmp_path):
    with pytest.raises(MetaPoseError, match="ViT-B/32, ViT-L/14"):
        build_text_encoder("RN50", None, "joint", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match="joint, joint_action"):
        build_text_encoder("ViT-B/32", None, "action", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match=r"data/pretrained/clip/ViT-B-32\.pt.*pretrained=null"):
        build_text_encoder("ViT-B/32", str(tmp_path / "nope.pt"), "joint", 2, width=32, layers=1)
    with pytest.raises(MetaPoseError, match=r"data/pretrained/clip/ViT-L-14\.pt"):
        build_text_encoder("ViT-L/14", str(tmp_path / "nope.pt"), "joint", 2, width=32, layers=1)
    with pytest.warns(UserWarning, match="randomly initialised"):
        encoder = build_text_encoder("ViT-L/14", None, "joint_action", 2, width=96, layers=1,
                                     truncate=False)
    assert encoder.output_dim == 96 and encoder.clip.transformer.resblocks[0].attn.heads == 1
    assert not encoder.truncate


def test_real_model_shapes():
    start = time.perf_counter()
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        encoder = build_text_encoder("ViT-B/32", None, "joint", 10)
    clip = encoder.clip
    count = sum(p.numel() for p in clip.parameters())
    print(f"ViT-B/32 text tower: {count:,} parameters, prompts {encoder.prompts.numel():,}")
    assert count == text_param_count(512, 12, 512) == 63_428_096
    assert encoder.prompts.shape == (17, 10, 512) and encoder.output_dim == 512
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
    assert large.output_dim == 768 and large.prompts.shape == (17, 10, 768)
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
