"""The host waits for the device at most once per training step, after the step is queued, and
never per evaluation batch (tests/sync_counter.py counts the calls that would wait on a GPU,
made by the repository's code, on the tiny model on a CPU)."""

import warnings

import pytest
import torch

import engine
from benchmarks.throughput import RepeatedBatches, random_host_batch
from models import build_model
from models.loss import build_loss
from tests.sync_counter import SyncCounter
from utils.config import load_config
from utils.metrics_h36m import ActionErrorAccumulator

TINY = "experiments/tests/tiny.yaml"
CPU = torch.device("cpu")


class Writer:
    """A TensorBoard writer stand-in (the per-step points are part of the step)."""

    def __init__(self):
        self.points = []

    def add_scalar(self, tag, value, step):
        self.points.append((tag, value, step))


def _tiny(*overrides):
    config = load_config(TINY, list(overrides))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is intended
        model = build_model(config)
    return model, config


def _train(model, config, batches, fused=True, **settings):
    optimizer = engine.build_optimizer(model.trainable_parameters(), config.train.lr,
                                       config.train.weight_decay, fused=fused)
    step_settings = engine.StepSettings.from_config(config)
    step_settings.log_every = 2  # log lines and TensorBoard points inside the counted steps
    for name, value in settings.items():
        setattr(step_settings, name, value)
    host = random_host_batch(4, config.data.image_size, pin=False)
    counter = SyncCounter()
    with counter:
        stats = engine.train_one_epoch(model, build_loss(config),
                                       counter.batches(RepeatedBatches(host, batches)),
                                       optimizer, CPU, 0, step_settings, writer=Writer())
    assert stats["steps"] == batches and stats["bad_steps"] == 0
    return counter.split()


@pytest.mark.parametrize("flip_mode, clip_grad", [("batch", None), ("sample", 1.0)])
def test_training_step_waits_once_after_the_step_is_queued(flip_mode, clip_grad):
    """Fused AdamW (train.py's): the flags and loss terms of step k are read while step k+1 is
    queued, so the first step reads nothing and every later one reads once; after the loop,
    the last step's record and the epoch's totals."""
    model, config = _tiny()
    before, steps, after, places = _train(model, config, 4, flip_mode=flip_mode,
                                          clip_grad=clip_grad)
    assert before == 0 and steps == [0, 1, 1, 1] and after == 2, places
    assert all("engine.py" in place for place in places), places


def test_unfused_optimizer_reads_each_step_before_its_update():
    model, config = _tiny()
    before, steps, after, places = _train(model, config, 3, fused=False)
    assert before == 0 and steps == [1, 1, 1] and after == 1, places


def test_the_counter_sees_waits_in_model_code():
    """Trained prompts on a CPU encode only the batch's distinct actions, which lists them on
    the host (a wait on a GPU): the counter sees it in the text encoder. On an accelerator the
    encoder encodes every action instead (encode_all_actions), and the step waits once."""
    model, config = _tiny("model.text_encoder.train_prompts=true")
    _, steps, _, places = _train(model, config, 3)
    assert steps[1:] == [2, 2] and any("text_encoder.py" in place for place in places), places
    model.text_encoder.encode_all_actions = True
    _, steps, _, places = _train(model, config, 3)
    assert steps == [0, 1, 1], places


def _evaluate(model, config, batches):
    host = random_host_batch(3, config.data.image_size, pin=False)
    counter = SyncCounter()
    with counter:
        summary = engine.evaluate(model, counter.batches(RepeatedBatches(host, batches)), CPU,
                                  metrics=ActionErrorAccumulator(), flip_test=True,
                                  num_visualize=2)
    assert summary["frames"] == 3 * batches
    return counter.split()


def test_evaluation_waits_only_after_the_last_batch():
    """No wait inside the loop; after it one transfer of all predictions and the metrics on the
    host: as many calls for 2 batches as for 5."""
    model, config = _tiny()
    model.eval()
    before, steps, after, places = _evaluate(model, config, 2)
    assert before == 0 and steps == [0, 0], places
    assert places[0] == "cpu at engine.py:" + places[0].split("engine.py:")[1]  # the transfer
    _, steps, after_five, _ = _evaluate(model, config, 5)
    assert steps == [0] * 5 and after_five == after
