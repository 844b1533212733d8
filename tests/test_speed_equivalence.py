"""Each speed option and each fast path computes what the plain path computes (CPU checks;
tolerances stated per test), and the benchmarks run and report every documented figure. The
plain paths are the reference functions, called directly (models/reference_paths.py for a
whole model).

Covered elsewhere: the encoder's truncated text (only up to the longest sentence) against the
reference over the full 77 tokens is tests/test_text_encoder.py (float64 1e-12, float32 1e-5);
the batched sampling function against the reference function (values, gradients, gradcheck) is
tests/test_deformable_attention.py.
"""

import contextlib
import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from datasets.transforms import prepare_batch, with_batch_flip
from models.flip_test import predict
from benchmarks import throughput
from models import build_model
from models.deformable_attention import samples_are_smaller
from models.hrnet import HRNet
from models.reference_paths import reference_paths
from models.speed import prepare_model_for_speed, to_channels_last
from models.text_encoder import PromptedTextEncoder, text_features_reference
from utils.config import load_config
from utils.flip import flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop, flip_where
from utils.geometry import IMAGENET_MEAN, IMAGENET_STD, crop_pixels_to_grid, normalize_images
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "experiments/tests/tiny.yaml"


def _tiny_model(overrides=(), state=None):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is intended
        model = build_model(load_config(TINY, list(overrides)))
    if state is not None:
        model.load_state_dict(state)
    return model


@torch.no_grad()
def _exercise(model, seed=5):
    """Pose-network weights away from their initial values, so every path matters: changed
    sample-projection biases (carried by samples inside and outside the maps), non-uniform
    attention weights, moving reference points. (The frozen random HRNet's batch norm is calibrated by the builder,
    so its maps are of order one.)"""
    generator = torch.Generator().manual_seed(seed)
    encoder_ids = {id(p) for p in model.image_encoder.parameters()}
    for parameter in model.parameters():
        if id(parameter) not in encoder_ids:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def _inputs(batch=3, dtype=torch.float32, seed=0):
    """Images and joints of the tiny configuration (64x48 images); crop joints reach the
    borders of the crop so that sampling points fall outside the maps too."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 64, 48, generator=generator, dtype=dtype)
    keypoints_2d = torch.rand(batch, 17, 2, generator=generator, dtype=dtype) * 2 - 1
    crop = torch.rand(batch, 17, 2, generator=generator, dtype=dtype) * 1.1 - 0.05
    crop = crop * torch.tensor([CROP_WIDTH - 1.0, CROP_HEIGHT - 1.0], dtype=dtype)
    return images, keypoints_2d, crop, torch.tensor([2, 9, 16][:batch] * (batch // 3 + 1))[:batch]


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------
# Frozen HRNet in channels-last layout


def test_channels_last_encoder_matches_contiguous():
    """Channels-last weights and input (what speed.channels_last does on CUDA): the same maps
    within float32 rounding (relative 1e-5), and the maps come out channels-last."""
    torch.manual_seed(0)
    encoder = HRNet(width=4)
    for module in encoder.modules():  # weights and statistics that make every layer matter
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    encoder.freeze()
    fast = to_channels_last(copy.deepcopy(encoder))
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = encoder(images)
        maps = fast(images)  # contiguous input: the pre-hook converts it
    for got, want in zip(maps, expected):
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert want.abs().max() > 0.1
        assert _relative(got, want) < 1e-5


# ---------------------------------------------------------------------------------------------
# Text encoder: every action at once (on accelerators) against the distinct actions


def test_encoding_all_actions_matches_distinct_actions():
    """Encoding all 15 actions and gathering (no device sync) gives the features and prompt
    gradients of encoding only the batch's distinct actions (float64, 1e-12)."""
    torch.manual_seed(0)
    encoder = PromptedTextEncoder(32, 2, 1, 24, "joint_action", 3).double().train()
    actions = torch.tensor([3, 3, 10, 16, 4])
    weights = torch.randn(5, 17, 24, dtype=torch.float64)
    results = []
    for encode_all in (False, True):
        encoder.encode_all_actions = encode_all
        encoder.prompts.grad = None
        features = encoder(actions)
        (features * weights).sum().backward()
        results.append((features.detach(), encoder.prompts.grad.clone()))
    assert _relative(results[1][0], results[0][0]) < 1e-12
    assert _relative(results[1][1], results[0][1]) < 1e-12


