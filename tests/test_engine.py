"""Engine pieces on a CPU with a tiny stand-in model: batches and flips, loss, the training step
(non-finite losses, stop requests), evaluation, loaders, checkpoints, distributed fallbacks."""

import errno
import math
import os
import pickle
import random
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn

import engine
from datasets.loaders import build_eval_loader, build_train_loader
from datasets.synthetic import write_pickle
from datasets.transforms import prepare_batch
from models.flip_test import predict
from models.loss import PoseLoss
from utils.signals import StopRequest
from utils import distributed as dist_utils
from utils.atomic_files import atomic_copy, atomic_write, atomic_write_text
from utils.checkpoint import (extract_state_dict, load_checkpoint, load_model_weights, save_checkpoint)
from utils.errors import MetaPoseError
from utils.flip import flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop
from utils.geometry import normalize_images
from utils.metrics_h36m import ActionErrorAccumulator, p_mpjpe

H, W = 8, 6


class FakeDataset(torch.utils.data.Dataset):
    """Samples shaped like PoseFrameDataset's; `flip` drawn from (epoch, index) like the real one."""

    def __init__(self, size, train=True):
        self.size, self.train, self.epoch = size, train, 0
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (size, 3, H, W), dtype=torch.uint8, generator=generator)
        self.kp2d = torch.rand(size, 17, 2, generator=generator) * 2 - 1
        self.kpcrop = torch.rand(size, 17, 2, generator=generator) * 190
        joints = torch.randn(size, 17, 3, generator=generator) * 0.3
        self.joints = joints - joints[:, :1]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        flip = self.train and (index * 7 + self.epoch * 3) % 5 < 2
        return {"image": self.images[index], "keypoints_2d": self.kp2d[index],
                "keypoints_2d_crop": self.kpcrop[index], "joints_3d": self.joints[index],
                "action": torch.tensor(2 + index % 15), "subject": torch.tensor(9),
                "index": torch.tensor(index), "flip": torch.tensor(flip)}


