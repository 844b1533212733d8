"""Deformable sampling (docs/method.md §2.4): the fast paths (sample-then-project, project-then-sample and
their per-level mix, which the module runs) against the plain reference function, values and the
gradients of every input (maps, locations, weights, projection weight and bias), both grid
conventions, points on the border and far outside; an independent by-hand bilinear sampler;
gradcheck; the module against its reference; the module's initialisation."""

import math

import pytest
import torch

from models.deformable_attention import (DeformableSamplingAttention,
                                         deformable_attention_reference, deformable_sample_fast,
                                         deformable_sample_reference, project_then_sample,
                                         sample_then_project, samples_are_smaller)

# Non-square maps of different sizes per level; channel counts, Dh = 3 and H = 3 are not powers
# of two. Sizes chosen so that the mixed fast path uses both orders.
MAP_SIZES = [(9, 7), (5, 6), (3, 2), (1, 4)]
CHANNELS = [3, 5, 7, 6]
BATCH, TOKENS, HEADS, POINTS, HEAD_DIM = 2, 5, 3, 3, 3
CONVENTIONS = [True, False]  # align_corners: published, pixel_centre


def _random_case(dtype, align_corners, seed=0):
    generator = torch.Generator().manual_seed(seed)
    maps = [torch.randn(BATCH, c, h, w, generator=generator, dtype=dtype)
            for c, (h, w) in zip(CHANNELS, MAP_SIZES)]
    proj_weights = [torch.randn(HEAD_DIM, c, generator=generator, dtype=dtype) for c in CHANNELS]
    # biases larger than the samples, so that a wrongly counted out-of-map bias shows
    biases = [2.0 + torch.randn(HEAD_DIM, generator=generator, dtype=dtype) for _ in CHANNELS]
    shape = (BATCH, len(MAP_SIZES), TOKENS, HEADS, POINTS)
    locations = (torch.rand(shape + (2,), generator=generator, dtype=dtype) * 2.0 - 1.0) * 1.3
    near = shape[:2] + shape[3:]
    # token 0 just inside the right edge, token 1 just beyond the top edge, token 2 exactly on
    # the border lines (x = +1, y = -1) and token 3 far outside (every corner off the map)
    locations[:, :, 0, :, :, 0] = 1.0 - 0.02 * torch.rand(near, generator=generator, dtype=dtype)
    locations[:, :, 1, :, :, 1] = -1.0 - 0.05 * torch.rand(near, generator=generator, dtype=dtype)
    locations[:, :, 2, :, :, 0] = 1.0
    locations[:, :, 2, :, :, 1] = -1.0
    locations[:, :, 3] = locations[:, :, 3].sign() * 3.0 + locations[:, :, 3]
    weights = torch.randn(shape, generator=generator, dtype=dtype)
    return maps, proj_weights, biases, locations, weights, align_corners


def _sample_by_hand(maps, proj_weights, biases, locations, weights, align_corners):
    """A third implementation, without grid_sample: explicit bilinear corners with zero padding,
    projecting every sample (bias included) before weighting."""
    levels = []
    for level, feature in enumerate(maps):
        height, width = feature.shape[-2:]
        gx, gy = locations[:, level, ..., 0], locations[:, level, ..., 1]  # (B, P, H, K)
        if align_corners:
            x, y = (gx + 1) / 2 * (width - 1), (gy + 1) / 2 * (height - 1)
        else:
            x, y = ((gx + 1) * width - 1) / 2, ((gy + 1) * height - 1) / 2
        x0, y0 = x.floor(), y.floor()
        sample = 0.0
        for corner_x, corner_y in [(x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)]:
            bilinear = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs())
            inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
            cx = corner_x.clamp(0, width - 1).long()
            cy = corner_y.clamp(0, height - 1).long()
            batch_index = torch.arange(feature.shape[0]).view(-1, 1, 1, 1).expand_as(cx)
            pixels = feature.permute(0, 2, 3, 1)[batch_index, cy, cx]  # (B, P, H, K, C)
            sample = sample + pixels * (bilinear * inside).unsqueeze(-1)
        projected = sample @ proj_weights[level].T + biases[level]  # (B, P, H, K, Dh)
        levels.append((projected * weights[:, level].unsqueeze(-1)).sum(3).flatten(2))
    return torch.stack(levels, dim=1)


def _every_level(function):
    """One order of sampling and projection (a per-level function) on every level."""
    def run(maps, proj_weights, biases, locations, weights, align_corners):
        return torch.stack([function(f, w, b, locations[:, l], weights[:, l], align_corners)
                            for l, (f, w, b) in enumerate(zip(maps, proj_weights, biases))], dim=1)
    return run


