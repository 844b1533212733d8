"""train.flip_mode: per-sample flips (the dataset's marks) or the published whole-batch flips,
drawn as a pure function of (seed, epoch, batch index, rank) so a resumed epoch flips the same
batches."""

import torch

import engine
from datasets import build_dataset
from datasets.flip_draws import batch_flip_decision
from models.loss import PoseLoss
from datasets.loaders import build_train_loader
from tests.test_engine import CONTEXT, FakeDataset, FakeModel
from utils.config import load_config


def _flips_seen(monkeypatch, flip_mode, epoch=0, skip_batches=0, size=64, batch=4):
    """Runs one epoch of the engine and returns the flip marks of every batch it prepared."""
    seen = []
    original = engine.prepare_batch

    def recording(batch_dict, *args, **kwargs):
        marks = batch_dict.get("flip")  # a whole batch that does not flip carries no marks
        seen.append(torch.zeros(batch_dict["action"].shape[0], dtype=torch.bool)
                    if marks is None else marks.clone())
        return original(batch_dict, *args, **kwargs)

    monkeypatch.setattr(engine, "prepare_batch", recording)
    torch.manual_seed(0)
    model = FakeModel()
    loader = build_train_loader(FakeDataset(size), batch, 0, seed=0, context=CONTEXT)
    loader.sampler.set_epoch(epoch)
    if skip_batches:
        loader.sampler.skip_next(skip_batches * batch)
    settings = engine.StepSettings(log_every=100, flip_mode=flip_mode, flip_prob=0.5, seed=7)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    engine.train_one_epoch(model, PoseLoss(), loader, optimizer, torch.device("cpu"), epoch,
                           settings, skip_batches=skip_batches)
    return seen


def test_batch_mode_flips_whole_batches_deterministically(monkeypatch):
    seen = _flips_seen(monkeypatch, "batch")
    assert len(seen) == 16
    decisions = [bool(marks[0]) for marks in seen]
    assert all(torch.equal(marks, torch.full_like(marks, d)) for marks, d in zip(seen, decisions))
    assert decisions == [batch_flip_decision(7, 0, b, 0.5) for b in range(16)]
    assert 3 <= sum(decisions) <= 13  # both outcomes occur
    # a resumed epoch (first 5 batches already trained) flips the remaining batches the same way
    resumed = _flips_seen(monkeypatch, "batch", skip_batches=5)
    assert [bool(marks[0]) for marks in resumed] == decisions[5:]
    # another epoch, another draw
    assert [bool(m[0]) for m in _flips_seen(monkeypatch, "batch", epoch=1)] != decisions


def test_sample_mode_keeps_the_dataset_marks(monkeypatch):
    seen = _flips_seen(monkeypatch, "sample")
    assert any(0 < int(marks.sum()) < marks.numel() for marks in seen)  # mixed batches


def test_batch_decision_is_pure_and_per_process():
    draws = [[batch_flip_decision(3, epoch, b, 0.5) for b in range(200)] for epoch in range(2)]
    assert draws[0] == [batch_flip_decision(3, 0, b, 0.5) for b in range(200)]
    assert draws[0] != draws[1]
    assert 70 < sum(draws[0]) < 130
    assert draws[0] != [batch_flip_decision(3, 0, b, 0.5, rank=1) for b in range(200)]
    assert not any(batch_flip_decision(3, 0, b, 0.0) for b in range(50))


def test_dataset_leaves_flips_to_the_engine_in_batch_mode(tiny_h36m_dir):
    flags = [f"data.root={tiny_h36m_dir}", "data.synthetic.enabled=false"]
    sample = build_dataset(load_config("experiments/tests/tiny.yaml",
                                       flags + ["train.flip_mode=sample"]), "train")
    batch = build_dataset(load_config("experiments/tests/tiny.yaml",
                                      flags + ["train.flip_mode=batch"]), "train")
    assert sample.flip_prob == 0.5 and batch.flip_prob == 0.0
    assert not any(bool(batch[i]["flip"]) for i in range(len(batch)))