class FakeModel(nn.Module):
    """Maps 2D joints (and the image mean) to 3D joints; the MetaPose call signature."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(35, 51)
        self.dropout = nn.Dropout(0.1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images, keypoints_2d, keypoints_2d_crop, actions, return_aux=False):
        features = torch.cat([keypoints_2d.flatten(1), images.mean(dim=(1, 2, 3))[:, None]], dim=1)
        pose = self.dropout(self.linear(features)).view(-1, 17, 3)
        pose = pose - pose[:, :1]
        return (pose, {"kl": pose.square().mean()}) if return_aux else pose


CONTEXT = dist_utils.DistributedContext(rank=0, world_size=1, local_rank=0,
                                        device=torch.device("cpu"))


def make_loader(size=20, batch=4, train=True):
    dataset = FakeDataset(size, train)
    if train:
        return build_train_loader(dataset, batch, 0, seed=0, context=CONTEXT)
    return build_eval_loader(dataset, batch, 0, CONTEXT)


# ---------------------------------------------------------------------------------------------
# Batches and loss


def test_prepare_batch_flips_each_marked_sample_consistently():
    dataset = FakeDataset(4)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    batch["flip"] = torch.tensor([True, False, True, False])
    out = prepare_batch(batch, torch.device("cpu"))
    plain = normalize_images(batch["image"])
    for i in range(4):
        if batch["flip"][i]:
            assert torch.equal(out["images"][i], flip_images(plain[i]))
            assert torch.equal(out["keypoints_2d"][i], flip_keypoints_2d(batch["keypoints_2d"][i]))
            assert torch.equal(out["keypoints_2d_crop"][i],
                               flip_keypoints_crop(batch["keypoints_2d_crop"][i]))
            assert torch.equal(out["joints_3d"][i], flip_joints_3d(batch["joints_3d"][i]))
        else:
            assert torch.equal(out["images"][i], plain[i])
            assert torch.equal(out["keypoints_2d"][i], batch["keypoints_2d"][i])
            assert torch.equal(out["joints_3d"][i], batch["joints_3d"][i])
    assert out["images"].dtype == torch.float32 and out["actions"].dtype == torch.int64


def test_loss_terms_and_weights():
    pred, target = torch.zeros(2, 17, 3), torch.zeros(2, 17, 3)
    target[..., 0] = 0.03  # 30 mm on every joint
    terms = PoseLoss(mpjpe_weight=2.0)(pred, target)
    assert set(terms) == {"loss", "mpjpe"} and not PoseLoss().needs_aux
    assert terms["mpjpe"].item() == pytest.approx(0.03)
    assert terms["loss"].item() == pytest.approx(0.06)
    with_kl = PoseLoss(1.0, 0.5)(pred, target, {"kl": torch.tensor(4.0)})
    assert list(with_kl) == list(PoseLoss(1.0, 0.5).term_names)
    assert with_kl["loss"].item() == pytest.approx(0.03 + 2.0)


# ---------------------------------------------------------------------------------------------
# Training loop


def _train(model, loader, loss_fn=None, epoch=0, stop=None, max_bad_steps=20, fused=False,
           **kwargs):
    """fused: train.py's optimizer (steps skipped on the device, flags read one step later);
    otherwise the plain AdamW (flags read before each optimizer step)."""
    optimizer = engine.build_optimizer(model.trainable_parameters(), 1e-2, 0.01, fused=fused)
    settings = engine.StepSettings(max_bad_steps=max_bad_steps, log_every=2)
    loader.sampler.set_epoch(epoch)
    return engine.train_one_epoch(model, loss_fn or PoseLoss(), loader, optimizer,
                                  torch.device("cpu"), epoch, settings, stop=stop, **kwargs)


def test_train_one_epoch_reduces_loss_and_reports():
    torch.manual_seed(0)
    model, loader = FakeModel(), make_loader()
    first = _train(model, loader)
    for epoch in range(1, 6):
        last = _train(model, loader, epoch=epoch)
    assert first["steps"] == len(loader) == 5 and first["bad_steps"] == 0
    assert not first["interrupted"] and first["batches_done"] == 5
    assert last["mpjpe"] < first["mpjpe"] and first["samples_per_s"] > 0


class NanLoss(PoseLoss):
    """Non-finite on the steps listed in `bad`."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = set(bad), 0

    def forward(self, pred, target, aux=None):
        terms = super().forward(pred, target, aux)
        self.calls += 1
        if self.calls in self.bad:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_steps_are_skipped_and_counted(fused):
    torch.manual_seed(0)
    model, loader = FakeModel(), make_loader()
    before = [p.detach().clone() for p in model.parameters()]
    stats = _train(model, loader, loss_fn=NanLoss(bad={1, 2}), fused=fused)
    assert stats["bad_steps"] == 2 and stats["steps"] == 3 and np.isfinite(stats["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # Nothing but NaN: parameters untouched, and a clear error after max_bad_steps in a row.
    model = FakeModel()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MetaPoseError, match="not finite for 3 consecutive steps"):
        _train(model, loader, loss_fn=NanLoss(bad=range(100)), max_bad_steps=3, fused=fused)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_skipped_fused_step_changes_nothing():
    """The device-side skip leaves parameters, moments and step counts as they were: a NaN
    step between two good ones gives the weights of the two good steps alone."""
    torch.manual_seed(0)
    loader = make_loader(size=12, batch=4)  # 3 steps
    skipped = FakeModel()
    plain = FakeModel()
    plain.load_state_dict(skipped.state_dict())
    plain.dropout.p = skipped.dropout.p = 0.0
    _train(skipped, loader, loss_fn=NanLoss(bad={2}), fused=True)
    reference = engine.build_optimizer(plain.trainable_parameters(), 1e-2, 0.01, fused=True)
    loss_fn = PoseLoss()
    for number, batch in enumerate(loader, start=1):
        if number == 2:
            continue
        inputs = prepare_batch(batch, torch.device("cpu"))
        reference.zero_grad()
        loss_fn(plain(*engine.model_inputs(inputs)), inputs["joints_3d"])["loss"].backward()
        reference.step()
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), plain.parameters()))


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_steps_in_a_row_are_counted_across_epochs(fused):
    """Two bad steps at the end of an epoch and one at the start of the next are three in a row:
    train.max_bad_steps=3 fires (the count travels in the training state, also through resume)."""
    torch.manual_seed(0)
    model, loader = FakeModel(), make_loader()  # 5 steps per epoch
    stats = _train(model, loader, loss_fn=NanLoss(bad={4, 5}), max_bad_steps=3, fused=fused)
    assert stats["bad_steps"] == 2 and stats["bad_steps_in_a_row"] == 2
    with pytest.raises(MetaPoseError, match=r"not finite for 3 consecutive steps \(epoch 2, step 1"):
        _train(model, loader, loss_fn=NanLoss(bad={1}), epoch=1, max_bad_steps=3,
               bad_steps_in_a_row=stats["bad_steps_in_a_row"], fused=fused)
    # A good step in between resets the count.
    stats = _train(model, loader, loss_fn=NanLoss(bad={1, 5}), epoch=2, max_bad_steps=3,
                   bad_steps_in_a_row=1, fused=fused)
    assert stats["bad_steps"] == 2 and stats["bad_steps_in_a_row"] == 1


