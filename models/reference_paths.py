"""A built MetaPose run on the plain computations that its fast paths replace, for tests and
benchmarks that compare the two (the model itself always runs the fast paths):

- every deformable sampling attention through `deformable_attention_reference` (one grid_sample
  and one projection per level, head and point, docs/method.md §2.4);
- the text encoder through `text_features_reference` (all 77 positions of every sentence,
  encoded again at every call, as the published implementation does);
- a frozen HRNet through `trunk_forward`: every convolution followed by its batch norm, instead
  of the batch norms folded into the convolutions (models/hrnet_folding.py).

Both give the fast paths' numbers up to float rounding (tests/test_speed_equivalence.py).
"""

import contextlib
import functools

from models.deformable_attention import DeformableSamplingAttention, deformable_attention_reference
from models.hrnet import HRNet, trunk_forward
from models.text_encoder import PromptedTextEncoder, text_features_reference

_REFERENCES = ((DeformableSamplingAttention, deformable_attention_reference),
               (PromptedTextEncoder, text_features_reference),
               (HRNet, trunk_forward))


@contextlib.contextmanager
def reference_paths(model):
    """Within the block, every DeformableSamplingAttention, PromptedTextEncoder and HRNet inside
    `model` computes its output with its reference function instead of its own forward; on
    leaving it they run their fast paths again. Yields `model`."""
    replaced = []
    for module in model.modules():
        for kind, reference in _REFERENCES:
            if isinstance(module, kind):
                module.forward = functools.partial(reference, module)
                replaced.append(module)
    try:
        yield model
    finally:
        for module in replaced:
            del module.forward  # the class's forward again
