"""Distributed samplers: shuffled, padded training shards and exact evaluation shards."""

import math

import numpy as np
import torch

from utils.errors import MetaPoseError


def _check_rank(num_replicas, rank):
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas}) processes")


class TrainSampler(torch.utils.data.Sampler):
    """Training indices for one process: a per-epoch permutation shared by all processes, padded
    (by repeating its start) so every process gets ceil(N / num_replicas) indices per epoch.

    The permutation depends only on (seed, epoch), so it is the same on every rank and after a
    resume; rank r takes positions r, r + R, r + 2R, ... of it.
    """

    def __init__(self, num_samples, num_replicas=1, rank=0, seed=0, shuffle=True):
        if num_samples < 1:
            raise MetaPoseError("the training set is empty: there are no frames to train on. "
                                "Check data.train_file and data.image_dir.")
        _check_rank(num_replicas, rank)
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.per_replica = math.ceil(self.num_samples / self.num_replicas)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.per_replica

    def __iter__(self):
        if self.shuffle:
            generator = np.random.Generator(np.random.PCG64([self.seed % (1 << 63), self.epoch]))
            order = generator.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = self.per_replica * self.num_replicas
        order = np.resize(order, total)  # pads by repeating from the start (any shortfall)
        return iter(order[self.rank::self.num_replicas].tolist())

    def state_dict(self):
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation indices for one process: a contiguous shard, no padding, no duplicates.

    Shards differ in size by at most one (the first N mod R ranks hold one more); together they
    hold every index exactly once, so metrics gathered from all ranks count each frame once.
    """

    def __init__(self, num_samples, num_replicas=1, rank=0):
        _check_rank(num_replicas, rank)
        if num_samples < 1:
            raise MetaPoseError("the validation set is empty: there are no frames to evaluate. "
                                "Check data.val_file and data.image_dir.")
        if num_replicas > num_samples:
            raise MetaPoseError(
                f"{num_replicas} processes but only {num_samples} validation "
                f"frame{'s' if num_samples != 1 else ''}: every "
                "process needs at least one frame. Use fewer processes or a larger validation set.")
        base, extra = divmod(int(num_samples), int(num_replicas))
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def set_epoch(self, epoch):
        """No effect (evaluation order is fixed); present so callers can treat samplers alike."""

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        return iter(range(self.start, self.stop))
