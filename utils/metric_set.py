"""The metric-set interface: what evaluation needs from a dataset's metrics. engine.evaluate and
train.py use nothing else, so the loops stay dataset-agnostic; each dataset module names its own
set (datasets/registry.py; H36M: utils/metrics_h36m.py, MPI-INF-3DHP: utils/metrics_3dhp.py)."""

import math

import torch


class MetricSet:
    """Accumulates one evaluation pass and presents its result.

    The running state is one float64 tensor of sums and counts (`state()`), so the element-wise
    SUM of the states of all processes is the state of the whole pass: the engine all-reduces it
    and calls `load_state`, and every frame counts exactly once whatever the number of processes.

    Class attributes:
        score_key: the summary key that is "the" score (checkpoints/best.pt keeps the best one).
        score_label: its name in log lines, e.g. "P1".
        lower_is_better: whether a smaller score is better.
        overview_tags: the TensorBoard tags (of `scalars`) of the main figures, the score's
            first; the hparams view of TensorBoard compares runs on them.
    """

    score_key = None
    score_label = None
    lower_is_better = True
    overview_tags = ()

    def __init__(self, state):
        self._state = state

    # -- accumulation (subclasses) ---------------------------------------------------------

    def update_batch(self, pred, target, batch):
        """Adds a batch: pred, target (B, 17, 3) root-relative metres in H36M joint order (CPU);
        batch: the collated sample dict (the metrics read what else they need, e.g. actions)."""
        raise NotImplementedError

    def summary(self):
        """The result: a JSON-serialisable dict with "frames" and the score key."""
        raise NotImplementedError

    # -- presentation (subclasses) ---------------------------------------------------------

    def record(self, summary):
        """The fields of `summary` that metrics.jsonl and eval.json keep."""
        raise NotImplementedError

    def format_table(self, summary):
        """The multi-line text table of `summary` for the log."""
        raise NotImplementedError

    def scalars(self, summary):
        """{TensorBoard tag: value} of `summary`."""
        raise NotImplementedError

    def headline(self, summary):
        """One line with the main figures of `summary`."""
        raise NotImplementedError

    def sample_title(self, batch, position):
        """Title of sample `position` of `batch` in the figures drawn at evaluation."""
        return f"frame {int(batch['index'][position])}"

    def breakdown(self, summary):
        """The figures of `summary` per group of frames, for a bar chart: (group kind, e.g.
        "action", {figure label with its unit: {group name: value}}), or None."""
        return None

    def joint_errors_mm(self, pred, target):
        """(B, 17) Euclidean error of each joint in millimetres, as the dataset's protocol
        measures it (root-relative poses compared as they are); pred, target (B, 17, 3) metres.
        Runs on the tensors' device, so evaluation sums it per joint without waiting."""
        return torch.linalg.vector_norm(pred.float() - target.float(), dim=-1) * 1000.0

    # -- shared ----------------------------------------------------------------------------

    def is_better(self, score, best):
        """Whether `score` beats `best` (None or NaN: nothing to beat yet; a NaN score never
        wins)."""
        if score is None or math.isnan(score):
            return False
        if best is None or math.isnan(best):
            return True
        return score < best if self.lower_is_better else score > best

    def state(self):
        """A copy of the running sums (float64 tensor on the accumulator's device)."""
        return self._state.clone()

    def load_state(self, state):
        """Replaces the running sums, e.g. with the all-reduced sum over processes."""
        self._state = state.detach().to(self._state).clone()

    def merge(self, state):
        """Adds another accumulator's `state()` to this one."""
        self._state += state.detach().to(self._state)

    def reset(self):
        self._state.zero_()