def test_reference_text_matches_cached_and_recomputes():
    """text_features_reference (the published way: text encoded at every evaluation call, over
    all 77 positions) gives the cached features (float64, 1e-12) and runs the tower at every
    call, while the encoder serves repeated calls from its cache."""
    torch.manual_seed(0)
    encoder = PromptedTextEncoder(32, 2, 1, 24, "joint_action", 3).double().eval()
    actions = torch.tensor([3, 3, 10, 16, 4])
    with torch.no_grad():
        cached = [encoder(actions) for _ in range(2)]
        assert encoder.encoder_runs == 1
        uncached = [text_features_reference(encoder, actions) for _ in range(2)]
    assert encoder.encoder_runs == 3
    for features in uncached + cached[1:]:
        assert _relative(features, cached[0]) < 1e-12


# ---------------------------------------------------------------------------------------------
# Deformable sampling: projection after sampling, and the whole model


def test_tiny_config_exercises_both_sampling_orders():
    """The whole-model test below covers both orders only if the tiny maps mix them."""
    config = load_config(TINY)
    height, width = config.data.image_size
    model = config.model
    heads, points = model.deform_heads, model.deform_points
    head_dim = model.embed_dim // heads
    channels = [model.image_encoder.width * 2 ** level for level in range(4)]
    sizes = [(-(-height // 2 ** (level + 2)), -(-width // 2 ** (level + 2))) for level in range(4)]
    orders = [samples_are_smaller(c, h, w, head_dim, 17, heads, points)
              for c, (h, w) in zip(channels, sizes)]
    assert any(orders) and not all(orders), orders


@pytest.mark.parametrize("convention", ["published", "pixel_centre"])
@pytest.mark.parametrize("train_prompts", [False, True], ids=["frozen", "trained_prompts"])
def test_whole_model_fast_paths_match_reference_paths(train_prompts, convention):
    """MetaPose (tiny configuration) on its fast paths (batched sampling in both orders, text
    truncated and cached) against the same model on its reference paths, under both grid
    conventions and with frozen or trained prompts: the same evaluation output and the same
    gradients of every trainable parameter (float64: relative 1e-10; float32 output: relative
    1e-5)."""
    overrides = (f"model.grid_convention={convention}",
                 f"model.text_encoder.train_prompts={str(train_prompts).lower()}")
    reference = _exercise(_tiny_model(overrides))
    fast = _tiny_model(overrides, state=reference.state_dict())
    images, keypoints_2d, crop, actions = _inputs(dtype=torch.float64)
    with torch.no_grad():
        assert min(float(m.abs().mean()) for m in reference.double().encode_images(images)) > 0.05
    outputs, grads = [], []
    runs = reference.text_encoder.encoder_runs
    for model, paths in ((reference.double().eval(), reference_paths),
                         (fast.double().eval(), contextlib.nullcontext)):
        model.zero_grad(set_to_none=True)
        with paths(model):
            pose = model(images, keypoints_2d, crop, actions)
        weights = torch.linspace(-1, 1, pose.numel(), dtype=pose.dtype).view_as(pose)
        (pose * weights).sum().backward()
        outputs.append(pose.detach())
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert reference.text_encoder.encoder_runs == runs + 1  # the reference text really ran
    assert ("text_encoder.prompts" in grads[0]) == train_prompts
    assert outputs[0].abs().max() > 1e-3
    assert _relative(outputs[1], outputs[0]) < 1e-10
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    # Relative to the largest gradient: some are rounding noise around an exact zero (e.g. the
    # Gaussian-prompt layer in evaluation, whose prompt is constant over channels).
    scale = max(float(grad.abs().max()) for grad in grads[0].values())
    for name, grad in grads[0].items():
        assert float((grads[1][name] - grad).abs().max()) < 1e-10 * scale, name
    with torch.no_grad(), reference_paths(reference.float()):
        single = [model.float()(*_inputs()) for model in (reference, fast)]
    assert _relative(single[1], single[0]) < 1e-5
    # Leaving the block restores the fast paths.
    with torch.no_grad():
        assert torch.equal(reference(*_inputs()), fast(*_inputs()))


def test_crop_grid_conversion_formulas():
    """The sync-free conversion (Python scalars) equals the tensor-of-sizes formulas bit for
    bit: pixel_centre (x + 0.5) / 96 - 1 and published x / 96 - 1 (y over 128)."""
    crop = torch.rand(4, 17, 2, generator=torch.Generator().manual_seed(0)) * 300 - 20
    half = torch.tensor([CROP_WIDTH / 2.0, CROP_HEIGHT / 2.0])
    assert torch.equal(crop_pixels_to_grid(crop, "pixel_centre"), (crop + 0.5) / half - 1.0)
    assert torch.equal(crop_pixels_to_grid(crop, "published"), crop / half - 1.0)


# ---------------------------------------------------------------------------------------------
# Images: uint8 to the device, normalised and flipped there


def _host_batch(batch=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    joints = torch.randn(batch, 17, 3, generator=generator)
    return {
        "image": torch.randint(0, 256, (batch, 3, 16, 12), dtype=torch.uint8, generator=generator),
        "keypoints_2d": torch.rand(batch, 17, 2, generator=generator) * 2 - 1,
        "keypoints_2d_crop": torch.rand(batch, 17, 2, generator=generator) * 190,
        "joints_3d": joints - joints[:, :1],
        "action": torch.arange(batch) % 15 + 2,
        "flip": torch.tensor([True, False, True, True, False, False][:batch]),
    }


def test_uint8_normalisation_equals_float_pipeline_on_cpu():
    """normalize_images on the uint8 batch (what runs on the GPU) against the published-style
    CPU pipeline (HWC uint8 -> float in [0, 1] -> ImageNet normalisation, torchvision) and
    against float64 arithmetic (float32 rounding: 1e-6)."""
    from torchvision.transforms import functional as TF

    images = _host_batch()["image"]
    got = normalize_images(images)
    cpu_style = torch.stack([TF.normalize(TF.to_tensor(image.permute(1, 2, 0).numpy()),
                                          IMAGENET_MEAN, IMAGENET_STD) for image in images])
    assert (got - cpu_style).abs().max() < 1e-6
    mean = np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD).reshape(1, 3, 1, 1)
    exact = (images.numpy().astype(np.float64) / 255.0 - mean) / std
    assert np.abs(got.numpy() - exact).max() < 1e-6


def test_prepare_batch_equals_flipping_on_the_host():
    """prepare_batch (uint8 flipped and normalised on the device, copies non-blocking on
    CUDA) against flipping each marked sample on the host first (mirrored HWC image, utils.flip
    joints) and normalising after: identical, bit for bit. channels_last does nothing on CPU."""
    batch = _host_batch()
    expected_images, expected = [], {"keypoints_2d": [], "keypoints_2d_crop": [], "joints_3d": []}
    functions = {"keypoints_2d": flip_keypoints_2d, "keypoints_2d_crop": flip_keypoints_crop,
                 "joints_3d": flip_joints_3d}
    for i, flip in enumerate(batch["flip"].tolist()):
        image = batch["image"][i].permute(1, 2, 0).numpy()
        image = image[:, ::-1] if flip else image
        expected_images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        for name, function in functions.items():
            expected[name].append(function(batch[name][i]) if flip else batch[name][i])
    for channels_last in (False, True):
        out = prepare_batch(batch, torch.device("cpu"), channels_last)
        assert torch.equal(out["images"], normalize_images(torch.stack(expected_images)))
        for name, values in expected.items():
            assert torch.equal(out[name], torch.stack(values)), name
        assert torch.equal(out["actions"], batch["action"])


def test_unflipped_marks_change_nothing_and_unflipped_batches_carry_none():
    """All-false marks select every sample unchanged (the selection runs without looking at
    the marks: that would wait for the device); a whole batch that does not flip
    (train.flip_mode=batch) carries no marks at all, so nothing is selected."""
    batch = _host_batch()
    batch["flip"] = torch.zeros(6, dtype=torch.bool)
    out = prepare_batch(batch, torch.device("cpu"))
    without = prepare_batch({k: v for k, v in batch.items() if k != "flip"},
                            torch.device("cpu"))
    for name in out:
        assert torch.equal(out[name], without[name])
    values = torch.randn(6, 17, 3)
    assert torch.equal(flip_where(batch["flip"], values, flip_joints_3d), values)
    assert "flip" not in with_batch_flip(batch, False)
    assert with_batch_flip(batch, True)["flip"].all() and not batch["flip"].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prepare_batch_on_cuda_matches_cpu():
    """Pinned host batch, non-blocking copies, channels-last uint8, flips and normalisation on
    the GPU: the CPU result, bit for bit (elementwise float32 arithmetic)."""
    batch = _host_batch()
    expected = prepare_batch(batch, torch.device("cpu"))
    pinned = {name: value.pin_memory() for name, value in batch.items()}
    out = prepare_batch(pinned, torch.device("cuda"), channels_last=True)
    assert out["images"].is_contiguous(memory_format=torch.channels_last)
    for name, value in expected.items():
        assert torch.equal(out[name].cpu(), value), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_model_on_cuda_matches_plain():
    """On CUDA, every speed option on and the fast paths (channels-last HRNet, cuDNN
    autotuning, truncated and cached text, batched sampling with projection after sampling,
    GPU-side input preparation) against every option off and the reference paths, same
    weights, flip-test evaluation: float32 (TF32 off) within relative 1e-4, and bf16 autocast
    within the loose bound of the CPU test (0.2)."""
    device = torch.device("cuda")
    plain_overrides = list(throughput.PLAIN_OVERRIDES)
    plain = _exercise(_tiny_model(plain_overrides)).to(device).eval()
    fast_config = load_config(TINY, ["speed.amp=bf16"])
    fast = _tiny_model(state=plain.state_dict()).to(device)
    fast = prepare_model_for_speed(fast, fast_config, device).eval()
    batch = _host_batch(batch=6)
    batch["image"] = torch.randint(0, 256, (6, 3, 64, 48), dtype=torch.uint8,
                                   generator=torch.Generator().manual_seed(2))
    batch["keypoints_2d_crop"] = _inputs(batch=6)[2]
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            with reference_paths(plain):
                want = predict(plain, prepare_batch(batch, device), True)
            inputs = prepare_batch({k: v.pin_memory() for k, v in batch.items()}, device,
                                          channels_last=True)
            got = predict(fast, inputs, True)
            mixed = predict(fast, inputs, True, amp="bf16")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    assert want.abs().max() > 1e-3
    assert _relative(got, want) < 1e-4
    assert torch.isfinite(mixed).all() and _relative(mixed, want) < 0.2


# ---------------------------------------------------------------------------------------------
# torch.compile, mixed precision


def test_compile_keeps_modules_and_checkpoint_keys():
    """speed.compile compiles in place: the same module tree and state_dict keys, so
    checkpoints load with or without it (compiling happens at the first call, not here)."""
    model = _tiny_model()
    keys = list(model.state_dict())
    compiled = prepare_model_for_speed(_tiny_model(("speed.compile=true",)),
                                       load_config(TINY, ["speed.compile=true"]), "cpu")
    assert list(compiled.state_dict()) == keys
    assert type(compiled.pose_net) is type(model.pose_net)
    compiled.load_state_dict(model.state_dict())


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile (inductor) of the tiny model against eager mode, evaluation output,
    float32, relative 1e-5. Slow on a CPU: compiling takes about 4 minutes on 2 cores
    (run with `pytest -m slow`)."""
    eager = _tiny_model().eval()
    config = load_config(TINY, ["speed.compile=true"])
    compiled = prepare_model_for_speed(_tiny_model(("speed.compile=true",),
                                                   state=eager.state_dict()), config, "cpu").eval()
    inputs = _inputs()
    with torch.no_grad():
        assert _relative(compiled(*inputs), eager(*inputs)) < 1e-5


def test_bf16_autocast_stays_close_to_float32():
    """The mixed-precision path (CPU autocast to bfloat16 standing in for CUDA's) runs through
    the whole model with mixed dtypes and stays close to float32. The random tiny model is
    sensitive (rounding only its input images to bfloat16 moves the pose by ~5% of its largest
    coordinate), so the bound is loose: below 20%, and below a quarter of what other images
    change (measured: ~8% and ~73%)."""
    model = _tiny_model().eval()
    inputs = _inputs()
    with torch.no_grad():
        full = model(*inputs)
        other = model(_inputs(seed=1)[0], *inputs[1:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(*inputs)
    assert mixed.dtype in (torch.float32, torch.bfloat16) and torch.isfinite(mixed).all()
    error = _relative(mixed.float(), full)
    assert error < 0.2 and error < 0.25 * _relative(other, full), error


# ---------------------------------------------------------------------------------------------
# The benchmark


MODEL_KEYS = ("train_samples_per_s", "eval_samples_per_s", "encoder_samples_per_s",
              "text_s_per_step", "peak_mem_gb")


def test_throughput_benchmark_smoke():
    """The documented command prints one JSON object with every documented figure."""
    command = [sys.executable, "benchmarks/throughput.py", "--device", "cpu", "--config", TINY,
               "--batch-size", "2", "--steps", "1", "--warmup", "0", "--json"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in MODEL_KEYS:
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["batch"] == 2 and report["mode"] == "fast" and report["device"].startswith("cpu")
    assert report["speed"]["amp"] == "none"  # autocast is CUDA-only


def test_throughput_compare_reports_ratios_and_equal_predictions(capsys):
    """--compare measures the plain and fast configurations in one process; built with the
    same seed, both predict the same poses: the fast path lies no further from the float64
    prediction than 1e-5 of its largest value, or than 1.5x the plain float32 path's own
    rounding (each is ~1e-5 on CPU, so the two float32 paths differ by up to ~2e-5)."""
    throughput.main(["--device", "cpu", "--config", TINY, "--batch-size", "2", "--steps", "1",
                     "--warmup", "0", "--compare", "--json"])
    report = json.loads(capsys.readouterr().out)
    for key in MODEL_KEYS:
        assert report[key] > 0 and report["plain"][key] > 0, key
    assert report["plain"]["text_tokens_per_sequence"] == 77
    assert report["text_tokens_per_sequence"] < 77
    for key in ("train_speedup", "eval_speedup", "text_speedup", "peak_mem_ratio"):
        assert report[key] > 0, key
    errors = report["prediction_rel_error_vs_float64"]
    assert 0 < errors["plain"] < 1e-4
    assert errors["fast"] <= max(1e-5, 1.5 * errors["plain"])
    assert report["prediction_max_rel_diff"] <= errors["fast"] + errors["plain"] + 1e-7


def test_throughput_data_mode(tiny_h36m_dir, capsys):
    """--data reads and decodes the set through the training DataLoader (and, --with-model,
    trains on it)."""
    throughput.main(["--device", "cpu", "--config", TINY, "--data", str(tiny_h36m_dir),
                     "--batch-size", "2", "--steps", "4", "--warmup", "1", "--workers", "0",
                     "--with-model", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 6 and report["workers"] == 0 and report["image_mode"] == "full"
    assert report["data_samples_per_s"] > 0 and report["train_samples_per_s"] > 0


def test_pose_network_benchmark_reports_both_paths(capsys):
    """benchmarks/pose_network.py (encoders replaced by their precomputed outputs) times the
    plain and the fast path and prints the ratios."""
    from benchmarks import pose_network

    pose_network.main(["--config", TINY, "--batch-size", "2", "--steps", "1", "--warmup", "0",
                       "--json"])
    report = json.loads(capsys.readouterr().out)
    for path in ("plain", "fast"):
        assert report[path]["train_samples_per_s"] > 0 and report[path]["eval_samples_per_s"] > 0
    assert report["train_speedup"] > 0 and report["eval_speedup"] > 0
