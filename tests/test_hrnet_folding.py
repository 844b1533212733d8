"""A frozen HRNet runs with its batch norms folded into its convolutions (models/hrnet_folding.py):
the same maps as the plain layers (float64: 1e-10 relative; float32: no further from the float64
maps than float32 rounding takes the plain layers), the official state dict, and folded weights
that follow every change of the trunk's weights."""

import copy
import warnings

import pytest
import torch
from torch import nn

from models import build_model
from models.hrnet import HRNet, trunk_forward
from models.hrnet_folding import FoldedConv, FoldedHRNet, fold_module
from models.reference_paths import reference_paths
from utils.config import load_config

TINY = "experiments/tests/tiny.yaml"


def _relative(maps, reference):
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(maps, reference))


def _with_statistics(encoder, seed=0):
    """Every batch norm doing something, as in a trained trunk: random convolutions and affine
    parameters, and running statistics measured on random images (a trunk whose statistics do
    not match its activations grows them to ~1e8 through its residual sums, where float32
    rounding alone exceeds 1e-5 whatever the folding does)."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    dtype = next(encoder.parameters()).dtype
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * (2.0 / module.weight[0].numel()) ** 0.5)
        for module in norms:
            size = module.num_features
            module.weight.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.copy_(0.2 * torch.randn(size, generator=generator))
            module.reset_running_stats()
            module.momentum, module.training = None, True  # cumulative average of the batches
        for batch in range(2):
            trunk_forward(encoder, _images(dtype, batch=4, seed=1000 * seed + 100 + batch))
        for module in norms:
            module.momentum, module.training = 0.1, False
    return encoder


def _images(dtype=torch.float32, batch=2, size=(64, 48), seed=1):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _plain(encoder, images):
    with torch.no_grad():
        return trunk_forward(encoder, images)


def _assert_float32_exact(got, encoder, images):
    """`got`, float32 maps of `images` through the folded `encoder`, lie within 1e-5 relative of
    the plain layers' float64 maps, or at most 1.5x as far as the plain float32 layers lie.

    Float32 rounding alone takes a trunk with realistic statistics 1.3e-5 to 2.5e-5 (relative
    to the largest value) from its float64 maps, as far as folding does; a folding mistake (a
    lost eps, a misplaced mean) moves them by 1e-3 or more."""
    truth = _plain(copy.deepcopy(encoder).double(), images.double())
    rounding = _relative(_plain(encoder, images), truth)
    assert _relative([m.double() for m in got], truth) <= max(1e-5, 1.5 * rounding)


@pytest.mark.parametrize("width", [4, 32])
def test_folded_trunk_equals_the_plain_layers_in_float64(width):
    encoder = _with_statistics(HRNet(width)).freeze().double()
    images = _images(torch.float64, size=(64, 48) if width == 4 else (32, 24))
    with torch.no_grad():
        maps = encoder(images)
    assert encoder.folds and encoder._folded is not None
    assert all(m.dtype == torch.float64 for m in maps)
    assert _relative(maps, _plain(encoder, images)) <= 1e-10


def test_every_batch_norm_is_folded():
    """292 conv+BN pairs in the official trunk: 292 folded convolutions, no batch norm left."""
    encoder = HRNet(32).freeze()
    folded = encoder.folded_trunk()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    assert norms == 292
    assert sum(isinstance(m, FoldedConv) for m in folded.modules()) == norms
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d)) for m in folded.modules())
    with pytest.raises(TypeError, match="cannot fold a Linear"):
        fold_module(nn.Sequential(nn.Linear(2, 2)))


def _tiny_models():
    """(frozen MetaPose, the same weights with model.image_encoder.frozen=false), eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is intended
        torch.manual_seed(0)
        frozen = build_model(load_config(TINY))
        torch.manual_seed(0)
        trained = build_model(load_config(TINY, ["model.image_encoder.frozen=false"]))
    _with_statistics(frozen.image_encoder)
    trained.load_state_dict(frozen.state_dict())
    return frozen.eval(), trained.eval()


def test_model_encodes_images_as_the_unfrozen_encoder_does():
    """model.encode_images of a frozen encoder (folded) against the same state dict with
    model.image_encoder.frozen=false in eval mode (plain layers), in float32."""
    frozen, trained = _tiny_models()
    images = _images()
    with torch.no_grad():
        got, want = frozen.encode_images(images), trained.encode_images(images)
    assert frozen.image_encoder.folds and not trained.image_encoder.folds
    _assert_float32_exact(got, trained.image_encoder, images)
    assert min(float(m.abs().max()) for m in want) > 0.1


