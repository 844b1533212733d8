"""The training loss: a module that returns every weighted term by name (weights from YAML)."""

import torch.nn as nn

from utils.metrics_h36m import mpjpe


class PoseLoss(nn.Module):
    """Weighted sum of the training terms; returns every term by name for logging.

    Terms: "mpjpe" — Protocol #1 MPJPE in metres between the predicted and ground-truth
    root-relative poses (mean over joints and frames); "kl" — the transformation-alignment KL
    divergence reported by the model (only when its weight is non-zero).
    """

    def __init__(self, mpjpe_weight: float = 1.0, kl_weight: float = 0.0):
        super().__init__()
        self.mpjpe_weight = float(mpjpe_weight)
        self.kl_weight = float(kl_weight)

    @property
    def needs_aux(self):
        """Whether the model must be called with return_aux=True (for the KL term)."""
        return self.kl_weight > 0

    @property
    def term_names(self):
        """Keys of the dict that `forward` returns, in order."""
        return ("loss", "mpjpe", "kl") if self.needs_aux else ("loss", "mpjpe")

    def forward(self, pred, target, aux=None):
        """
        Args:
            pred: (B, 17, 3) predicted root-relative joints, metres.
            target: (B, 17, 3) ground-truth root-relative joints, metres.
            aux: the model's auxiliary outputs ({"kl": scalar tensor}) or None.
        Returns:
            dict of scalar tensors: "loss" (the weighted total), "mpjpe" (metres), and "kl"
            when its weight is non-zero.
        """
        terms = {"mpjpe": mpjpe(pred.float(), target.float()).mean()}
        total = self.mpjpe_weight * terms["mpjpe"]
        if self.needs_aux:
            if aux is None or "kl" not in aux:
                raise RuntimeError("loss.kl > 0 but the model returned no 'kl' term")
            terms["kl"] = aux["kl"].float()
            total = total + self.kl_weight * terms["kl"]
        return {"loss": total, **terms}


def build_loss(config):
    """PoseLoss with the weights of `config.loss`."""
    return PoseLoss(mpjpe_weight=config.loss.mpjpe, kl_weight=config.loss.kl)
