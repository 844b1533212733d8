"""Each joint's mean error over an evaluation pass, summed on the device as the batches come, so
that the pass still waits for the device only once, after its last batch (engine.evaluate)."""

import math

import torch

from utils.skeleton import NUM_JOINTS


class JointErrorSums:
    """Per-joint error sums (mm) and the frame count of one pass: a float64 tensor of
    NUM_JOINTS + 1 values on the predictions' device. The sums of several processes add up to
    those of the whole pass, like a metric set's state.

    The error of a joint is the one the dataset's metric set measures (`joint_errors_mm`), so
    the mean over joints of the per-joint means is the frame-averaged MPJPE of the pass.
    """

    def __init__(self, metrics, device):
        self.metrics = metrics
        self.sums = torch.zeros(NUM_JOINTS + 1, dtype=torch.float64, device=device)

    def add(self, pred, target, valid=None):
        """Adds a batch: pred, target (B, 17, 3) metres on the device; valid: optional (B,)
        bool (frames marked False are left out, as the metric sets leave them out)."""
        errors = self.metrics.joint_errors_mm(pred, target).double()            # (B, 17)
        if valid is None:
            self.sums[:-1] += errors.sum(dim=0)
            self.sums[-1] += errors.shape[0]
            return
        keep = valid.to(errors.device, non_blocking=errors.device.type == "cuda").bool()
        self.sums[:-1] += torch.where(keep[:, None], errors, 0.0).sum(dim=0)
        self.sums[-1] += keep.double().sum()

    def means_mm(self, sums):
        """The per-joint means (a list of NUM_JOINTS floats, NaN without frames) of `sums`, a
        host copy of `self.sums` (all-reduced over processes)."""
        values = sums.tolist()
        frames = values[-1]
        return [value / frames if frames else math.nan for value in values[:-1]]
