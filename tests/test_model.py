"""MetaPose end to end on CPU: the published parameter count and structure facts (LayerNorm eps,
drop-path rates, initialisation), shapes, gradients reaching only the trainable parts, the
switches of docs/method.md §2.9 that live in the network, deterministic batch-independent evaluation, and
the larger encoder variants."""

import warnings

import pytest
import torch
from torch import nn

from models import build_model
from models.layers import DropPath
from utils.config import load_config

PAPER = "experiments/human36m/human36m.yaml"
TINY = "experiments/tests/tiny.yaml"
RANDOM_ENCODERS = ["model.image_encoder.pretrained=null", "model.text_encoder.pretrained=null"]
# docs/method.md §2 / the published layout's pose_net_parameters (HRNet-W32, ViT-B/32).
PAPER_POSE_NET = 14_999_309
# Other widths change only the level projections and text_proj: W48 adds 16 * (1+2+4+8) input
# channels to feat_embed (x128), the 4 spatial and 4 semantic de_att embed_proj (x32) and the
# 4 semantic embed_proj (x128); ViT-L/14 adds 256 input channels to text_proj (x128).
W48_POSE_NET = PAPER_POSE_NET + 16 * 15 * (128 + 8 * 32 + 4 * 128)
VITL_POSE_NET = PAPER_POSE_NET + 256 * 128


def _build(path, overrides=(), **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised" warnings are expected here
        return build_model(load_config(path, list(overrides)), **kwargs)


def _inputs(batch, height, width, actions, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    keypoints_2d = torch.rand(batch, 17, 2, generator=generator) * 2 - 1
    keypoints_crop = torch.rand(batch, 17, 2, generator=generator) * torch.tensor([191.0, 255.0])
    return images, keypoints_2d, keypoints_crop, torch.tensor(actions, dtype=torch.long)


def _count(parameters):
    return sum(p.numel() for p in parameters)


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return _build(PAPER, RANDOM_ENCODERS)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return _build(TINY)


def test_paper_parameter_count(paper_model):
    model = paper_model
    parts = {name: _count(part.parameters()) for name, part in model.pose_net.named_children()}
    pose = _count(model.pose_net.parameters())
    prompts = model.text_encoder.prompts.numel()
    print(f"\npaper pose network {pose:,} = " + " + ".join(f"{n} {c:,}" for n, c in parts.items())
          + f"; prompts {prompts:,}")
    assert pose == PAPER_POSE_NET == sum(parts.values())
    assert prompts == 87_040
    assert model.image_encoder.level_channels == [32, 64, 128, 256]
    assert _count(model.pose_parameters()) == pose
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.pose_net.parameters()} <= trainable
    assert trainable - {id(p) for p in model.pose_net.parameters()} <= {id(model.text_encoder.prompts)}
    assert not any(id(p) in trainable for p in model.image_encoder.parameters())
    assert not any(id(p) in trainable for p in model.text_encoder.clip.parameters())


def test_paper_structure_facts(paper_model):
    """LayerNorm eps 1e-5 except 1e-6 inside the lifting blocks; drop path linspace(0.1, 0.2)
    in each of the four stacks; no output or value projections where the published has none."""
    net = paper_model.pose_net
    for name, module in net.named_modules():
        if isinstance(module, nn.LayerNorm):
            in_block = ".level_blocks." in f".{name}" or ".joint_blocks." in f".{name}"
            assert module.eps == (1e-6 if in_block else 1e-5), name
    expected = pytest.approx([0.1, 0.1 + 0.1 / 3, 0.1 + 0.2 / 3, 0.2])
    for stack in (net.spatial.blocks, net.semantic.blocks, net.lifting.level_blocks,
                  net.lifting.joint_blocks):
        assert [block.drop_path.rate for block in stack] == expected
    assert sum(isinstance(m, DropPath) for m in net.modules()) == 16
    assert sorted(n for n, _ in net.alignment.cross_attn.named_children()) == [
        "key", "norm_prompt", "norm_query", "query", "value"]
    assert len(net.alignment.fusion) == 5
    assert tuple(net.semantic.query_pos.shape) == (68, 128)


def test_paper_initialisation(paper_model):
    net = paper_model.pose_net
    tokens = net.tokens
    for table in (tokens.point_pos, tokens.text_pos, tokens.level_pos, net.lifting.level_pos,
                  net.lifting.joint_pos):
        table = table.detach()
        assert 0.015 < float(table.std()) < 0.025 and abs(float(table.mean())) < 0.005
    assert 0.9 < float(net.semantic.query_pos.detach().std()) < 1.1  # nn.Embedding's default N(0, 1)
    for block in net.semantic.blocks:
        assert torch.count_nonzero(block.ref_step.weight) == 0
        assert block.ref_step.bias.tolist() == pytest.approx([0.01, 0.0])
    # PyTorch default Linear init elsewhere: uniform within 1/sqrt(fan_in), non-zero biases
    for linear in (tokens.point_embed, tokens.text_embed, net.alignment.fusion[0],
                   net.lifting.head, net.spatial.blocks[0].attn.sample_proj[2]):
        bound, largest = linear.weight.shape[1] ** -0.5, float(linear.weight.detach().abs().max())
        assert 0.9 * bound < largest <= bound
        assert torch.count_nonzero(linear.bias) == linear.bias.numel()


def test_paper_forward_backward(paper_model):
    """One batch of 2 at 256x192: shape, the raw (not root-shifted) output, and gradients reach
    every pose-network parameter but never the frozen HRNet and CLIP weights."""
    model = paper_model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    pose = model(*_inputs(2, 256, 192, [7, 7]))
    assert pose.shape == (2, 17, 3) and torch.isfinite(pose).all()
    assert torch.count_nonzero(pose[:, 0]) == 6  # published: the root is not shifted to 0
    pose.square().mean().backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.text_encoder.clip.parameters())
    missing = [name for name, p in model.pose_net.named_parameters() if p.grad is None]
    assert not missing
    model.eval()


