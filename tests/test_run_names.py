"""Run directory names: a run is always one folder directly inside --logdir; a name that would
put it elsewhere, or that logs and TensorBoard cannot write, is refused before anything is
created (train.py runs in this process: it stops before building anything)."""

import os

import pytest

import train
from utils.cli import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, folders, files in os.walk(folder) for name in folders + files)


def _train(capsys, args):
    with pytest.raises(SystemExit) as stopped:
        run_cli(train.main, args)
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name, problem", [
    ("../escape", "holds '/', so the run directory would not be a folder directly inside "
                  "--logdir"),
    ("a/b", "holds '/'"),
    ("ABSOLUTE", "is an absolute path, not a folder name inside --logdir"),
    ("..", "is '..', which names --logdir itself or the folder above it"),
    ("", "is empty"),
    ("run\udcff", "holds bytes that are not UTF-8 text"),
    ("two\nlines", "holds control characters"),
    ("x" * 300, "is 300 bytes long, more than the 255 a folder name may have"),
])
def test_a_run_name_that_is_not_one_folder_inside_logdir_is_refused(tmp_path, capsys, name,
                                                                    problem):
    name = name.replace("ABSOLUTE", str(tmp_path / "elsewhere"))
    logdir = tmp_path / "logs"
    code, err = _train(capsys, ["--config", TINY, "--logdir", str(logdir), "--run-name", name,
                                "data.root=" + str(tmp_path / "data")])
    assert code == 2 and err.startswith("error: --run-name '") and problem in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree(tmp_path) == []  # nothing created, in --logdir or outside it
    if "\udcff" in name:
        assert "'run\\xff'" in err  # the byte is shown as what it is


def test_a_logdir_that_is_not_utf8_text_is_refused(tmp_path, capsys):
    code, err = _train(capsys, ["--config", TINY, "--logdir", str(tmp_path / "logs\udcff"),
                                "--run-name", "x", "data.root=" + str(tmp_path / "data")])
    assert code == 2 and "--logdir '" in err and "logs\\xff' is empty or holds bytes" in err
    assert _tree(tmp_path) == []


def test_a_default_name_made_from_a_config_file_name_is_checked_too(tmp_path, capsys):
    config = tmp_path / "bad\udcffname.yaml"
    config.write_text(f"_base_: {TINY}\n", encoding="utf-8")
    code, err = _train(capsys, ["--config", str(config), "--logdir", str(tmp_path / "logs"),
                                "data.root=" + str(tmp_path / "data")])
    assert code == 2, err
    assert err.startswith("error: the run directory name (made from the config file name) "
                          "'bad\\xffname_hrnet_32' holds bytes"), err
    assert _tree(tmp_path) == [config.name]
