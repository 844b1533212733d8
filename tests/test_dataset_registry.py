"""The dataset registry: every registered dataset provides every part (built, checked, prepared,
synthesised, scored), the names offered by the config and tools/make_synthetic.py are the
registered ones, a module without a part is a clear error, and a third dataset (one dataset
module, one metrics module, one YAML) trains and evaluates through train.py."""

import glob
import json
import os
import re
import sys
import types

import pytest
import torch
import yaml

from datasets import build_dataset, build_metric_set
from datasets.registry import DATASET_MODULES, PARTS, dataset_module, dataset_names
from tests.launch import run_train_in_fork
from tools import make_synthetic
from utils.config import CHOICES, load_config
from utils.errors import MetaPoseError
from utils.metric_set import MetricSet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIRD = "h36m_by_subject"
THIRD_YAML = os.path.join(REPO, "tests", "data", "h36m_by_subject.yaml")
SCORING_METHODS = ("update_batch", "summary", "record", "format_table", "scalars", "headline")


def tiny_config_of(name):
    """The experiments/tests YAML that trains dataset `name` (each dataset has one)."""
    for path in sorted(glob.glob(os.path.join(REPO, "experiments", "tests", "*.yaml"))):
        if load_config(path).data.dataset == name:
            return path
    raise AssertionError(f"no experiments/tests/*.yaml has data.dataset: {name}")


def test_the_config_and_the_tools_offer_the_registered_names():
    assert tuple(CHOICES["data.dataset"]) == dataset_names() == ("h36m", "mpi_inf_3dhp")
    for name in dataset_names():
        assert make_synthetic.parse_args(["--dataset", name, "--out", "x"]).dataset == name
    with pytest.raises(MetaPoseError, match="'data.dataset' .* is 'coco'; valid values are "
                                            "'h36m', 'mpi_inf_3dhp'"):
        load_config(None, ["data.dataset=coco"])


@pytest.mark.parametrize("name", dataset_names())
def test_every_registered_dataset_provides_every_part(name):
    module = dataset_module(name)
    assert all(hasattr(module, part) for part in PARTS)
    assert module.TITLE.strip()
    tools = re.findall(r"tools/\w+\.py", module.PREPARE_HINT)  # names its preparation tool
    assert tools and all(os.path.isfile(os.path.join(REPO, tool)) for tool in tools)
    module.check_settings(load_config(tiny_config_of(name)))  # its own YAML is served


def _batches(dataset, size=4):
    loader = torch.utils.data.DataLoader(dataset, batch_size=size, shuffle=False)
    return list(loader)


@pytest.mark.parametrize("name", dataset_names())
def test_every_registered_dataset_is_synthesised_built_and_scored(name, tmp_path):
    config = load_config(tiny_config_of(name), [
        f"data.root={tmp_path}", "data.synthetic.enabled=true", "data.synthetic.train_frames=8",
        "data.synthetic.val_frames=6"])
    train = build_dataset(config, "train")  # writes the synthetic set first
    validation = build_dataset(config, "validation")
    assert (len(train), len(validation)) == (8, 6) and train.train and not validation.train

    metrics = build_metric_set(config, validation)
    assert isinstance(metrics, MetricSet)
    for method in SCORING_METHODS:  # its own scoring, not the interface's NotImplementedError
        assert getattr(type(metrics), method) is not getattr(MetricSet, method), method
    batches = _batches(validation)
    for batch in batches:  # perfect predictions
        metrics.update_batch(batch["joints_3d"], batch["joints_3d"], batch)
    perfect = metrics.summary()
    assert perfect["frames"] == len(validation)
    metrics.reset()
    for batch in batches:  # every joint but the root 30 mm off
        off = batch["joints_3d"] + torch.tensor([0.03, 0.0, 0.0]) * (torch.arange(17) > 0)[:, None]
        metrics.update_batch(off, batch["joints_3d"], batch)
    worse = metrics.summary()
    assert metrics.is_better(perfect[metrics.score_key], worse[metrics.score_key])
    assert not metrics.is_better(worse[metrics.score_key], perfect[metrics.score_key])
    json.dumps(metrics.record(worse))
    assert metrics.format_table(worse) and metrics.headline(worse)
    assert all(isinstance(value, float) for value in metrics.scalars(worse).values())
    assert metrics.sample_title(batches[0], 1).startswith(f"frame {int(batches[0]['index'][1])}")


