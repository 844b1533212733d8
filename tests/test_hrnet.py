"""Tests of the HRNet trunk: official key layout and sizes, output shapes, checkpoint loading, freezing."""

import math
import warnings

import pytest
import torch
from torch import nn

from models.hrnet import HRNet, build_image_encoder
from utils.errors import MetaPoseError

# measured from the official pose_hrnet_w{32,48}_256x192.pth files without final_layer.*:
# state_dict entries (num_batches_tracked included) and elements of the floating-point entries
# (parameters + BN running mean/var); the nn.Parameter counts alone are the third column
OFFICIAL_SIZES = {32: (1752, 28_589_888, 28_535_552), 48: (1752, 63_674_496, 63_594_912)}


def _quiet_build(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_image_encoder(*args, **kwargs)


def _official_layout_checkpoint(model, joints=17, seed=0):
    """A random state_dict in the official file layout: the trunk plus the heatmap head."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: (torch.randn(value.shape, generator=generator) if value.is_floating_point()
                   else value.clone())
             for key, value in model.state_dict().items()}
    state["final_layer.weight"] = torch.randn(joints, model.width, 1, 1, generator=generator)
    state["final_layer.bias"] = torch.randn(joints, generator=generator)
    return state


@pytest.fixture(scope="module")
def w32():
    return HRNet(32)


@pytest.fixture(scope="module")
def w32_checkpoint(w32, tmp_path_factory):
    path = tmp_path_factory.mktemp("hrnet") / "pose_hrnet_w32_256x192.pth"
    state = _official_layout_checkpoint(w32)
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("width", [32, 48])
def test_official_sizes(width, w32):
    model = w32 if width == 32 else HRNet(48)
    state = model.state_dict()
    entries = len(state)
    elements = sum(v.numel() for v in state.values() if v.is_floating_point())
    parameters = sum(p.numel() for p in model.parameters())
    print(f"HRNet-W{width}: {entries} state_dict entries, {elements:,} state_dict elements "
          f"(parameters + BN statistics), {parameters:,} parameters")
    assert (entries, elements, parameters) == OFFICIAL_SIZES[width]
    assert not any(key.startswith("final_layer") for key in state)


def test_official_key_layout(w32):
    keys = set(w32.state_dict())
    for key in ["conv1.weight", "bn1.running_var", "conv2.weight", "bn2.num_batches_tracked",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias", "layer1.3.conv3.weight",
                "transition1.0.0.weight", "transition1.0.1.weight", "transition1.1.0.0.weight",
                "transition2.2.0.0.weight", "transition3.3.0.1.running_mean",
                "stage2.0.branches.0.0.conv1.weight", "stage2.0.branches.1.3.bn2.bias",
                "stage2.0.fuse_layers.0.1.0.weight", "stage2.0.fuse_layers.1.0.0.1.weight",
                "stage3.3.fuse_layers.2.0.1.0.weight", "stage4.1.fuse_layers.3.0.2.0.weight",
                "stage4.2.fuse_layers.0.3.1.weight", "stage4.2.branches.3.3.conv2.weight"]:
        assert key in keys, key
    assert w32.state_dict()["transition1.1.0.0.weight"].shape == (64, 256, 3, 3)
    # the last module of stage 4 only fuses into the highest resolution
    assert not any(key.startswith("stage4.2.fuse_layers.1.") for key in keys)
    assert "stage4.1.fuse_layers.1.0.0.0.weight" in keys
    assert w32.level_channels == [32, 64, 128, 256]


def test_random_init_statistics():
    model = HRNet(4)
    assert abs(model.conv1.weight.std().item() - 0.001) < 3e-4
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_output_shapes_w32_256x192(w32):
    w32.eval()
    with torch.no_grad():
        maps = w32(torch.randn(1, 3, 256, 192))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 64, 48), (1, 64, 32, 24),
                                              (1, 128, 16, 12), (1, 256, 8, 6)]


@pytest.mark.parametrize("size", [(64, 48), (66, 50), (33, 17)])
def test_output_shapes_small_and_odd(size):
    model = HRNet(4)
    maps = model(torch.randn(2, 3, *size))
    h, w = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
    expected = []
    for channels in model.level_channels:
        expected.append((2, channels, h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert [tuple(m.shape) for m in maps] == expected
    assert model.level_channels == [4, 8, 16, 32]
    maps[0].sum().backward()  # differentiable when not frozen
    assert model.conv1.weight.grad is not None


def test_load_official_layout_checkpoint(w32_checkpoint):
    path, state = w32_checkpoint
    model = build_image_encoder("hrnet_32", str(path), frozen=True)
    loaded = model.state_dict()
    assert set(loaded) == set(state) - {"final_layer.weight", "final_layer.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict", "model"])
def test_load_wrapped_checkpoint(wrap, tmp_path):
    state = _official_layout_checkpoint(HRNet(4), seed=1)
    if wrap == "module_prefix":
        saved = {"module." + key: value for key, value in state.items()}
    else:
        saved = {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path)
    model = build_image_encoder("hrnet_32", path, width=4)
    assert torch.equal(model.state_dict()["stage4.2.fuse_layers.0.3.0.weight"],
                       state["stage4.2.fuse_layers.0.3.0.weight"])


def test_wrong_width_checkpoint(w32_checkpoint):
    path, _ = w32_checkpoint
    with pytest.raises(MetaPoseError) as error:
        build_image_encoder("hrnet_48", str(path))
    message = str(error.value)
    assert str(path) in message
    assert "transition1.0.0.weight" in message
    assert "(32, 256, 3, 3)" in message and "(48, 256, 3, 3)" in message
    assert "model.image_encoder.type" in message


def test_missing_file(tmp_path):
    for type_name, width in [("hrnet_32", 32), ("hrnet_48", 48)]:
        with pytest.raises(MetaPoseError) as error:
            build_image_encoder(type_name, str(tmp_path / "nope.pth"))
        message = str(error.value)
        assert f"data/pretrained/coco/pose_hrnet_w{width}_256x192.pth" in message
        assert "model.image_encoder.pretrained=null" in message


def test_garbage_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    good = tmp_path / "good.pth"
    torch.save(_official_layout_checkpoint(HRNet(4)), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_a_dict)
    for path in [garbage, truncated, empty, not_a_dict]:
        with pytest.raises(MetaPoseError) as error:
            build_image_encoder("hrnet_32", str(path), width=4)
        assert str(path) in str(error.value)


def test_missing_and_unexpected_keys(tmp_path):
    state = _official_layout_checkpoint(HRNet(4))
    missing = dict(state)
    del missing["stage3.1.branches.2.0.conv1.weight"]
    unexpected = dict(state, **{"head.fc.weight": torch.zeros(2)})
    for bad, key in [(missing, "stage3.1.branches.2.0.conv1.weight"), (unexpected, "head.fc.weight")]:
        path = tmp_path / "bad.pth"
        torch.save(bad, path)
        with pytest.raises(MetaPoseError) as error:
            build_image_encoder("hrnet_32", str(path), width=4)
        assert key in str(error.value) and str(path) in str(error.value)


def test_frozen_keeps_batch_norm_statistics():
    model = _quiet_build("hrnet_32", None, frozen=True, width=4)
    assert model.frozen
    assert not any(p.requires_grad for p in model.parameters())
    parent = nn.Sequential(model)
    parent.train()
    assert not model.training and not any(m.training for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 3, 64, 48) * 3 + 1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_not_frozen_trains():
    model = _quiet_build("hrnet_32", None, frozen=False, width=4)
    assert not model.frozen and all(p.requires_grad for p in model.parameters())
    model.train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 48) + 1)
    assert model.training and not torch.equal(model.bn1.running_mean, before)


def test_random_init_warns():
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_image_encoder("hrnet_48", None, width=4)


def test_unknown_type():
    with pytest.raises(MetaPoseError) as error:
        build_image_encoder("hrnet_64", None)
    assert "hrnet_32" in str(error.value) and "hrnet_48" in str(error.value)


def test_random_frozen_trunk_passes_image_content_on():
    """A randomly initialised frozen trunk (tests, the synthetic demo) is BN-calibrated: its maps
    are unit-scale and depend on the image (uncalibrated they would be ~1e-8..1e-12)."""
    model = build_image_encoder("hrnet_32", None, frozen=True, width=4)
    state = torch.random.get_rng_state()
    model.calibrate_batch_norm()
    assert torch.equal(state, torch.random.get_rng_state())  # it draws from its own generator
    assert not model.training and model.frozen
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 48, generator=generator)
    with torch.no_grad():
        maps = model(images)
        other = model(images.flip(-1))
    for level in maps:
        assert 0.05 < float(level.std()) < 50.0
    assert not torch.allclose(maps[0], other[0])


def test_levels_are_the_branch_outputs_of_the_first_stage4_module():
    """Level 0 is the final fused output; levels 1-3 are what the branches of stage 4's first
    module return, before its fuse layers (docs/method.md §2.1), not the maps handed to stage 4."""
    torch.manual_seed(0)
    model = build_image_encoder("hrnet_32", None, frozen=True, width=4)
    model.fold_batch_norm = False  # the plain layers, whose modules the hooks watch
    captured = {}
    first = model.stage4[0]
    for index, branch in enumerate(first.branches):
        branch.register_forward_pre_hook(
            lambda _, args, i=index: captured.__setitem__(("in", i), args[0].clone()))
        branch.register_forward_hook(
            lambda _, __, out, i=index: captured.__setitem__(("out", i), out.clone()))
    model.stage4[-1].register_forward_hook(
        lambda _, __, out: captured.__setitem__("final", out[0].clone()))
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(maps[0], captured["final"])
    for level in (1, 2, 3):
        assert torch.equal(maps[level], captured[("out", level)])
        assert (maps[level] - captured[("in", level)]).abs().max() > 0.1 * maps[level].std()


def test_weights_from_checkpoint_skips_the_file_and_the_calibration(recwarn):
    model = build_image_encoder("hrnet_32", "data/nowhere/pose_hrnet_w32.pth", frozen=True,
                                width=4, weights_from_checkpoint=True)
    assert not recwarn.list
    assert model.frozen and not any(p.requires_grad for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.count_nonzero(m.running_mean) == 0 and torch.all(m.running_var == 1)
               for m in norms)
