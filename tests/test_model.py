"""MetaPose end to end on CPU: parameter budget of the paper configuration, shapes, gradients
reaching only the trainable parts, determinism in evaluation, and the larger encoder variants."""

import warnings

import pytest
import torch

from models import build_model
from utils.config import load_config

RANDOM_ENCODERS = ["model.image_encoder.pretrained=null", "model.text_encoder.pretrained=null"]
PAPER_TRAINABLE = 15.09e6  # DESIGN 2: about 15.0 M pose network + 0.09 M prompts (W32, ViT-B/32)


def _build(path, overrides=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised" warnings are expected here
        return build_model(load_config(path, list(overrides)))


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
    return _build("experiments/human36m/human36m.yaml", RANDOM_ENCODERS)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return _build("experiments/tests/tiny.yaml")


def test_paper_parameter_budget(paper_model):
    model = paper_model
    trainable = _count(model.trainable_parameters())
    pose = _count(model.pose_parameters())
    prompts = model.text_encoder.prompts.numel()
    print(f"\npaper config trainable parameters: {trainable:,} "
          f"= pose {pose:,} + prompts {prompts:,}")
    assert model.image_encoder.level_channels == [32, 64, 128, 256]
    assert model.text_encoder.output_dim == 512
    assert prompts == 17 * 10 * 512
    assert trainable == pose + prompts
    assert abs(trainable - PAPER_TRAINABLE) / PAPER_TRAINABLE < 0.02
    trainable_ids = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable_ids for p in model.image_encoder.parameters())
    assert not any(id(p) in trainable_ids for p in model.text_encoder.clip.parameters())


def test_paper_forward_backward(paper_model):
    """One batch of 2 at 256x192 (the slow one): shape, root at zero, and gradients reach the
    prompts and the pose network but never the frozen HRNet and CLIP weights."""
    model = paper_model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    # one distinct action keeps the CLIP pass small; per-sample gathering is tested on tiny
    pose = model(*_inputs(2, 256, 192, [7, 7]))
    assert pose.shape == (2, 17, 3)
    assert torch.isfinite(pose).all()
    assert torch.count_nonzero(pose[:, 0]) == 0
    pose.square().mean().backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.text_encoder.clip.parameters())
    assert model.text_encoder.prompts.grad is not None
    assert model.text_encoder.prompts.grad.abs().sum() > 0
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert not missing


def test_tiny_forward_backward_and_aux(tiny_model):
    model = tiny_model.train()
    model.zero_grad(set_to_none=True)
    running_mean = [m.running_mean.clone() for m in model.image_encoder.modules()
                    if isinstance(m, torch.nn.BatchNorm2d)]
    pose, aux = model(*_inputs(3, 64, 48, [2, 5, 2]), return_aux=True)
    assert pose.shape == (3, 17, 3) and torch.isfinite(pose).all()
    assert torch.count_nonzero(pose[:, 0]) == 0
    assert aux["kl"].dim() == 0 and torch.isfinite(aux["kl"])
    (pose.square().mean() + aux["kl"]).backward()
    assert not [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert all(p.grad is None for p in model.image_encoder.parameters())
    # the frozen HRNet stays in eval mode inside a training model: BN statistics do not move
    assert not model.image_encoder.training
    after = [m.running_mean for m in model.image_encoder.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running_mean, after))


def test_parameter_groups(tiny_model):
    model = tiny_model
    pose_ids = {id(p) for p in model.pose_parameters()}
    trainable_ids = {id(p) for p in model.trainable_parameters()}
    assert trainable_ids == pose_ids | {id(model.text_encoder.prompts)}
    assert id(model.text_encoder.prompts) not in pose_ids


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


def test_batch_equals_one_by_one(tiny_model):
    """Each sample's text features, tokens and pose depend on that sample only."""
    inputs = _inputs(3, 64, 48, [4, 12, 4], seed=2)
    model = tiny_model.eval()
    with torch.no_grad():
        batched = model(*inputs)
        single = torch.cat([model(*(x[i:i + 1] for x in inputs)) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[0], batched[2])  # same action, different input


def test_large_variants_build_and_run():
    """W48 + ViT-L/14 at full size: encoder widths, prompt size, and one small forward."""
    torch.manual_seed(0)
    model = _build("experiments/human36m/human36m.yaml", RANDOM_ENCODERS + [
        "model.image_encoder.type=hrnet_48", "model.text_encoder.type=ViT-L/14"])
    assert model.image_encoder.level_channels == [48, 96, 192, 384]
    assert model.text_encoder.output_dim == 768
    assert model.text_encoder.prompts.numel() == 17 * 10 * 768
    print(f"\nW48 + ViT-L/14 trainable parameters: {_count(model.trainable_parameters()):,} "
          f"(pose {_count(model.pose_parameters()):,})")
    model.train()  # with gradients, the text encoder runs the one requested action only
    pose = model(*_inputs(1, 64, 48, [3]))
    assert pose.shape == (1, 17, 3) and torch.isfinite(pose).all()