def _functional(path):
    """path(maps, proj_weights, biases, locations, weights, align_corners) -> (B, L, P, H*Dh)."""
    def reference(maps, proj_weights, biases, locations, weights, align_corners):
        return deformable_sample_reference(maps, list(zip(proj_weights, biases)), locations,
                                           weights, align_corners)

    def mixed(maps, proj_weights, biases, locations, weights, align_corners):
        return deformable_sample_fast(maps, list(zip(proj_weights, biases)), locations, weights,
                                      align_corners)

    return {"reference": reference, "fast": mixed,
            "project_then_sample": _every_level(project_then_sample),
            "sample_then_project": _every_level(sample_then_project),
            "by_hand": _sample_by_hand}[path]


def _value_and_grads(function, case, out_grad):
    maps, proj_weights, biases, locations, weights, align_corners = case
    tensors = [[t.clone().requires_grad_() for t in group] for group in (maps, proj_weights, biases)]
    locations = locations.clone().requires_grad_()
    weights = weights.clone().requires_grad_()
    out = function(*tensors, locations, weights, align_corners)
    out.backward(out_grad)
    grads = {"maps": [t.grad for t in tensors[0]], "proj_weight": [t.grad for t in tensors[1]],
             "proj_bias": [t.grad for t in tensors[2]], "locations": [locations.grad],
             "weights": [weights.grad]}
    return out.detach(), grads


def max_differences(path, dtype, align_corners):
    """Max abs differences of `path` against the reference (values and every gradient)."""
    case = _random_case(dtype, align_corners)
    out_grad = torch.randn(BATCH, len(MAP_SIZES), TOKENS, HEADS * HEAD_DIM, dtype=dtype,
                           generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _value_and_grads(_functional("reference"), case, out_grad)
    out, grads = _value_and_grads(_functional(path), case, out_grad)
    assert out.shape == ref_out.shape == (BATCH, len(MAP_SIZES), TOKENS, HEADS * HEAD_DIM)
    assert ref_out.abs().max() > 0.1  # the comparison is not between zeros
    differences = {"value": (out - ref_out).abs().max().item()}
    if path == "by_hand":  # its gradients at the exact-border points follow other kink rules
        return differences
    for name, want in ref_grads.items():
        assert all(w.abs().max() > 0 for w in want), name
        differences[f"grad_{name}"] = max((g - w).abs().max().item()
                                          for g, w in zip(grads[name], want))
    return differences


@pytest.mark.parametrize("align_corners", CONVENTIONS, ids=["published", "pixel_centre"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("path", ["fast", "sample_then_project", "project_then_sample",
                                  "by_hand"])
def test_fast_paths_match_reference(path, dtype, tolerance, align_corners):
    """Every fast path (and an independent by-hand bilinear sampler, which checks the
    coordinate conventions of the reference itself) against the reference."""
    differences = max_differences(path, dtype, align_corners)
    print(f"\n{path} vs reference ({dtype}, align_corners={align_corners}) max abs: "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    for name, value in differences.items():
        assert value <= tolerance, (name, value)


def test_case_mixes_both_orders():
    orders = [samples_are_smaller(c, h, w, HEAD_DIM, TOKENS, HEADS, POINTS)
              for c, (h, w) in zip(CHANNELS, MAP_SIZES)]
    assert any(orders) and not all(orders), orders


@pytest.mark.parametrize("function", [sample_then_project, project_then_sample])
@pytest.mark.parametrize("align_corners", CONVENTIONS, ids=["published", "pixel_centre"])
def test_level_paths_gradcheck(function, align_corners):
    generator = torch.Generator().manual_seed(2)
    feature = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=generator)
    weight = torch.randn(3, 2, dtype=torch.float64, generator=generator)
    bias = torch.randn(3, dtype=torch.float64, generator=generator)
    # off the pixel grid (finite differences across a kink would not match)
    locations = (torch.rand(1, 2, 2, 2, 2, dtype=torch.float64, generator=generator) * 2 - 1) * 1.2
    weights = torch.randn(1, 2, 2, 2, dtype=torch.float64, generator=generator)
    inputs = [t.requires_grad_() for t in (feature, weight, bias, locations, weights)]
    assert torch.autograd.gradcheck(lambda *args: function(*args, align_corners), inputs,
                                    eps=1e-6, atol=1e-6)


def test_reference_gradcheck():
    generator = torch.Generator().manual_seed(3)
    maps = [torch.randn(1, c, h, w, dtype=torch.float64, generator=generator)
            for c, (h, w) in [(2, (3, 4)), (3, (2, 3))]]
    projections = [torch.randn(2, c, dtype=torch.float64, generator=generator) for c in (2, 3)]
    biases = [torch.randn(2, dtype=torch.float64, generator=generator) for _ in range(2)]
    locations = (torch.rand(1, 2, 2, 2, 2, 2, dtype=torch.float64, generator=generator) * 2 - 1) * 1.2
    weights = torch.randn(1, 2, 2, 2, 2, dtype=torch.float64, generator=generator)
    inputs = [t.requires_grad_() for t in maps + projections + biases + [locations, weights]]

    def function(m0, m1, w0, w1, b0, b1, loc, weight):
        return deformable_sample_reference([m0, m1], [(w0, b0), (w1, b1)], loc, weight, True)

    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", CONVENTIONS, ids=["published", "pixel_centre"])
def test_grid_conventions_address_the_right_pixels(align_corners):
    """align_corners=True: -1/+1 are the centres of the border pixels, pixel j at 2j/(W-1) - 1;
    False: -1/+1 are the outer edges, pixel j at (2j+1)/W - 1. A point a whole pixel or more
    beyond the edge reads zero, so its projected sample is exactly the bias."""
    height, width = 3, 5
    feature = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width) + 1
    i, j = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 4, 3, 0])
    if align_corners:
        centres = torch.stack([2 * j.double() / (width - 1) - 1,
                               2 * i.double() / (height - 1) - 1], -1)
    else:
        centres = torch.stack([(2 * j.double() + 1) / width - 1,
                               (2 * i.double() + 1) / height - 1], -1)
    outside = torch.tensor([[1.0 + 2.5 / (width - 1), 0.0], [0.0, -1.0 - 2.5 / (height - 1)]],
                           dtype=torch.float64)
    locations = torch.cat([centres, outside]).view(1, 1, 6, 1, 1, 2)
    projection = (torch.tensor([[2.0]], dtype=torch.float64),
                  torch.tensor([0.5], dtype=torch.float64))
    for function in (deformable_sample_reference, deformable_sample_fast):
        out = function([feature], [projection], locations,
                       torch.ones(1, 1, 6, 1, 1, dtype=torch.float64), align_corners)
        expected = torch.cat([2 * feature[0, 0, i, j], torch.zeros(2, dtype=torch.float64)])
        expected = expected + 0.5
        assert torch.allclose(out.view(6), expected, rtol=0, atol=1e-12)