@pytest.mark.parametrize("fused, stops_after", [(False, 2), (True, 3)])
def test_stop_request_finishes_the_step_and_reports_position(fused, stops_after):
    """A stop requested during step 2 ends the epoch after step 2 (plain optimizer: the flags
    are read before each update) or step 3 (fused: read while the next step is queued)."""
    stop = StopRequest()

    class StopAfter(PoseLoss):
        calls = 0

        def forward(self, *args):
            StopAfter.calls += 1
            if StopAfter.calls == 2:
                stop.signum = 15  # as the SIGTERM handler does
            return super().forward(*args)

    stats = _train(FakeModel(), make_loader(), loss_fn=StopAfter(), stop=stop, fused=fused)
    assert stats["interrupted"] and stats["batches_done"] == stops_after
    assert stats["steps"] == stops_after
    assert stop.exit_code == 143


def test_stop_request_handles_real_signals():
    before = signal.getsignal(signal.SIGINT)  # whatever this test process had (pytest-xdist)
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code == 130
        os.kill(os.getpid(), signal.SIGTERM)  # a different second signal changes nothing
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_second_ctrl_c_waits_for_a_deferred_block():
    """While the trained epoch is written (StopRequest.deferred), a second Ctrl-C waits for the
    write to finish, then stops the run."""
    stop = StopRequest().install()
    finished = False
    try:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C
                finished = True  # the block still runs to its end
        assert finished
        with stop.deferred():  # nothing pending any more
            pass
    finally:
        stop.restore()


def test_resumable_sampler_skips_once():
    loader = make_loader(size=20, batch=4)
    loader.sampler.set_epoch(3)
    full = [batch["index"].tolist() for batch in loader]
    loader.sampler.skip_next(8)
    assert len(loader) == 3
    rest = [batch["index"].tolist() for batch in loader]
    assert rest == full[2:]
    assert [batch["index"].tolist() for batch in loader] == full


def test_epoch_reaches_persistent_workers():
    """The flip draws follow set_epoch even though the worker processes outlive the epoch."""
    dataset = FakeDataset(12)
    loader = build_train_loader(dataset, 4, 1, seed=0, context=CONTEXT)
    seen = {}
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            for index, flip in zip(batch["index"].tolist(), batch["flip"].tolist()):
                assert flip == ((index * 7 + epoch * 3) % 5 < 2)
                seen.setdefault(index, set()).add(flip)
    assert any(len(values) == 2 for values in seen.values())


# ---------------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_counts_every_frame_and_flip_test_averages():
    torch.manual_seed(0)
    model, loader = FakeModel(), make_loader(size=23, batch=5, train=False)
    result = engine.evaluate(model, loader, torch.device("cpu"), metrics=ActionErrorAccumulator(),
                             flip_test=True)
    assert result["frames"] == 23 and sum(v["frames"] for v in result["per_action"].values()) == 23
    assert np.mean([v["p1"] for v in result["per_action"].values()]) == pytest.approx(result["p1"])
    assert result["p2"] <= result["p1"]
    # The flip test is the mean of the plain and the mirrored-back prediction of the mirrored input.
    batch = next(iter(loader))
    inputs = prepare_batch(batch, torch.device("cpu"))
    with torch.no_grad():
        plain = model(inputs["images"], inputs["keypoints_2d"], inputs["keypoints_2d_crop"],
                      inputs["actions"])
        mirrored = model(flip_images(inputs["images"]), flip_keypoints_2d(inputs["keypoints_2d"]),
                         flip_keypoints_crop(inputs["keypoints_2d_crop"]), inputs["actions"])
        both = predict(model, inputs, flip_test=True)
    assert torch.allclose(both, (plain + flip_joints_3d(mirrored)) / 2, atol=1e-6)
    again = engine.evaluate(model, loader, torch.device("cpu"), metrics=ActionErrorAccumulator(),
                             flip_test=True)
    assert again["p1"] == result["p1"]  # evaluation is deterministic


