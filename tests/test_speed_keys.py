"""The `speed` section holds only settings of how the computation runs (amp, channels_last,
cudnn_benchmark, compile, cpu_threads). The fast paths are how the model always runs, not keys:
their old keys are refused as unknown, in experiment files, overrides and configs stored in
checkpoints, with a message that names the key."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from utils.checkpoint import save_checkpoint
from utils.cli import run_cli
from utils.config import config_from_mapping, load_config
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
NOT_KEYS = ("fast_sampling", "sample_then_project", "truncate_text", "cache_text", "pin_memory")


def test_speed_section_holds_only_settings():
    assert sorted(load_config(None).speed) == ["amp", "channels_last", "compile", "cpu_threads",
                                               "cudnn_benchmark"]


@pytest.mark.parametrize("name", NOT_KEYS)
def test_fast_path_keys_are_unknown_in_files_and_overrides(tmp_path, name):
    path = tmp_path / "old.yaml"
    path.write_text(f"speed:\n  {name}: false\n")
    for call in (lambda: load_config(str(path)),
                 lambda: load_config(None, [f"speed.{name}=false"])):
        with pytest.raises(MetaPoseError) as error:
            call()
        message = str(error.value)
        assert f"unknown config key 'speed.{name}'" in message
        # No suggestion of an unrelated key that merely shares the section name.
        assert "Did you mean" not in message, message
    with pytest.raises(MetaPoseError, match=str(path)):
        load_config(str(path))


def test_suggestions_still_find_near_misses():
    for wrong, meant in (("speed.amps=none", "speed.amp"), ("train.epoch=3", "train.epochs"),
                         ("train.flip_test=true", "eval.flip_test"),
                         ("trian.epochs=3", "train")):
        with pytest.raises(MetaPoseError, match=f"Did you mean '{meant}'"):
            load_config(None, [wrong])


def test_stored_config_with_a_removed_key_names_it_and_the_way_out():
    stored = json.loads(json.dumps(load_config(TINY)))
    stored["speed"]["fast_sampling"] = True
    with pytest.raises(MetaPoseError) as error:
        config_from_mapping(stored, "the config stored in 'best.pt'",
                            remedy="Pass --config FILE instead.")
    message = str(error.value)
    assert message.startswith("unknown config key 'speed.fast_sampling' in the config stored "
                              "in 'best.pt'.")
    assert message.endswith("Pass --config FILE instead.")


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A tiny model's checkpoint whose stored config holds keys an earlier version wrote."""
    from models import build_model

    config = load_config(TINY)
    torch.manual_seed(0)
    with pytest.warns(UserWarning):  # random initialisation
        model = build_model(config)
    stored = json.loads(json.dumps(config))
    stored["speed"].update(truncate_text=True, cache_text=True, fast_sampling=True,
                           sample_then_project=True, pin_memory=True)
    folder = tmp_path_factory.mktemp("old")
    path = str(folder / "best.pt")
    save_checkpoint({"model": model.state_dict(), "config": stored, "epoch": 1}, path)
    image = str(folder / "frame.jpg")
    cv2.imwrite(image, np.full((256, 192, 3), 128, np.uint8))
    return path, image


def test_tools_end_in_one_message_naming_the_key(old_checkpoint, tmp_path, capsys):
    from tools.infer import main

    path, image = old_checkpoint
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--checkpoint", path, "--input", image, "--action", "all",
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: unknown config key 'speed.") and "--config FILE" in last, err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.filterwarnings("ignore:the model's HRNet was randomly initialised")
def test_such_a_checkpoint_loads_with_its_experiment_file(old_checkpoint):
    from inference.loading import load_trained_model

    loaded = load_trained_model(old_checkpoint[0], config_path=TINY)
    assert loaded.config.model == load_config(TINY).model
