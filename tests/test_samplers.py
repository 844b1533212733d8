"""Distributed samplers: exact evaluation shards and shuffled, padded training shards."""

import collections

import pytest

from datasets.samplers import ShardSampler, TrainSampler
from utils.errors import MetaPoseError


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [1, 4, 7, 10, 13, 101])
def test_shards_cover_every_index_exactly_once(replicas, size):
    if replicas > size:
        with pytest.raises(MetaPoseError, match=f"{replicas} processes but only {size} validation"):
            ShardSampler(size, replicas, 0)
        return
    shards = [list(ShardSampler(size, replicas, rank)) for rank in range(replicas)]
    assert [len(ShardSampler(size, replicas, r)) for r in range(replicas)] == list(map(len, shards))
    assert sum(shards, []) == list(range(size))  # contiguous, in order, no duplicates, no padding
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_sampler_errors():
    with pytest.raises(MetaPoseError, match="empty"):
        ShardSampler(0, 1, 0)
    with pytest.raises(ValueError):
        ShardSampler(10, 2, 2)


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [5, 10, 13, 101])
def test_train_shards_are_padded_and_cover_everything(replicas, size):
    samplers = [TrainSampler(size, replicas, rank, seed=7) for rank in range(replicas)]
    for sampler in samplers:
        sampler.set_epoch(3)
    shards = [list(sampler) for sampler in samplers]
    per_rank = -(-size // replicas)
    assert all(len(shard) == per_rank == len(sampler) for shard, sampler in zip(shards, samplers))
    counts = collections.Counter(sum(shards, []))
    assert set(counts) == set(range(size))  # every index appears
    assert sum(counts.values()) - size == per_rank * replicas - size  # only the padding repeats
    assert max(counts.values()) <= 2


def test_train_order_depends_on_seed_and_epoch_only():
    sampler = TrainSampler(50, 2, 1, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1 and sorted(epoch0) != list(range(0, 50, 2))
    again = TrainSampler(50, 2, 1, seed=3)
    again.load_state_dict(sampler.state_dict())
    assert list(again) == epoch1
    again.set_epoch(0)
    assert list(again) == epoch0
    assert list(TrainSampler(50, 2, 1, seed=4)) != epoch0
    # Ranks draw from one shared permutation: together they hold it exactly.
    both = [TrainSampler(50, 2, rank, seed=3) for rank in range(2)]
    assert sorted(list(both[0]) + list(both[1])) == list(range(50))
    assert list(TrainSampler(6, 2, 0, shuffle=False)) == [0, 2, 4]


def test_train_sampler_handles_more_processes_than_samples():
    shards = [list(TrainSampler(3, 4, rank, seed=0)) for rank in range(4)]
    assert all(len(shard) == 1 for shard in shards)
    assert set(sum(shards, [])) == {0, 1, 2}
    with pytest.raises(MetaPoseError, match="empty"):
        TrainSampler(0, 1, 0)


def test_more_processes_than_frames_reads_in_good_english():
    with pytest.raises(MetaPoseError) as caught:
        ShardSampler(1, num_replicas=2, rank=0)
    assert "2 processes but only 1 validation frame:" in str(caught.value), str(caught.value)