class NonFiniteModel(FakeModel):
    """Predicts NaN joints for the frames whose first 2D keypoint x is above `threshold`."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, images, keypoints_2d, *args, **kwargs):
        pose = super().forward(images, keypoints_2d, *args, **kwargs)
        bad = keypoints_2d[:, 0, 0] > self.threshold
        return torch.where(bad[:, None, None], torch.full_like(pose, math.nan), pose)


def test_p_mpjpe_of_non_finite_frames_is_nan_and_leaves_the_others():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 17, 3, generator=generator), torch.randn(4, 17, 3,
                                                                            generator=generator)
    reference = p_mpjpe(pred, target)
    pred[1, 3, 0], pred[2, 0, 2] = math.nan, math.inf
    errors = p_mpjpe(pred, target)  # no "SVD did not converge"
    assert torch.isnan(errors[1]) and torch.isnan(errors[2])
    assert torch.equal(errors[[0, 3]], reference[[0, 3]])


def test_evaluate_says_the_model_produced_non_finite_outputs():
    loader = make_loader(size=23, batch=5, train=False)
    torch.manual_seed(0)
    with pytest.raises(MetaPoseError) as error:
        engine.evaluate(NonFiniteModel(threshold=0.5), loader, torch.device("cpu"),
                        metrics=ActionErrorAccumulator(), flip_test=False)
    kp_x = loader.dataset.kp2d[:, 0, 0]
    expected = int((kp_x > 0.5).sum())
    assert 0 < expected < 23
    assert f"non-finite 3D joints (NaN or Inf) for {expected} of 23 validation frames" in \
        str(error.value)
    assert "weights are finite" in str(error.value)
    model = FakeModel()
    with torch.no_grad():
        model.linear.weight[3, 4] = math.nan
    with pytest.raises(MetaPoseError, match="for 23 of 23 .* not finite \\(first 'linear.weight'"):
        engine.evaluate(model, loader, torch.device("cpu"), metrics=ActionErrorAccumulator(),
                        flip_test=True)


def test_non_finite_outputs_message_does_not_name_another_datasets_metrics():
    """On MPI-INF-3DHP (PCK / AUC / MPJPE) the message must not speak of H36M's P1/P2."""
    from utils.metrics_3dhp import PoseAccuracyAccumulator

    class OneSequence(PoseAccuracyAccumulator):  # the fake samples carry no sequence id
        def update_batch(self, pred, target, batch):
            self.update(pred, target, torch.zeros(pred.shape[0], dtype=torch.long))

    loader = make_loader(size=10, batch=5, train=False)
    with pytest.raises(MetaPoseError) as error:
        engine.evaluate(NonFiniteModel(threshold=-2.0), loader, torch.device("cpu"),
                        metrics=OneSequence(["TS1"]), flip_test=False)
    message = str(error.value)
    assert "for 10 of 10 validation frames" in message and "P1" not in message
    assert "MPJPE" in message


def test_evaluate_abandons_on_stop():
    stop = StopRequest()
    stop.signum = 2
    loader = make_loader(train=False)
    assert engine.evaluate(FakeModel(), loader, torch.device("cpu"),
                           metrics=ActionErrorAccumulator(), stop=stop) is None
    assert stop.exit_code == 130


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip_is_atomic(tmp_path):
    path = str(tmp_path / "ckpt" / "last.pt")
    state = {"model": FakeModel().state_dict(), "epoch": 3, "best_score": 41.3,
             "rng": dist_utils.get_rng_state(), "config": {"train": {"lr": 0.1}}}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["best_score"] == 41.3
    assert torch.equal(loaded["model"]["linear.weight"], state["model"]["linear.weight"])
    assert os.listdir(tmp_path / "ckpt") == ["last.pt"]  # no temporary file left behind
    atomic_copy(path, str(tmp_path / "ckpt" / "best.pt"))
    assert load_checkpoint(str(tmp_path / "ckpt" / "best.pt"))["epoch"] == 3
    atomic_write_text(str(tmp_path / "a.txt"), "hello\n")
    assert (tmp_path / "a.txt").read_text() == "hello\n"


