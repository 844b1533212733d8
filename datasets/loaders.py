"""DataLoaders over the samplers of datasets/samplers.py: resumable training epochs shared across
processes, exact evaluation shards, worker seeds that never touch the global RNG, workers that
let the main process stop cleanly when a signal reaches the whole process group
(utils/signals.py)."""

import os

import torch
from torch.utils.data import DataLoader, Sampler

from datasets.samplers import ShardSampler, TrainSampler
from utils.logger import get_logger
from utils.signals import worker_outlives_stop_signals

# Batches each DataLoader worker prepares ahead (torch's default prefetch_factor).
PREFETCH_FACTOR = 2


class EpochSyncedDataset(torch.utils.data.Dataset):
    """Makes `set_epoch` reach DataLoader workers that outlive an epoch (persistent_workers).

    Workers hold copies of the dataset made when they start; the epoch number lives here in a
    shared-memory tensor, and every `__getitem__` forwards it to the worker's copy first.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch):
        self._epoch.fill_(int(epoch))
        self.dataset.set_epoch(int(epoch))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        epoch = int(self._epoch)
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class ResumableSampler(Sampler):
    """Wraps a sampler so that the next pass can start after the first `skip` indices (resuming
    in the middle of an epoch: the batches already trained on are not loaded again)."""

    def __init__(self, sampler):
        self.sampler = sampler
        self._skip = 0

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def skip_next(self, count):
        """The next iteration leaves out its first `count` indices (applies once)."""
        self._skip = int(count)

    def __len__(self):
        return max(len(self.sampler) - self._skip, 0)

    def __iter__(self):
        indices = list(self.sampler)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def _loader_generator(seed):
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def build_train_loader(dataset, batch_size, num_workers, seed, context, pin_memory=True):
    """DataLoader over `dataset` for this process's share of each shuffled epoch.

    Uses TrainSampler (the same permutation on every rank, padded to equal shares) wrapped in a
    ResumableSampler. Batches are full (drop_last) whenever a process has at least one full
    batch, so every rank runs the same number of steps. Base seeds of the workers come from a
    dedicated generator, so creating an iterator never consumes the global RNG.
    """
    sampler = ResumableSampler(TrainSampler(len(dataset), context.world_size, context.rank,
                                            seed=seed, shuffle=True))
    return DataLoader(EpochSyncedDataset(dataset), batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers,
                      pin_memory=pin_memory and context.device.type == "cuda",
                      drop_last=len(sampler) >= batch_size, persistent_workers=num_workers > 0,
                      generator=_loader_generator(seed),
                      worker_init_fn=worker_outlives_stop_signals)


def build_eval_loader(dataset, batch_size, num_workers, context, pin_memory=True):
    """DataLoader over this process's contiguous shard (ShardSampler): every frame exactly once
    over all processes, no padding."""
    sampler = ShardSampler(len(dataset), context.world_size, context.rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory and context.device.type == "cuda", drop_last=False,
                      persistent_workers=num_workers > 0, generator=_loader_generator(0),
                      worker_init_fn=worker_outlives_stop_signals)


def shared_memory_needed(workers, batch_size, image_size):
    """Bytes of shared memory (/dev/shm) one process's DataLoader workers hold at once: each
    worker hands over PREFETCH_FACTOR batches of uint8 (3, H, W) images (the joints are small)
    through shared memory."""
    height, width = image_size
    return int(workers) * PREFETCH_FACTOR * int(batch_size) * 3 * int(height) * int(width)


def warn_if_shared_memory_is_short(workers, batch_sizes, image_size, processes=None,
                                   path="/dev/shm", free=None):
    """Warns (and returns the message) when /dev/shm has less room than the workers of the
    `processes` processes of this machine need (the larger of the training and evaluation
    batches in `batch_sizes`); None when it is enough, or there are no workers or no /dev/shm.
    Too little makes workers die with a bus error in the middle of an epoch."""
    if not workers:
        return None
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if free is None:
        try:
            stats = os.statvfs(path)
        except OSError:
            return None
        free = stats.f_bavail * stats.f_frsize
    per_process = max(shared_memory_needed(workers, batch, image_size) for batch in batch_sizes)
    needed = per_process * processes
    if needed <= free:
        return None
    gib = 1024 ** 3
    message = (f"{path} has {free / gib:.2f} GiB free, but the DataLoader workers of this "
               f"machine hold about {needed / gib:.1f} GiB there ({processes} process(es) x "
               f"data.num_workers={workers} x {PREFETCH_FACTOR} batches of up to "
               f"{max(batch_sizes)} images of {image_size[0]}x{image_size[1]}): workers may die "
               f"with a bus error. Give the container more (docker run --shm-size="
               f"{max(1, int(needed * 1.5 / gib + 0.999))}g, or --ipc=host), or lower "
               "data.num_workers or the batch sizes.")
    get_logger().warning("%s", message)
    return message
