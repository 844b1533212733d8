"""MPI-INF-3DHP metrics: the PCK/AUC edge cases, the 14-joint set, invalid frames, per-scene
frame weighting, exact sharding, and agreement with an independent implementation written here
from the dataset's formulas."""

import math

import numpy as np
import pytest
import torch

from utils.metrics_3dhp import (AUC_THRESHOLDS_MM, PCK_JOINTS, SCENES, PoseAccuracyAccumulator,
                                joint_errors_mm, threshold_counts)

NAMES = ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")


def poses(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    joints = torch.randn(count, 17, 3, generator=generator, dtype=torch.float64) * 0.3
    return joints - joints[:, :1]


def offset(target, joint, metres):
    pred = target.clone()
    pred[:, joint, 0] += metres
    return pred


def summary_of(pred, target, sequences, valid=None):
    metrics = PoseAccuracyAccumulator(NAMES)
    metrics.update(pred, target, torch.as_tensor(sequences), valid)
    return metrics.summary()


def test_the_14_joints_leave_out_pelvis_spine_and_head():
    # H36M order: 0 pelvis, 7 belly (= 3DHP spine), 9 nose (= 3DHP head).
    assert len(PCK_JOINTS) == 14 and set(range(17)) - set(PCK_JOINTS) == {0, 7, 9}
    target = poses(4)
    far = offset(offset(target, 7, 1.0), 9, -1.0)
    result = summary_of(far, target, [0, 0, 1, 1])
    assert result["pck"] == 100.0 and result["auc"] == 100.0
    assert result["mpjpe"] == pytest.approx(2 * 1000.0 / 17)
    wrist = summary_of(offset(target, 16, 1.0), target, [0, 0, 1, 1])
    assert wrist["pck"] == pytest.approx(13 / 14 * 100) and wrist["mpjpe"] == \
        pytest.approx(1000.0 / 17)


def test_an_error_of_exactly_150_mm_does_not_count():
    counts = threshold_counts(torch.tensor([[0.0] * 16 + [150.0]], dtype=torch.float64))
    assert counts[0, -1] == 13  # 150 mm is not strictly below 150 mm (joint 16 is a PCK joint)
    target = torch.zeros(1, 17, 3, dtype=torch.float64)
    at = offset(target, 16, 0.15)
    assert joint_errors_mm(at, target)[0, 16].item() == 150.0
    assert summary_of(at, target, [0])["pck"] == pytest.approx(13 / 14 * 100)
    below = offset(target, 16, 0.1499)
    assert summary_of(below, target, [0])["pck"] == 100.0


def test_a_perfect_prediction_scores_100_and_zero_error():
    target = poses(5)
    result = summary_of(target.clone(), target, [0, 1, 2, 3, 4])
    assert (result["pck"], result["auc"], result["mpjpe"]) == (100.0, 100.0, 0.0)
    # A translated prediction is still perfect (both are centred at the pelvis first), also at
    # 0 mm where its errors are float rounding (~1e-13 mm), not exactly 0.
    moved = summary_of(target + 0.5, target, [0, 1, 2, 3, 4])
    assert 0 < joint_errors_mm(target + 0.5, target).max() < 1e-9
    assert (moved["pck"], moved["auc"]) == (100.0, 100.0) and moved["mpjpe"] < 1e-9
    # A real error of a micrometre is no hit at 0 mm: the AUC of the dataset's script.
    assert summary_of(offset(target, 3, 1e-6), target, [0] * 5)["auc"] == \
        pytest.approx((30 + 13 / 14) / 31 * 100)


def test_auc_is_the_mean_of_the_31_pck_values():
    assert AUC_THRESHOLDS_MM == tuple(float(t) for t in range(0, 151, 5))
    target = torch.zeros(1, 17, 3, dtype=torch.float64)
    pred = offset(target, 1, 0.0725)  # 72.5 mm: within 75..150 (16 thresholds), not 0..70
    result = summary_of(pred, target, [0])
    expected = (15 * 13 / 14 + 16 * 1.0) / 31 * 100  # 0..70 mm: the 13 exact joints
    assert result["auc"] == pytest.approx(expected)


def test_invalid_frames_are_ignored():
    target = poses(6)
    pred = target.clone()
    pred[[1, 4]] += torch.randn(2, 17, 3, dtype=torch.float64)  # garbage in invalid frames
    pred[[1, 4], 3] = float("nan")
    valid = torch.tensor([True, False, True, True, False, True])
    result = summary_of(pred, target, [0, 0, 1, 2, 3, 5], valid)
    assert result["frames"] == 4 and result["pck"] == 100.0 and result["mpjpe"] == 0.0
    assert set(result["per_sequence"]) == {"TS1", "TS2", "TS3", "TS6"}
    assert "TS4" not in result["per_sequence"] and result["per_scene"]["noGS"]["frames"] == 1


def test_scenes_and_total_are_frame_weighted():
    target = poses(4)
    pred = target.clone()
    pred[1:, :, 0] += 1.0  # frames 1..3 wrong everywhere (after centring: every joint but root)
    pred[1:, 0, 0] -= 1.0
    result = summary_of(pred, target, [0, 1, 1, 1])  # TS1: 1 perfect frame, TS2: 3 wrong
    assert result["per_sequence"]["TS1"]["pck"] == 100.0
    assert result["per_sequence"]["TS2"]["pck"] == 0.0
    assert result["per_scene"]["GS"]["pck"] == pytest.approx(25.0)  # not (100 + 0) / 2
    assert result["per_scene"]["GS"]["frames"] == 4 and set(result["per_scene"]) == {"GS"}
    assert result["pck"] == pytest.approx(25.0)


def reference_metrics(pred, target, sequences):
    """The dataset's formulas, written independently: per-joint errors after centring at the
    pelvis, PCK = % of the 14 joints' errors < 150 mm, AUC = mean of PCK at 0, 5, ..., 150 mm,
    MPJPE over 17 joints; per sequence, scenes and total pooling frames."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    sequences = np.asarray(sequences)
    kept = [j for j in range(17) if j not in (0, 7, 9)]

    def figures(rows):
        errors = np.linalg.norm((pred[rows] - pred[rows, :1]) - (target[rows] - target[rows, :1]),
                                axis=-1) * 1000.0
        chosen = errors[:, kept]
        curve = [np.mean(chosen < t) * 100.0 for t in np.arange(0, 151, 5)]
        return {"pck": np.mean(chosen < 150.0) * 100.0, "auc": float(np.mean(curve)),
                "mpjpe": float(np.mean(errors)), "frames": len(rows)}

    per_sequence = {NAMES[s]: figures(np.flatnonzero(sequences == s))
                    for s in sorted(set(sequences.tolist()))}
    per_scene = {}
    for scene, members in (("GS", (0, 1)), ("noGS", (2, 3)), ("Outdoor", (4, 5))):
        rows = np.flatnonzero(np.isin(sequences, members))
        if len(rows):
            per_scene[scene] = figures(rows)
    total = figures(np.arange(len(sequences)))
    return total, per_scene, per_sequence


def test_agrees_with_an_independent_implementation():
    generator = torch.Generator().manual_seed(3)
    target = poses(300, seed=1)
    noise = torch.randn(300, 17, 3, generator=generator, dtype=torch.float64)
    scale = torch.rand(300, 1, 1, generator=generator, dtype=torch.float64) * 0.15
    pred = target + noise * scale + 0.2  # errors from a few mm to several hundred
    sequences = torch.randint(0, 6, (300,), generator=generator)
    sequences[sequences == 3] = 2  # TS4 absent: noGS is TS3 alone
    result = summary_of(pred, target, sequences)
    total, per_scene, per_sequence = reference_metrics(pred, target, sequences)
    assert 20.0 < total["pck"] < 95.0  # a non-trivial mix around the thresholds
    for key in ("pck", "auc", "mpjpe"):
        assert result[key] == pytest.approx(total[key], rel=1e-12), key
    assert result["frames"] == total["frames"] == 300
    assert set(result["per_scene"]) == set(per_scene) == set(SCENES)
    for group, reference in ((result["per_scene"], per_scene),
                             (result["per_sequence"], per_sequence)):
        assert set(group) == set(reference)
        for name, values in reference.items():
            for key in ("pck", "auc", "mpjpe"):
                assert group[name][key] == pytest.approx(values[key], rel=1e-12), (name, key)
            assert group[name]["frames"] == values["frames"]


def test_shards_sum_to_exactly_the_single_process_result():
    target = poses(97, seed=4)
    pred = target + torch.randn(97, 17, 3, generator=torch.Generator().manual_seed(5),
                                dtype=torch.float64) * 0.06
    sequences = torch.arange(97) % 6
    single = PoseAccuracyAccumulator(NAMES)
    single.update(pred, target, sequences)
    for bounds in ((0, 97), (0, 33, 97), (0, 10, 60, 97)):
        total = None
        for start, stop in zip(bounds[:-1], bounds[1:]):
            shard = PoseAccuracyAccumulator(NAMES)
            shard.update(pred[start:stop], target[start:stop], sequences[start:stop])
            total = shard.state() if total is None else total + shard.state()
        merged = PoseAccuracyAccumulator(NAMES)
        merged.load_state(total)
        counts = [0] + list(range(2, total.shape[1]))  # frames and threshold counts
        assert torch.equal(merged.state()[:, counts], single.state()[:, counts])
        a, b = merged.summary(), single.summary()
        assert (a["pck"], a["auc"], a["frames"]) == (b["pck"], b["auc"], b["frames"])
        assert a["mpjpe"] == pytest.approx(b["mpjpe"], rel=1e-12)


def test_empty_and_out_of_range():
    metrics = PoseAccuracyAccumulator(NAMES)
    result = metrics.summary()
    assert result["frames"] == 0 and math.isnan(result["pck"]) and result["per_scene"] == {}
    with pytest.raises(ValueError, match="sequence ids"):
        metrics.update(poses(1), poses(1), torch.tensor([6]))


def test_presentation_and_the_score():
    target = poses(12)
    metrics = PoseAccuracyAccumulator(NAMES)
    metrics.update(target + 0.01, target, torch.arange(12) % 6)
    summary = metrics.summary()
    table = metrics.format_table(summary)
    for name in NAMES + ("GS", "noGS", "Outdoor", "Total"):
        assert name in table
    assert set(metrics.record(summary)) == {"pck", "auc", "mpjpe", "frames", "per_scene",
                                            "per_sequence"}
    assert metrics.scalars(summary)["val/mpjpe_mm"] == summary["mpjpe"]
    assert "val_per_scene/Outdoor_pck" in metrics.scalars(summary)
    assert metrics.score_key == "mpjpe" and metrics.lower_is_better
    assert metrics.is_better(30.0, None) and metrics.is_better(30.0, 31.0)
    assert not metrics.is_better(32.0, 31.0) and not metrics.is_better(float("nan"), 31.0)
    assert metrics.sample_title({"sequence": torch.tensor([4]), "index": torch.tensor([7])}, 0) == \
        "frame 7 (TS5)"