def test_tiny_forward_backward_and_aux(tiny_model):
    model = tiny_model.train()
    model.zero_grad(set_to_none=True)
    running_mean = [m.running_mean.clone() for m in model.image_encoder.modules()
                    if isinstance(m, torch.nn.BatchNorm2d)]
    pose, aux = model(*_inputs(3, 64, 48, [2, 5, 2]), return_aux=True)
    assert pose.shape == (3, 17, 3) and torch.isfinite(pose).all()
    assert aux["kl"].dim() == 0 and torch.isfinite(aux["kl"])
    (pose.square().mean() + aux["kl"]).backward()
    assert not [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert all(p.grad is None for p in model.image_encoder.parameters())
    # the frozen HRNet stays in eval mode inside a training model: BN statistics do not move
    assert not model.image_encoder.training
    after = [m.running_mean for m in model.image_encoder.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running_mean, after))
    model.eval()


def test_root_shift_switch(tiny_model):
    shifted = _build(TINY, ["model.root_shift=true"])
    shifted.load_state_dict(tiny_model.state_dict())
    inputs = _inputs(2, 64, 48, [3, 4], seed=3)
    with torch.no_grad():
        raw = tiny_model.eval()(*inputs)
        out = shifted.eval()(*inputs)
    assert torch.count_nonzero(raw[:, 0]) == 6
    assert torch.count_nonzero(out[:, 0]) == 0
    assert torch.allclose(out, raw - raw[:, :1], atol=1e-7)


def test_eval_is_deterministic_and_train_is_not(tiny_model):
    inputs = _inputs(4, 64, 48, [2, 9, 16, 9], seed=1)
    model = tiny_model.eval()
    with torch.no_grad():
        first, second = model(*inputs), model(*inputs)
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        first, second = model(*inputs), model(*inputs)
    assert not torch.equal(first, second)  # Gaussian prompt noise and stochastic depth
    model.eval()