def test_failed_write_keeps_previous_file(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["last.pt"]


class FullDisk:
    """A file object that raises ENOSPC once `room` bytes have been written (a full disk)."""

    def __init__(self, file, room):
        self.file, self.room, self.written = file, room, 0

    def write(self, data):
        if self.written + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.mark.parametrize("room", [0, 3000])
def test_full_disk_gives_one_message_and_keeps_the_old_file(tmp_path, monkeypatch, room):
    import utils.checkpoint as checkpoint_module

    path, text = str(tmp_path / "last.pt"), str(tmp_path / "metrics.jsonl")
    save_checkpoint({"epoch": 1, "w": torch.ones(10)}, path)
    atomic_write_text(text, "old\n")
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint_module.os, "fdopen",
                        lambda *a, **k: FullDisk(real_fdopen(*a, **k), room))
    with pytest.raises(MetaPoseError) as error:
        save_checkpoint({"epoch": 2, "w": torch.zeros(100000)}, path)
    message = str(error.value)
    assert message.startswith("the disk is full: writing '" + path + "' failed (No space left")
    assert "the previous 'last.pt' is intact" in message and "--resume" in message
    with pytest.raises(MetaPoseError, match="the disk is full: writing .*metrics.jsonl"):
        atomic_write_text(text, "x" * 100000)
    labels = str(tmp_path / "h36m_train.pkl")
    with pytest.raises(MetaPoseError, match="the disk is full: writing .*h36m_train.pkl"):
        write_pickle([{"joints_3d": np.zeros((17, 3))}] * 2000, labels)  # label files too
    with pytest.raises(MetaPoseError, match="the disk is full: writing .*data_test_3dhp.npz"):
        atomic_write(str(tmp_path / "data_test_3dhp.npz"),  # the helper of 3DHP label files
                     lambda handle: np.savez_compressed(handle, data=np.random.rand(100000)))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and open(text).read() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "metrics.jsonl"]  # no temporary left


