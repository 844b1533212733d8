"""Deformable sampling: the fast path against the reference (values and gradients), gradcheck,
the coordinate convention, and the module's initialisation."""

import math

import pytest
import torch

from models.deformable_attention import (DeformableSamplingAttention, deformable_sample_fast,
                                         deformable_sample_reference)

# Non-square maps of different sizes per level; Dh = 3 and H = 3 are not powers of two.
MAP_SIZES = [(9, 7), (5, 6), (3, 2), (1, 4)]
BATCH, TOKENS, HEADS, POINTS, HEAD_DIM = 2, 5, 3, 3, 3


def _random_inputs(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(BATCH, HEADS, HEAD_DIM, h, w, generator=generator, dtype=dtype)
              for h, w in MAP_SIZES]
    shape = (BATCH, len(MAP_SIZES), TOKENS, HEADS, POINTS)
    # Mostly inside, many within a pixel of the border, some fully outside the map.
    locations = (torch.rand(shape + (2,), generator=generator, dtype=dtype) * 2.0 - 1.0) * 1.3
    near = shape[:2] + shape[3:]
    # token 0 just inside the right edge, token 1 just above the top edge
    locations[:, :, 0, :, :, 0] = 1.0 - 0.02 * torch.rand(near, generator=generator, dtype=dtype)
    locations[:, :, 1, :, :, 1] = -1.0 - 0.05 * torch.rand(near, generator=generator, dtype=dtype)
    weights = torch.randn(shape, generator=generator, dtype=dtype)
    return values, locations, weights


def _sample_by_hand(values, locations, weights):
    """A third implementation, without grid_sample: explicit bilinear corners with zero padding."""
    levels = []
    for level, value in enumerate(values):
        height, width = value.shape[-2:]
        x = (locations[:, level, ..., 0] + 1) * width / 2 - 0.5  # (B, P, H, K) pixel coordinates
        y = (locations[:, level, ..., 1] + 1) * height / 2 - 0.5
        x0, y0 = x.floor(), y.floor()
        total = 0.0
        for corner_x, corner_y in [(x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)]:
            bilinear = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs())
            inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
            flat = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
            batch, tokens, heads, points = flat.shape
            table = value.flatten(3).transpose(2, 3)  # (B, H, HW, Dh)
            index = flat.permute(0, 2, 1, 3).reshape(batch, heads, tokens * points, 1)
            gathered = table.gather(2, index.expand(-1, -1, -1, value.shape[2]))
            gathered = gathered.view(batch, heads, tokens, points, -1).permute(0, 2, 1, 3, 4)
            corner_weight = (bilinear * inside * weights[:, level]).unsqueeze(-1)
            total = total + (gathered * corner_weight).sum(3)
        levels.append(total.flatten(2))  # (B, P, H*Dh)
    return torch.stack(levels, dim=1)


def _value_and_grads(function, values, locations, weights, out_grad):
    values = [v.clone().requires_grad_() for v in values]
    locations = locations.clone().requires_grad_()
    weights = weights.clone().requires_grad_()
    out = function(values, locations, weights)
    out.backward(out_grad)
    return out.detach(), [v.grad for v in values], locations.grad, weights.grad


def _max_differences(dtype, other=deformable_sample_fast):
    values, locations, weights = _random_inputs(dtype)
    out_grad = torch.randn(BATCH, len(MAP_SIZES), TOKENS, HEADS * HEAD_DIM, dtype=dtype,
                           generator=torch.Generator().manual_seed(1))
    ref = _value_and_grads(deformable_sample_reference, values, locations, weights, out_grad)
    fast = _value_and_grads(other, values, locations, weights, out_grad)
    assert fast[0].shape == (BATCH, len(MAP_SIZES), TOKENS, HEADS * HEAD_DIM)
    assert ref[0].abs().max() > 0.1  # the comparison is not between zeros
    return {
        "value": (ref[0] - fast[0]).abs().max().item(),
        "grad_values": max((a - b).abs().max().item() for a, b in zip(ref[1], fast[1])),
        "grad_locations": (ref[2] - fast[2]).abs().max().item(),
        "grad_weights": (ref[3] - fast[3]).abs().max().item(),
    }


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("other", [deformable_sample_fast, _sample_by_hand])
def test_fast_matches_reference(other, dtype, tolerance):
    """The fast path (and an independent by-hand bilinear sampler, which checks the coordinate
    convention of the reference itself) against the reference: values and all gradients."""
    differences = _max_differences(dtype, other)
    print(f"\n{other.__name__.strip('_')} vs reference, max abs differences ({dtype}): "
          + ", ".join(f"{name} {value:.3e}" for name, value in differences.items()))
    for name, value in differences.items():
        assert value <= tolerance, (name, value)


