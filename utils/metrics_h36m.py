"""The H36M metric set: Protocol #1 (MPJPE), Protocol #2 (P-MPJPE) and per-action averaging
(MPI-INF-3DHP has its own, utils/metrics_3dhp.py)."""

import math

import torch

from utils.metric_set import MetricSet
from utils.skeleton import ACTION_IDS, ACTION_NAMES, FIRST_ACTION_ID, NUM_ACTIONS


def mpjpe(pred, target):
    """Protocol #1, MPJPE: the mean Euclidean distance between matching joints of each frame.

    Args:
        pred: (B, 17, 3) predicted joints (any units, usually root-relative metres).
        target: (B, 17, 3) ground-truth joints in the same units and frame.
    Returns:
        (B,) per-frame mean joint error, in the units of the input.
    """
    return torch.linalg.vector_norm(pred - target, dim=-1).mean(dim=-1)


def procrustes_align(pred, target):
    """Aligns each predicted frame to its target with the best similarity transform.

    Solves, per frame, min over scale s > 0, proper rotation R (det R = +1, no reflection) and
    translation t of || s * pred @ R + t - target ||_F (orthogonal Procrustes with the
    reflection removed by flipping the sign of the smallest singular direction when the
    determinant is negative). Computed in float64 with a batched SVD.

    Args:
        pred: (B, 17, 3) predicted joints.
        target: (B, 17, 3) ground-truth joints in the same units.
    Returns:
        (B, 17, 3) aligned prediction, float64; all NaN for a frame whose prediction or target
        holds NaN/Inf (the SVD is not run on such frames: it would fail to converge).
    """
    pred = pred.double()
    target = target.double()
    finite = (torch.isfinite(pred).flatten(1).all(dim=1)
              & torch.isfinite(target).flatten(1).all(dim=1))                 # (B,)
    if not bool(finite.all()):
        aligned = torch.full_like(pred, math.nan)
        if bool(finite.any()):
            aligned[finite] = procrustes_align(pred[finite], target[finite])
        return aligned
    pred_mean = pred.mean(dim=-2, keepdim=True)
    target_mean = target.mean(dim=-2, keepdim=True)
    pred_centred = pred - pred_mean                                   # (B, 17, 3)
    target_centred = target - target_mean                             # (B, 17, 3)

    covariance = pred_centred.transpose(-1, -2) @ target_centred     # (B, 3, 3)
    u, singular, vh = torch.linalg.svd(covariance)                    # covariance = u diag(s) vh
    # det(u @ vh) is -1 when the best orthogonal map is a reflection: flip the last direction.
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    correction = torch.ones_like(singular)                            # (B, 3)
    correction[:, -1] = sign
    rotation = (u * correction.unsqueeze(-2)) @ vh                    # (B, 3, 3), det = +1

    pred_energy = pred_centred.square().sum(dim=(-2, -1)).clamp_min(1e-30)   # (B,)
    scale = (singular * correction).sum(dim=-1) / pred_energy                 # (B,)
    aligned = scale.view(-1, 1, 1) * (pred_centred @ rotation) + target_mean
    return aligned


def p_mpjpe(pred, target):
    """Protocol #2, P-MPJPE: MPJPE after per-frame similarity Procrustes alignment.

    Each predicted frame is scaled, rotated (proper rotation only; reflections are not allowed)
    and translated to best fit its ground truth, then Protocol #1 is applied.

    Args:
        pred: (B, 17, 3) predicted joints.
        target: (B, 17, 3) ground-truth joints in the same units.
    Returns:
        (B,) per-frame error in the units of the input (float64).
    """
    return mpjpe(procrustes_align(pred, target), target.double())