def test_leftover_temporaries_are_found_and_removed(tmp_path):
    from utils.atomic_files import remove_temporaries

    atomic_write_text(str(tmp_path / "metrics.jsonl"), "{}\n")
    for name in (".metrics.jsonl.k3j4.tmp", ".last.pt.abcd.tmp"):
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("a user's file")  # not a temporary of ours
    removed = remove_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".last.pt.abcd.tmp",
                                                            ".metrics.jsonl.k3j4.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "notes.tmp"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp creates 0600 files; a run's files must be readable like any other file."""
    umask = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "config.yaml"), "a: 1\n")
        save_checkpoint({"epoch": 1}, str(tmp_path / "last.pt"))
    finally:
        os.umask(umask)
    for name in ("config.yaml", "last.pt"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~0o022, name


def test_nan_weights_are_refused_with_the_key(tmp_path):
    state = FakeModel().state_dict()
    state["linear.bias"][7] = math.inf
    with pytest.raises(MetaPoseError, match="non-finite weights .* first in 'linear.bias'"):
        load_model_weights(FakeModel(), state, "diverged.pt")


def test_bad_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(MetaPoseError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    good = str(tmp_path / "good.pt")
    save_checkpoint({"model": FakeModel().state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(good, "rb").read()[:300])
    with pytest.raises(MetaPoseError, match="truncated"):
        load_checkpoint(str(truncated))
    foreign = tmp_path / "notes.pt"
    foreign.write_text("these are not weights\n")
    with pytest.raises(MetaPoseError, match="notes.pt"):
        load_checkpoint(str(foreign))
    pickled = tmp_path / "object.pt"
    torch.save({"thing": random.Random(0)}, str(pickled))
    with pytest.raises(MetaPoseError, match="refused for safety"):
        load_checkpoint(str(pickled))
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MetaPoseError, match="plain.pkl"):
        load_checkpoint(str(plain_pickle))


def test_load_model_weights_names_the_first_mismatch():
    model = FakeModel()
    state = FakeModel().state_dict()
    state["linear.weight"] = torch.zeros(51, 36)
    with pytest.raises(MetaPoseError) as error:
        load_model_weights(model, state, "other.pt")
    assert "'linear.weight'" in str(error.value) and "(51, 36)" in str(error.value)
    assert "(51, 35)" in str(error.value)
    state = FakeModel().state_dict()
    state.pop("linear.bias")
    with pytest.raises(MetaPoseError, match="missing from the file, first 'linear.bias'"):
        load_model_weights(model, state, "other.pt")
    # DDP prefixes and the common wrappers are accepted.
    source = FakeModel()
    wrapped = {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}
    load_model_weights(model, extract_state_dict(wrapped), "wrapped.pt")
    assert torch.equal(model.linear.weight, source.linear.weight)
    with pytest.raises(MetaPoseError, match="not a model checkpoint"):
        extract_state_dict({"epoch": 3})


# ---------------------------------------------------------------------------------------------
# Distributed helpers without a process group


def test_single_process_fallbacks(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = dist_utils.init_distributed(device_type="cpu")
    assert (context.rank, context.world_size) == (0, 1)
    assert context.is_main and not context.distributed
    assert dist_utils.rank() == 0 and dist_utils.world_size() == 1 and dist_utils.is_main()
    tensor = torch.arange(3.0)
    assert torch.equal(dist_utils.all_reduce_sum(tensor), tensor)
    assert dist_utils.any_flag(False, True) == (False, True)
    assert dist_utils.broadcast_object({"a": 1}) == {"a": 1}
    assert dist_utils.main_first(lambda: 5) == 5
    dist_utils.barrier()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(MetaPoseError, match="WORLD_SIZE"):
        dist_utils.init_distributed(device_type="cpu")


def test_rng_state_round_trip_and_epoch_seeds():
    dist_utils.seed_everything(5)
    (state,) = dist_utils.gather_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(2), random.random()
    dist_utils.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    seeds = {dist_utils.epoch_seed(0, r, e) for r in range(4) for e in range(50)}
    assert len(seeds) == 200


# ---------------------------------------------------------------------------------------------
# Two gloo processes: a non-finite loss on one rank only


def _two_rank_nan_worker(rank, port, out_dir):
    """Rank `rank` of 2: one epoch where rank 1 alone has NaN losses on its steps 1 and 3, then an
    epoch where rank 1's loss is always NaN (max_bad_steps=3). Writes what happened to a file."""
    import datetime
    import json

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        context = dist_utils.DistributedContext(rank=rank, world_size=2, local_rank=rank,
                                                device=torch.device("cpu"))
        torch.manual_seed(0)
        model = FakeModel()
        ddp = nn.parallel.DistributedDataParallel(model)
        loader = build_train_loader(FakeDataset(40), 4, 0, seed=0, context=context)
        optimizer = engine.build_optimizer(model.trainable_parameters(), 1e-2, 0.01)  # fused
        settings = engine.StepSettings(max_bad_steps=3, log_every=100)
        loss_fn = NanLoss(bad={1, 3} if rank == 1 else ())
        stats = engine.train_one_epoch(ddp, loss_fn, loader, optimizer, torch.device("cpu"), 0,
                                       settings)
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        error = None
        try:
            engine.train_one_epoch(ddp, NanLoss(bad=range(100) if rank == 1 else ()), loader,
                                   optimizer, torch.device("cpu"), 1, settings)
        except MetaPoseError as caught:
            error = str(caught)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"steps": stats["steps"], "bad_steps": stats["bad_steps"],
                       "loss": stats["loss"], "checksum": checksum, "error": error}, handle)
    finally:
        torch.distributed.destroy_process_group()


def test_non_finite_loss_on_one_rank_is_skipped_on_every_rank(tmp_path):
    """Both ranks skip the same steps (no hang: DDP's gradient exchange is skipped by both), count
    them, keep identical weights, and stop together after max_bad_steps consecutive bad steps."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children reuse the imported modules (a spawn re-imports torch in each one).
    mp.start_processes(_two_rank_nan_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for result in ranks:
        assert result["steps"] == 3 and result["bad_steps"] == 2 and np.isfinite(result["loss"])
        assert "not finite for 3 consecutive steps (epoch 2, step 3" in result["error"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the averages are reduced over both ranks