def test_state_dict_keeps_the_official_layout_and_round_trips():
    encoder = _with_statistics(HRNet(32)).freeze()
    plain_keys = list(HRNet(32).state_dict())
    with torch.no_grad():
        encoder(_images(size=(32, 24), batch=1))  # builds the folded trunk
    state = encoder.state_dict()
    assert list(state) == plain_keys and len(state) == 1752
    copy_ = HRNet(32).freeze()
    copy_.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(copy_.state_dict().values(), state.values()))


def test_folded_weights_follow_every_load_and_edit():
    """A load into the trunk, a load into the whole model, an edit under no_grad, .double():
    each time the folded trunk computes what the plain layers compute with the new weights."""
    frozen, trained = _tiny_models()
    encoder = frozen.image_encoder
    images = _images()

    def check(dtype=torch.float32):
        with torch.no_grad():
            maps = encoder(images.to(dtype))
        if dtype == torch.float32:
            _assert_float32_exact(maps, encoder, images)
        else:
            assert _relative(maps, _plain(encoder, images.to(dtype))) <= 1e-10

    check()
    original = copy.deepcopy(frozen.state_dict())
    other = _with_statistics(copy.deepcopy(trained.image_encoder), seed=7).state_dict()
    encoder.load_state_dict(other)  # the encoder's own load
    check()
    frozen.load_state_dict(original)  # a parent's load
    assert torch.equal(encoder.bn1.weight, original["image_encoder.bn1.weight"])
    check()
    with torch.no_grad():  # an edit in place, no load
        encoder.stage4[0].branches[3][0].bn2.running_var.mul_(4.0)
        encoder.conv1.weight.neg_()
    check()
    encoder.double()
    check(torch.float64)


def test_reference_paths_run_the_plain_layers():
    frozen, _ = _tiny_models()
    calls = []
    frozen.image_encoder.bn1.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        frozen.encode_images(_images())
        assert not calls  # folded: no batch norm runs
        with reference_paths(frozen):
            frozen.encode_images(_images())
    assert calls == [1]


def test_training_or_unfrozen_trunks_run_the_plain_layers():
    encoder = HRNet(4)
    assert not encoder.folds  # not frozen
    encoder.freeze()
    assert encoder.folds
    encoder.fold_batch_norm = False
    assert not encoder.folds
    with torch.no_grad():
        encoder(_images())
    assert encoder._folded is None


def test_compile_of_a_frozen_trunk_compiles_the_folded_one():
    """nn.Module.compile (speed.compile) wraps the folded trunk, the code that runs; the
    trunk's module tree and state dict are unchanged (nothing is compiled before a call)."""
    encoder = HRNet(4).freeze()
    keys = list(encoder.state_dict())
    encoder.compile()
    assert isinstance(encoder._folded, FoldedHRNet)
    assert encoder._folded._compiled_call_impl is not None
    assert encoder._compiled_call_impl is None
    assert list(encoder.state_dict()) == keys


def test_encoder_benchmark_reports_both_paths(capsys):
    from benchmarks import encoder as encoder_benchmark

    assert encoder_benchmark.main(["--device", "cpu", "--batch-size", "1", "--image-size", "32",
                                   "24", "--steps", "1", "--warmup", "0", "--json"]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    assert report["plain_samples_per_s"] > 0 and report["folded_samples_per_s"] > 0
    assert report["max_rel_diff"] < 1e-4 and report["folded_speedup"] > 0


def test_roofline_estimate_counts_the_encoder_and_the_steps(capsys):
    """The FLOP-and-bytes estimate on the tiny configuration: every phase counted, the folded
    encoder moving fewer bytes than the plain layers for the same FLOPs."""
    import json

    from benchmarks import roofline

    assert roofline.main(["--config", TINY, "--batch", "8", "--counted-batch", "2",
                          "--compute-efficiency", "0.5", "--json"]) == 0
    (estimate,) = json.loads(capsys.readouterr().out)["estimates"]
    phases = estimate["phases"]
    assert set(phases) == {"encoder_folded", "encoder_plain", "eval_flip", "train"}
    folded, plain = phases["encoder_folded"], phases["encoder_plain"]
    assert folded["gflop_per_sample"] == pytest.approx(plain["gflop_per_sample"], rel=0.05)
    assert folded["mbytes_per_sample"] < plain["mbytes_per_sample"]
    assert folded["kernels"] < plain["kernels"]
    assert all(p["samples_per_s"] > 0 for p in phases.values())
