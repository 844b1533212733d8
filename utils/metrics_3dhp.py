"""MPI-INF-3DHP evaluation, the dataset's own protocol (docs/method.md §6): PCK@150 mm and AUC over
0, 5, ..., 150 mm on 14 joints, MPJPE on all 17, per sequence, per scene and in total.

Frames: valid test frames only (the dataset drops the others; `update` also takes a mask).
Coordinates: root-relative, both prediction and ground truth are centred at the pelvis first;
millimetres. Joint order: H36M (utils/skeleton.py), as every sample of the repository.

PCK(t) is the percentage of the 14 joints' errors strictly below t, so an error of exactly
150 mm does not count at 150 mm. Strictly below 0 mm is empty, which would make PCK(0) = 0 for
every prediction and cap the AUC at 30/31 = 96.8 %; at t = 0 the errors that are zero up to
float rounding (at most ZERO_MM = 1e-6 mm) count instead, so a perfect prediction scores AUC 100.
For any real prediction (no joint within a nanometre) this is the AUC of the dataset's script.
AUC is the mean of the 31 PCK values.

Scenes: GS (green screen) = TS1 + TS2, noGS = TS3 + TS4, Outdoor = TS5 + TS6. A scene, like the
total, pools the frames of its sequences (frame-weighted, not the mean of sequence figures).
"""

import math

import torch

from utils.metric_set import MetricSet

PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM = tuple(float(t) for t in range(0, 151, 5))  # 31 thresholds
ZERO_MM = 1e-6  # an error this small is a hit at the 0 mm threshold (float rounding of 0)
# The 14 joints of PCK and AUC, in H36M order: every joint except the pelvis (0), the belly
# (7, the 3DHP spine) and the nose (9, the 3DHP head), which the dataset's evaluation leaves out.
PCK_JOINTS = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
SCENES = {"GS": ("TS1", "TS2"), "noGS": ("TS3", "TS4"), "Outdoor": ("TS5", "TS6")}

_FRAMES, _MPJPE_SUM, _FIRST_COUNT = 0, 1, 2  # columns of the state


def joint_errors_mm(pred, target):
    """(B, 17) Euclidean joint errors in millimetres after centring both poses at the pelvis.

    Args:
        pred, target: (B, 17, 3) metres, H36M joint order (joint 0 = pelvis).
    """
    pred, target = pred.double(), target.double()
    offset = (pred - pred[:, :1]) - (target - target[:, :1])
    return torch.linalg.vector_norm(offset, dim=-1) * 1000.0


def threshold_counts(errors_mm):
    """(B, 31) per frame: how many of the 14 PCK joints are within each AUC threshold (strictly
    below t; at most ZERO_MM at t = 0, see the module docstring)."""
    selected = errors_mm[:, list(PCK_JOINTS)]                                   # (B, 14)
    thresholds = torch.tensor(AUC_THRESHOLDS_MM, dtype=selected.dtype, device=selected.device)
    within = selected[:, :, None] < thresholds                                  # (B, 14, 31)
    within[:, :, 0] = selected <= ZERO_MM
    return within.sum(dim=1).to(selected.dtype)