@pytest.mark.parametrize("name", dataset_names())
def test_a_missing_label_file_names_the_preparation_and_the_synthetic_set(name, tmp_path):
    config = load_config(tiny_config_of(name), [f"data.root={tmp_path}",
                                                "data.synthetic.enabled=false"])
    with pytest.raises(MetaPoseError) as error:
        build_dataset(config, "train")
    message = str(error.value)
    module = dataset_module(name)
    assert module.PREPARE_HINT in message and module.TITLE in message
    assert f"tools/make_synthetic.py --dataset {name} --out DIR" in message


def test_a_dataset_module_without_a_metric_set_is_a_clear_error(monkeypatch, tmp_path):
    from tests import h36m_by_subject

    partial = types.ModuleType("tests.no_metric_set")
    for part in PARTS:
        if part != "metric_set":
            setattr(partial, part, getattr(h36m_by_subject, part))
    monkeypatch.setitem(sys.modules, "tests.no_metric_set", partial)
    monkeypatch.setitem(DATASET_MODULES, "no_metric_set", "tests.no_metric_set")
    config = load_config(tiny_config_of("h36m"), [f"data.root={tmp_path}",
                                                  "data.dataset=no_metric_set"])
    for attempt in (lambda: build_dataset(config, "validation"),
                    lambda: build_metric_set(config, None)):
        with pytest.raises(MetaPoseError, match=r"the module 'tests.no_metric_set' of dataset "
                                                r"'no_metric_set' lacks metric_set: every dataset "
                                                r"module provides"):
            attempt()


@pytest.fixture
def third_dataset(monkeypatch):
    """The test-only dataset registered as every dataset is: one line in DATASET_MODULES."""
    monkeypatch.setitem(DATASET_MODULES, THIRD, "tests.h36m_by_subject")
    return THIRD


def test_a_third_dataset_is_a_module_a_metrics_module_and_a_yaml(third_dataset, tmp_path):
    data, logs = str(tmp_path / "data"), str(tmp_path / "logs")
    assert make_synthetic.main(["--dataset", THIRD, "--out", data, "--train-frames", "16",
                                "--val-frames", "7", "--seed", "1"]) == 0

    with pytest.raises(MetaPoseError, match="scored on ground-truth 2D joints"):
        build_dataset(load_config(THIRD_YAML, [f"data.root={data}", "data.keypoints_2d=cpn"]),
                      "validation")

    common = ["--config", THIRD_YAML, "--logdir", logs, f"data.root={data}",
              "data.synthetic.enabled=false", "train.epochs=1", "train.batch_size=8"]
    output = str(tmp_path / "train.txt")
    assert run_train_in_fork(common + ["--run_name", "train"], output=output) == 0, \
        open(output).read()[-3000:]
    run_dir = os.path.join(logs, "train")
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        (record,) = [json.loads(line) for line in handle]
    assert record["epoch"] == 1 and record["frames"] == 7
    assert set(record["per_subject"]) == {"S9", "S11"}  # the synthetic validation subjects
    assert sum(v["frames"] for v in record["per_subject"].values()) == 7
    assert "MPJPE (mm)" in open(os.path.join(run_dir, "log.txt"), encoding="utf-8").read()
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["data"]["dataset"] == THIRD
    best = torch.load(os.path.join(run_dir, "checkpoints", "best.pt"), map_location="cpu",
                      weights_only=True)
    assert best["best_score"] == record["mpjpe"] and best["best_epoch"] == 1

    output = str(tmp_path / "eval.txt")
    assert run_train_in_fork(common + ["--run_name", "eval", "--eval", "--checkpoint",
                                       os.path.join(run_dir, "checkpoints", "best.pt")],
                             output=output) == 0, open(output).read()[-3000:]
    with open(os.path.join(logs, "eval", "eval.json"), encoding="utf-8") as handle:
        evaluation = json.load(handle)
    assert evaluation["mpjpe"] == pytest.approx(record["mpjpe"], rel=1e-6)
    for name, values in record["per_subject"].items():
        assert evaluation["per_subject"][name]["frames"] == values["frames"]
        assert evaluation["per_subject"][name]["mpjpe"] == pytest.approx(values["mpjpe"], rel=1e-6)