def test_fast_gradcheck():
    generator = torch.Generator().manual_seed(2)
    sizes = [(3, 4), (2, 3)]
    values = [torch.randn(1, 2, 3, h, w, dtype=torch.float64, generator=generator).requires_grad_()
              for h, w in sizes]
    locations = ((torch.rand(1, 2, 2, 2, 2, 2, dtype=torch.float64, generator=generator) * 2 - 1)
                 * 1.2).requires_grad_()
    weights = torch.randn(1, 2, 2, 2, 2, dtype=torch.float64, generator=generator).requires_grad_()

    def function(value_a, value_b, loc, weight):
        return deformable_sample_fast([value_a, value_b], loc, weight)

    assert torch.autograd.gradcheck(function, (*values, locations, weights), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("function", [deformable_sample_reference, deformable_sample_fast])
def test_coordinate_convention(function):
    """Pixel (i, j) of an (H, W) map is at x = (2j+1)/W - 1, y = (2i+1)/H - 1; beyond the
    border the map reads zero."""
    height, width = 3, 5
    value = torch.arange(height * width, dtype=torch.float64).view(1, 1, 1, height, width) + 1
    i, j = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 4, 3, 0])
    centres = torch.stack([(2 * j.double() + 1) / width - 1, (2 * i.double() + 1) / height - 1], -1)
    # a whole pixel (or more) beyond the edge: all 4 corners outside
    outside = torch.tensor([[1.0 + 2.5 / width, 0.0], [0.0, -1.0 - 2.5 / height]],
                           dtype=torch.float64)
    locations = torch.cat([centres, outside]).view(1, 1, 6, 1, 1, 2)
    out = function([value], locations, torch.ones(1, 1, 6, 1, 1, dtype=torch.float64))
    expected = torch.cat([value[0, 0, 0, i, j], torch.zeros(2, dtype=torch.float64)])
    assert torch.allclose(out.view(6), expected, rtol=0, atol=1e-12)


def test_module_initialisation_and_paths():
    torch.manual_seed(0)
    level_channels = [5, 7, 3]
    module = DeformableSamplingAttention(12, level_channels, heads=4, points=4, fast=True).double()
    queries = torch.randn(2, 3, 17, 12, dtype=torch.float64)

    # Offsets start on rings: head h at angle 2*pi*h/H, point k at radius 0.01*(k+1), x then y.
    offsets = torch.tanh(module.sampling_offsets(queries)).view(2, 3, 17, 4, 4, 2)
    for head in range(4):
        angle = 2.0 * math.pi * head / 4
        for point in range(4):
            radius = 0.01 * (point + 1)
            expected = torch.tensor([radius * math.cos(angle), radius * math.sin(angle)],
                                    dtype=torch.float64)
            assert torch.allclose(offsets[:, :, :, head, point], expected.expand(2, 3, 17, 2),
                                  atol=1e-12)
    # Weight layer at zero: uniform weights over the K points.
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0

    maps = [torch.randn(2, c, h, w, dtype=torch.float64)
            for c, (h, w) in zip(level_channels, [(8, 6), (4, 3), (2, 2)])]
    reference = torch.rand(2, 3, 17, 2, dtype=torch.float64) * 2 - 1
    fast = module(queries, reference, maps)
    module.fast = False
    slow = module(queries, reference, maps)
    assert fast.shape == (2, 3, 17, 12)
    assert (fast - slow).abs().max() < 1e-12