class ActionErrorAccumulator(MetricSet):
    """Sums Protocol #1 and #2 errors (millimetres) per H36M action over an evaluation: the H36M
    metric set (utils/metric_set.py); its score is P1, lower is better.

    The running state is one float64 tensor (3, 15): rows are the P1 sum, the P2 sum and the
    frame count, columns the actions 2..16 (sub-actions merged). States of several processes
    combine by summation, so the engine all-reduces `state()` (SUM) and calls `load_state`
    with the result; every frame then counts exactly once overall.
    """

    score_key = "p1"
    score_label = "P1"
    lower_is_better = True
    overview_tags = ("val/p1_mm", "val/p2_mm")

    def __init__(self, device="cpu"):
        super().__init__(torch.zeros(3, NUM_ACTIONS, dtype=torch.float64, device=device))

    def update_batch(self, pred, target, batch):
        """Adds a batch of the engine (actions from batch["action"])."""
        self.update(pred, target, batch["action"])

    def update(self, pred, target, actions):
        """Adds a batch.

        Args:
            pred: (B, 17, 3) predicted root-relative joints, metres.
            target: (B, 17, 3) ground-truth root-relative joints, metres.
            actions: (B,) int H36M action ids 2..16.
        """
        self.add_errors(mpjpe(pred.double(), target.double()) * 1000.0,
                        p_mpjpe(pred, target) * 1000.0, actions)

    def add_errors(self, p1_mm, p2_mm, actions):
        """Adds per-frame errors: p1_mm, p2_mm (B,) millimetres; actions (B,) ids 2..16."""
        actions = torch.as_tensor(actions, device=self._state.device).long().reshape(-1)
        if actions.numel() == 0:
            return
        low, high = int(actions.min()), int(actions.max())
        if low < FIRST_ACTION_ID or high >= FIRST_ACTION_ID + NUM_ACTIONS:
            raise ValueError(f"action ids must lie in {ACTION_IDS[0]}..{ACTION_IDS[-1]}, "
                             f"got values in {low}..{high}")
        columns = actions - FIRST_ACTION_ID
        values = torch.stack([
            p1_mm.detach().to(self._state).reshape(-1),
            p2_mm.detach().to(self._state).reshape(-1),
            torch.ones_like(columns, dtype=self._state.dtype),
        ])                                                            # (3, B)
        self._state.index_add_(1, columns, values)

    def summary(self):
        """The evaluation result, errors in millimetres.

        Returns:
            {"p1", "p2", "frames", "per_action": {name: {"p1", "p2", "frames"}}}: per-action
            values are means over that action's frames; "p1"/"p2" are the means of the
            per-action means over the actions present (the H36M "Average" over 15 actions),
            not the mean over frames; "frames" is the total count. NaN errors when empty.
        """
        sums = self._state.cpu()
        per_action = {}
        for column, action_id in enumerate(ACTION_IDS):
            frames = int(round(float(sums[2, column])))
            if frames == 0:
                continue
            per_action[ACTION_NAMES[action_id]] = {
                "p1": float(sums[0, column]) / frames,
                "p2": float(sums[1, column]) / frames,
                "frames": frames,
            }
        if per_action:
            p1 = sum(v["p1"] for v in per_action.values()) / len(per_action)
            p2 = sum(v["p2"] for v in per_action.values()) / len(per_action)
        else:
            p1 = p2 = math.nan
        frames = sum(v["frames"] for v in per_action.values())
        return {"p1": p1, "p2": p2, "frames": frames, "per_action": per_action}

    def record(self, summary):
        return {key: summary[key] for key in ("p1", "p2", "frames", "per_action")}

    def format_table(self, summary):
        return format_table(summary)

    def scalars(self, summary):
        values = {"val/p1_mm": summary["p1"], "val/p2_mm": summary["p2"]}
        for name, per_action in summary["per_action"].items():
            values[f"val_p1_mm_per_action/{name}"] = per_action["p1"]
        return values

    def breakdown(self, summary):
        actions = summary["per_action"]
        return "action", {"P1 (mm)": {name: values["p1"] for name, values in actions.items()},
                          "P2 (mm)": {name: values["p2"] for name, values in actions.items()}}

    def headline(self, summary):
        return (f"P1 {summary['p1']:.2f} mm  P2 {summary['p2']:.2f} mm  "
                f"({summary['frames']} frames)")

    def sample_title(self, batch, position):
        action = int(batch["action"][position])
        return f"frame {int(batch['index'][position])} ({ACTION_NAMES.get(action, action)})"


def format_table(summary):
    """A per-action text table (action, frames, P1 mm, P2 mm) ending with the Average row."""
    width = max([len("Average")] + [len(name) for name in summary["per_action"]])
    header = f"{'Action':<{width}}  {'Frames':>8}  {'P1 (mm)':>8}  {'P2 (mm)':>8}"
    lines = [header, "-" * len(header)]
    for name, values in summary["per_action"].items():
        lines.append(f"{name:<{width}}  {values['frames']:>8d}  {values['p1']:>8.2f}  "
                     f"{values['p2']:>8.2f}")
    lines.append("-" * len(header))
    lines.append(f"{'Average':<{width}}  {summary['frames']:>8d}  {summary['p1']:>8.2f}  "
                 f"{summary['p2']:>8.2f}")
    return "\n".join(lines)
