"""The metric set of the test-only dataset tests/h36m_by_subject.py: Protocol #1 (MPJPE, mm) per
subject and over all frames (the mean over frames, not over subjects)."""

import math

import torch

from utils.metric_set import MetricSet
from utils.metrics_h36m import mpjpe


class SubjectErrors(MetricSet):
    """MPJPE sums and frame counts per subject: a float64 state (2, S), S = len(subjects)."""

    score_key = "mpjpe"
    score_label = "MPJPE"
    lower_is_better = True

    def __init__(self, subjects):
        self.subjects = tuple(int(subject) for subject in subjects)
        super().__init__(torch.zeros(2, len(self.subjects), dtype=torch.float64))

    def update_batch(self, pred, target, batch):
        """pred, target (B, 17, 3) root-relative metres; batch["subject"] (B,) subject ids."""
        columns = torch.tensor([self.subjects.index(int(s)) for s in batch["subject"]])
        errors_mm = mpjpe(pred.double(), target.double()) * 1000.0
        self._state.index_add_(1, columns, torch.stack([errors_mm, torch.ones_like(errors_mm)]))

    def summary(self):
        sums, counts = self._state[0].cpu(), self._state[1].cpu()
        frames = int(round(float(counts.sum())))
        per_subject = {f"S{subject}": {"mpjpe": float(sums[i] / counts[i]),
                                       "frames": int(round(float(counts[i])))}
                       for i, subject in enumerate(self.subjects) if counts[i] > 0}
        total = float(sums.sum()) / frames if frames else math.nan
        return {"mpjpe": total, "frames": frames, "per_subject": per_subject}

    def record(self, summary):
        return {key: summary[key] for key in ("mpjpe", "frames", "per_subject")}

    def format_table(self, summary):
        lines = [f"{'Subject':<8}  {'Frames':>8}  {'MPJPE (mm)':>10}"]
        for name, values in summary["per_subject"].items():
            lines.append(f"{name:<8}  {values['frames']:>8d}  {values['mpjpe']:>10.2f}")
        lines.append(f"{'All':<8}  {summary['frames']:>8d}  {summary['mpjpe']:>10.2f}")
        return "\n".join(lines)

    def scalars(self, summary):
        values = {"val/mpjpe_mm": summary["mpjpe"]}
        for name, per_subject in summary["per_subject"].items():
            values[f"val_mpjpe_per_subject/{name}"] = per_subject["mpjpe"]
        return values

    def headline(self, summary):
        return f"MPJPE {summary['mpjpe']:.2f} mm ({summary['frames']} frames)"

    def sample_title(self, batch, position):
        return f"frame {int(batch['index'][position])} (S{int(batch['subject'][position])})"