@pytest.mark.parametrize("eval_noise", ["mean", "fixed"])
def test_prediction_does_not_depend_on_the_batch(tiny_model, eval_noise):
    """One batch of 6 against the same frames in batches of 2 and 4 (float32 rounding), and
    two evaluation forwards bit for bit; the fixed draw is not a checkpoint entry."""
    model = _build(TINY, [f"model.alignment.eval_noise={eval_noise}"])
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    inputs = _inputs(6, 64, 48, [2, 9, 16, 9, 4, 2], seed=2)
    with torch.no_grad():
        whole = model(*inputs)
        again = model(*inputs)
        parts = torch.cat([model(*(x[:2] for x in inputs)), model(*(x[2:] for x in inputs))])
    assert torch.equal(whole, again)
    assert torch.allclose(whole, parts, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(whole[0], whole[5])  # same action, different input
    assert not any("fixed_noise" in key for key in model.state_dict())


def test_eval_noise_modes_differ(tiny_model):
    """The fixed draw is used (it changes the output against eps = 0) and is the same for
    every sample: two copies of one frame in one batch predict the same pose."""
    fixed = _build(TINY, ["model.alignment.eval_noise=fixed"])
    fixed.load_state_dict(tiny_model.state_dict())
    images, kp2d, crop, actions = _inputs(1, 64, 48, [5], seed=4)
    twice = (images.repeat(2, 1, 1, 1), kp2d.repeat(2, 1, 1), crop.repeat(2, 1, 1),
             actions.repeat(2))
    with torch.no_grad():
        out = fixed.eval()(*twice)
        mean = tiny_model.eval()(*twice)
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-7)
    assert not torch.allclose(out, mean, atol=1e-4)
    noise = fixed.pose_net.alignment.fixed_noise
    assert noise.shape == (5, 17, tiny_model.pose_net.tokens.point_pos.shape[-1])
    rebuilt = _build(TINY, ["model.alignment.eval_noise=fixed"]).pose_net.alignment.fixed_noise
    assert torch.equal(noise, rebuilt)  # a fixed seed, never the global RNG


def test_per_channel_gaussian_ablation():
    model = _build(TINY, ["model.alignment.per_channel=true"]).train()
    dim = model.pose_net.tokens.point_pos.shape[-1]
    assert tuple(model.pose_net.alignment.gaussian.weight.shape) == (2 * dim, dim)
    pose, aux = model(*_inputs(2, 64, 48, [2, 3]), return_aux=True)
    (pose.sum() + aux["kl"]).backward()
    assert model.pose_net.alignment.gaussian.weight.grad.abs().sum() > 0


def test_grid_convention_switch(tiny_model):
    """pixel_centre samples other points than published; there a mirrored crop point
    (x -> 191 - x) is exactly the negated grid x, under published it is not."""
    from utils.geometry import crop_pixels_to_grid

    corrected = _build(TINY, ["model.grid_convention=pixel_centre"])
    corrected.load_state_dict(tiny_model.state_dict())
    inputs = _inputs(2, 64, 48, [3, 4], seed=5)
    with torch.no_grad():
        assert not torch.allclose(corrected.eval()(*inputs), tiny_model.eval()(*inputs),
                                  atol=1e-5)
    crop = inputs[2]
    mirrored = torch.stack([191.0 - crop[..., 0], crop[..., 1]], dim=-1)
    for convention, exact in [("pixel_centre", True), ("published", False)]:
        g, g_mirrored = (crop_pixels_to_grid(c, convention) for c in (crop, mirrored))
        assert torch.allclose(g_mirrored[..., 0], -g[..., 0], atol=1e-6) == exact, convention
        assert torch.equal(g_mirrored[..., 1], g[..., 1])


def test_weights_from_checkpoint_reads_no_encoder_file(recwarn):
    """The image encoder's pretrained path (absent here) is neither checked nor read, no
    random-initialisation warning about it, and its batch norm is not calibrated."""
    config = load_config(TINY, ["model.image_encoder.pretrained=data/nowhere/hrnet.pth"])
    model = build_model(config, weights_from_checkpoint=True)
    assert not [w for w in recwarn if "image encoder" in str(w.message)]
    norms = [m for m in model.image_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.count_nonzero(m.running_mean) == 0 for m in norms)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())


@pytest.mark.parametrize("overrides, expected", [
    (["model.image_encoder.type=hrnet_48"], W48_POSE_NET),
    (["model.text_encoder.type=ViT-L/14"], VITL_POSE_NET),
], ids=["W48", "ViT-L14"])
def test_larger_encoder_variants(overrides, expected):
    """W48 and ViT-L/14 at full size: parameter counts, encoder widths, one small forward."""
    torch.manual_seed(0)
    # joint mode: one row of 17 sentences through the big text tower instead of 15 x 17
    model = _build(PAPER, RANDOM_ENCODERS + overrides + ["model.text_encoder.mode=joint"],
                   weights_from_checkpoint=True)
    pose_net = _count(model.pose_net.parameters())
    print(f"\n{overrides[0]}: pose network {pose_net:,}, prompts "
          f"{model.text_encoder.prompts.numel():,}")
    assert pose_net == expected
    with torch.no_grad():
        pose = model.eval()(*_inputs(1, 64, 48, [3]))
    assert pose.shape == (1, 17, 3) and torch.isfinite(pose).all()
