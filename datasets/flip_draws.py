"""The training flips as pure functions of (seed, epoch, index): every DataLoader worker, process
and resumed run draws the same flips, whatever the loading order (docs/method.md §1.3)."""

import numpy as np

_FLIP_DOMAIN = 0x5F11B  # separates the flip stream from any other use of the same seed
_BATCH_FLIP_DOMAIN = 0xBA7C4F11B  # the whole-batch flips of train.flip_mode=batch


def flip_decision(seed, epoch, index, flip_prob, domain=_FLIP_DOMAIN):
    """Whether sample `index` is flipped in `epoch`: a pure function of its arguments.

    Every worker, process and resumed run draws the same value, whatever the loading order.
    """
    if flip_prob <= 0.0:
        return False
    entropy = [int(seed) % (1 << 63), int(epoch), int(index), int(domain)]
    draw = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return float(draw) / float(1 << 64) < flip_prob


def batch_flip_decision(seed, epoch, batch_index, flip_prob, rank=0):
    """Whether the whole `batch_index`-th batch of process `rank` flips in `epoch`
    (train.flip_mode=batch, the published augmentation): a pure function of its arguments, so a
    resumed run flips the same batches. Each process draws its own batches' flips."""
    return flip_decision(seed, epoch, batch_index, flip_prob,
                         domain=_BATCH_FLIP_DOMAIN + (int(rank) << 40))