class PoseAccuracyAccumulator(MetricSet):
    """The MPI-INF-3DHP metric set: sums and counts per sequence; score MPJPE (lower is better,
    the number CA-PF reports for single-frame models; PCK and AUC are logged beside it).

    The state is one float64 tensor (S, 33) for the S sequences `sequence_names`: per row the
    frame count, the sum of per-frame MPJPE (mm), and for each of the 31 AUC thresholds the
    number of PCK joints within it. Counts are integers held exactly in float64, so PCK and AUC
    are identical whatever the number of processes; the state of several processes combines by
    summation (the engine all-reduces it).
    """

    score_key = "mpjpe"
    score_label = "MPJPE"
    lower_is_better = True
    overview_tags = ("val/mpjpe_mm", "val/pck", "val/auc")

    def __init__(self, sequence_names, device="cpu"):
        """sequence_names: names of the sequence ids 0..S-1 that samples carry ("TS1", ...)."""
        self.sequence_names = tuple(str(name) for name in sequence_names)
        if not self.sequence_names:
            raise ValueError("sequence_names must name at least one sequence")
        width = _FIRST_COUNT + len(AUC_THRESHOLDS_MM)
        super().__init__(torch.zeros(len(self.sequence_names), width, dtype=torch.float64,
                                     device=device))

    def update(self, pred, target, sequences, valid=None):
        """Adds a batch.

        Args:
            pred, target: (B, 17, 3) root-relative joints, metres, H36M order.
            sequences: (B,) int sequence ids (positions in `sequence_names`).
            valid: optional (B,) bool; frames marked False are left out.
        """
        sequences = torch.as_tensor(sequences).long().reshape(-1)
        if valid is not None:
            keep = torch.as_tensor(valid).bool().reshape(-1)
            pred, target, sequences = pred[keep], target[keep], sequences[keep]
        if sequences.numel() == 0:
            return
        if int(sequences.min()) < 0 or int(sequences.max()) >= len(self.sequence_names):
            raise ValueError(f"sequence ids must lie in 0..{len(self.sequence_names) - 1}, got "
                             f"values in {int(sequences.min())}..{int(sequences.max())}")
        errors = joint_errors_mm(pred, target)                                  # (B, 17)
        rows = torch.cat([torch.ones_like(errors[:, :1]), errors.mean(dim=1, keepdim=True),
                          threshold_counts(errors)], dim=1)                     # (B, 33)
        self._state.index_add_(0, sequences.to(self._state.device), rows.to(self._state))

    def update_batch(self, pred, target, batch):
        """Adds a batch of the engine (sequence ids from batch["sequence"], optional "valid")."""
        self.update(pred, target, batch["sequence"], batch.get("valid"))

    # -- results ---------------------------------------------------------------------------

    @staticmethod
    def _figures(rows):
        """{pck, auc, mpjpe, frames} of the summed state rows (frame-weighted pooling)."""
        total = rows.sum(dim=0)
        frames = int(round(float(total[_FRAMES])))
        if frames == 0:
            return {"pck": math.nan, "auc": math.nan, "mpjpe": math.nan, "frames": 0}
        curve = total[_FIRST_COUNT:] / (len(PCK_JOINTS) * frames) * 100.0
        return {"pck": float(curve[AUC_THRESHOLDS_MM.index(PCK_THRESHOLD_MM)]),
                "auc": float(curve.mean()), "mpjpe": float(total[_MPJPE_SUM]) / frames,
                "frames": frames}

    def summary(self):
        """{"pck", "auc" (%), "mpjpe" (mm), "frames" (total), "per_scene": {GS|noGS|Outdoor:
        {pck, auc, mpjpe, frames}}, "per_sequence": {name: {...}}}; sequences and scenes without
        frames are left out; NaN figures when nothing was added."""
        state = self._state.cpu()
        per_sequence = {name: self._figures(state[row:row + 1])
                        for row, name in enumerate(self.sequence_names)
                        if state[row, _FRAMES] > 0}
        per_scene = {}
        for scene, members in SCENES.items():
            rows = [row for row, name in enumerate(self.sequence_names)
                    if name in members and state[row, _FRAMES] > 0]
            if rows:
                per_scene[scene] = self._figures(state[rows])
        result = self._figures(state)
        result.update(per_scene=per_scene, per_sequence=per_sequence)
        return result

    def record(self, summary):
        return {key: summary[key]
                for key in ("pck", "auc", "mpjpe", "frames", "per_scene", "per_sequence")}

    def format_table(self, summary):
        """Rows per sequence, per scene and the total: frames, PCK (%), AUC (%), MPJPE (mm)."""
        names = list(summary["per_sequence"]) + list(summary["per_scene"]) + ["Total"]
        width = max(len(name) for name in names + ["Sequence"])
        header = f"{'Sequence':<{width}}  {'Frames':>8}  {'PCK':>6}  {'AUC':>6}  {'MPJPE (mm)':>10}"

        def row(name, values):
            return (f"{name:<{width}}  {values['frames']:>8d}  {values['pck']:>6.1f}  "
                    f"{values['auc']:>6.1f}  {values['mpjpe']:>10.2f}")

        lines = [header, "-" * len(header)]
        lines += [row(name, values) for name, values in summary["per_sequence"].items()]
        if summary["per_scene"]:
            lines.append("-" * len(header))
            lines += [row(name, values) for name, values in summary["per_scene"].items()]
        lines += ["-" * len(header), row("Total", summary)]
        return "\n".join(lines)

    def scalars(self, summary):
        values = {"val/pck": summary["pck"], "val/auc": summary["auc"],
                  "val/mpjpe_mm": summary["mpjpe"]}
        for scene, figures in summary["per_scene"].items():
            values[f"val_per_scene/{scene}_pck"] = figures["pck"]
            values[f"val_per_scene/{scene}_auc"] = figures["auc"]
            values[f"val_per_scene/{scene}_mpjpe_mm"] = figures["mpjpe"]
        return values

    def breakdown(self, summary):
        """Per scene (per sequence where no sequence belongs to a scene)."""
        kind, groups = ("scene", summary["per_scene"]) if summary["per_scene"] else \
            ("sequence", summary["per_sequence"])
        return kind, {"PCK@150 mm (%)": {name: values["pck"] for name, values in groups.items()},
                      "AUC (%)": {name: values["auc"] for name, values in groups.items()},
                      "MPJPE (mm)": {name: values["mpjpe"] for name, values in groups.items()}}

    def joint_errors_mm(self, pred, target):
        """Centred at the pelvis first, as this protocol's MPJPE (`joint_errors_mm` above)."""
        return joint_errors_mm(pred, target)

    def headline(self, summary):
        return (f"PCK {summary['pck']:.1f}  AUC {summary['auc']:.1f}  MPJPE "
                f"{summary['mpjpe']:.2f} mm  ({summary['frames']} frames)")

    def sample_title(self, batch, position):
        sequence = self.sequence_names[int(batch["sequence"][position])]
        return f"frame {int(batch['index'][position])} ({sequence})"