def test_module_initialisation():
    """Offsets: weight 0, bias = the square ring (head h along (cos, sin)(2 pi h / H) divided by
    max(|cos|, |sin|), point k at 0.01 (k + 1)), laid out (H, K, xy), and tanh of it is the
    initial offset; weight layer 0; one Linear(C_l -> D/H) per level, no value/output layer."""
    torch.manual_seed(0)
    module = DeformableSamplingAttention(16, [5, 7, 3], heads=8, points=4).double()
    bias = module.sampling_offsets.bias.view(8, 4, 2)
    for head in range(8):
        angle = 2.0 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        direction = direction / direction.abs().max()
        for point in range(4):
            assert torch.allclose(bias[head, point], direction * 0.01 * (point + 1), atol=1e-15)
    assert torch.allclose(bias[1, 3], torch.tensor([0.04, 0.04], dtype=torch.float64))  # 45 deg
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert [tuple(p.weight.shape) for p in module.sample_proj] == [(2, 5), (2, 7), (2, 3)]
    assert sorted(name for name, _ in module.named_children()) == [
        "attention_weights", "sample_proj", "sampling_offsets"]


@pytest.mark.parametrize("align_corners", CONVENTIONS, ids=["published", "pixel_centre"])
def test_module_paths_agree_and_outside_is_the_bias(align_corners):
    torch.manual_seed(0)
    level_channels = [5, 7, 3]
    module = DeformableSamplingAttention(12, level_channels, heads=4, points=4,
                                         align_corners=align_corners).double()
    with torch.no_grad():  # weights away from their initial values, so every path matters
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    queries = torch.randn(2, 3, 17, 12, dtype=torch.float64)
    maps = [torch.randn(2, c, h, w, dtype=torch.float64)
            for c, (h, w) in zip(level_channels, [(8, 6), (4, 3), (2, 2)])]
    reference = torch.rand(2, 1, 17, 2, dtype=torch.float64) * 2 - 1  # shared by the levels
    fast = module(queries, reference, maps)
    plain = deformable_attention_reference(module, queries, reference, maps)
    assert plain.shape == (2, 3, 17, 12) and plain.abs().max() > 0.1
    assert (fast - plain).abs().max() < 1e-12
    # Every sample beyond the map (tanh offsets are < 1 away): each head returns the bias.
    far = torch.full((2, 1, 17, 2), 5.0, dtype=torch.float64)
    out = module(queries, far, maps).view(2, 3, 17, 4, 3)
    for level, proj in enumerate(module.sample_proj):
        assert torch.allclose(out[:, level], proj.bias.expand(2, 17, 4, 3), atol=1e-12)
