"""The H36M metrics: Protocol #1/#2 and the per-action metric set."""

import math

import pytest
import torch

from utils.metrics_h36m import (ActionErrorAccumulator, format_table, mpjpe, p_mpjpe,
                                procrustes_align)
from utils.skeleton import ACTION_NAMES


def random_poses(batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 17, 3, generator=generator, dtype=torch.float64) * 0.3


def random_rotations(batch, seed=1):
    """Proper rotations (det +1) from the QR decomposition of Gaussian matrices."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(batch, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.unsqueeze(-1)  # make every determinant +1
    return q


def test_p_mpjpe_invariant_to_similarity_transform():
    target = random_poses(8)
    rotation = random_rotations(8)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(8, dtype=torch.float64))
    scale = torch.linspace(0.5, 2.0, 8, dtype=torch.float64).view(8, 1, 1)
    shift = torch.randn(8, 1, 3, dtype=torch.float64)
    pred = scale * (target @ rotation) + shift
    assert (mpjpe(pred, target) > 0.05).all()
    assert (p_mpjpe(pred, target) < 1e-6).all()
    assert (p_mpjpe(pred.float(), target.float()) < 1e-6).all()


def test_p_mpjpe_does_not_allow_reflection():
    target = random_poses(4, seed=3)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    pred = target @ mirror
    errors = p_mpjpe(pred, target)
    assert (errors > 0.01).all()
    # The aligned prediction is reached by a scaled proper rotation: its determinant is positive.
    aligned = procrustes_align(pred, target)
    assert aligned.shape == (4, 17, 3)
    pred_centred = pred - pred.mean(dim=1, keepdim=True)
    aligned_centred = aligned - aligned.mean(dim=1, keepdim=True)
    scaled_rotation = torch.linalg.lstsq(pred_centred, aligned_centred).solution   # (4, 3, 3)
    assert (torch.linalg.det(scaled_rotation) > 0).all()
    assert errors.dtype == torch.float64


def test_constant_offset():
    target = random_poses(1, seed=5)
    offset = torch.tensor([0.03, -0.04, 0.12], dtype=torch.float64)
    pred = target + offset
    assert mpjpe(pred, target).item() == pytest.approx(0.13, abs=1e-12)
    assert p_mpjpe(pred, target).item() == pytest.approx(0.0, abs=1e-9)


def test_mpjpe_per_joint_errors_by_hand():
    target = torch.zeros(1, 17, 3)
    pred = torch.zeros(1, 17, 3)
    pred[0, 1] = torch.tensor([3.0, 4.0, 0.0])     # error 5
    pred[0, 2] = torch.tensor([0.0, 0.0, -17.0])   # error 17
    pred[0, 3] = torch.tensor([1.0, 2.0, 2.0])     # error 3
    assert mpjpe(pred, target).item() == pytest.approx((5 + 17 + 3) / 17)
    # A 90-degree rotation of a pose about Y is undone exactly by P-MPJPE.
    pose = random_poses(1, seed=9)
    rot_y = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    assert p_mpjpe(pose @ rot_y, pose).item() == pytest.approx(0.0, abs=1e-9)


def test_p_mpjpe_scale_only_example_by_hand():
    # A pose shrunk to half size about its centroid: P-MPJPE 0, MPJPE = half the mean
    # distance of the joints from the centroid.
    target = random_poses(1, seed=11)
    centroid = target.mean(dim=1, keepdim=True)
    pred = centroid + 0.5 * (target - centroid)
    expected = 0.5 * torch.linalg.vector_norm(target - centroid, dim=-1).mean()
    assert mpjpe(pred, target).item() == pytest.approx(expected.item())
    assert p_mpjpe(pred, target).item() == pytest.approx(0.0, abs=1e-9)


def test_batched_equals_one_by_one():
    pred, target = random_poses(6, seed=1), random_poses(6, seed=2)
    p1, p2 = mpjpe(pred, target), p_mpjpe(pred, target)
    for i in range(6):
        assert torch.allclose(p1[i], mpjpe(pred[i:i + 1], target[i:i + 1])[0])
        assert torch.allclose(p2[i], p_mpjpe(pred[i:i + 1], target[i:i + 1])[0])
    assert (p2 <= p1 + 1e-12).all()  # alignment can only reduce the error


def test_accumulator_averages_action_means():
    accumulator = ActionErrorAccumulator()
    # Directions (2): 3 frames of 10 mm; Eating (4): 1 frame of 40 mm.
    accumulator.add_errors(torch.tensor([10.0, 10.0, 10.0, 40.0]), torch.tensor([5.0, 5.0, 5.0, 20.0]),
                           torch.tensor([2, 2, 2, 4]))
    summary = accumulator.summary()
    assert summary["frames"] == 4
    assert summary["p1"] == pytest.approx(25.0)   # (10 + 40) / 2, not the frame mean 17.5
    assert summary["p2"] == pytest.approx(12.5)
    assert set(summary["per_action"]) == {ACTION_NAMES[2], ACTION_NAMES[4]}
    assert summary["per_action"]["Directions"] == {"p1": 10.0, "p2": 5.0, "frames": 3}
    table = format_table(summary)
    assert "Directions" in table and "Eating" in table and "Average" in table and "25.00" in table


def test_accumulator_update_converts_metres_to_millimetres():
    accumulator = ActionErrorAccumulator()
    target = random_poses(2)
    accumulator.update(target + torch.tensor([0.0, 0.0, 0.01], dtype=torch.float64), target,
                       torch.tensor([16, 16]))
    summary = accumulator.summary()
    assert summary["per_action"]["WalkTogether"]["p1"] == pytest.approx(10.0)
    assert summary["p2"] == pytest.approx(0.0, abs=1e-6)


def test_accumulator_merge_equals_single_pass():
    pred, target = random_poses(40, seed=4), random_poses(40, seed=5)
    actions = torch.randint(2, 17, (40,), generator=torch.Generator().manual_seed(0))
    single = ActionErrorAccumulator()
    single.update(pred, target, actions)
    # Three "processes" with uneven shards; summing their states is the all-reduce.
    shards = [ActionErrorAccumulator() for _ in range(3)]
    for rank, (start, stop) in enumerate([(0, 7), (7, 30), (30, 40)]):
        shards[rank].update(pred[start:stop], target[start:stop], actions[start:stop])
    reduced = sum(shard.state() for shard in shards)
    merged = ActionErrorAccumulator()
    merged.load_state(reduced)
    assert _close(merged.summary(), single.summary())
    assert merged.summary()["frames"] == 40
    other = ActionErrorAccumulator()
    for shard in shards:
        other.merge(shard.state())
    assert _close(other.summary(), single.summary())


def _close(a, b):
    if a.keys() != b.keys() or a["per_action"].keys() != b["per_action"].keys():
        return False
    if a["frames"] != b["frames"] or not all(
            math.isclose(a[key], b[key], rel_tol=1e-12) for key in ("p1", "p2")):
        return False
    return all(a["per_action"][k]["frames"] == b["per_action"][k]["frames"]
               and all(math.isclose(a["per_action"][k][m], b["per_action"][k][m], rel_tol=1e-12)
                       for m in ("p1", "p2"))
               for k in a["per_action"])


def test_accumulator_empty_and_bad_actions():
    accumulator = ActionErrorAccumulator()
    summary = accumulator.summary()
    assert summary["frames"] == 0 and math.isnan(summary["p1"]) and summary["per_action"] == {}
    with pytest.raises(ValueError):
        accumulator.add_errors(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1]))
    state = accumulator.state()
    assert state.dtype == torch.float64 and state.shape == (3, 15)
