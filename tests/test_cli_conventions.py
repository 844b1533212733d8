"""One command-line convention for every script (train.py, tools/*.py, benchmarks/*.py):
hyphenated flags with help, the same trailing KEY=VALUE overrides and --device everywhere, and
`python path/to/script.py --help` working from any folder. train.py also takes the underscore
spellings of the published commands."""

import argparse
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from utils.atomic_files import atomic_write_text, name_output_flag
from utils.cli import (DEVICE_HELP, DEVICE_METAVAR, OVERRIDES_HELP, OVERRIDES_METAVAR,
                       device_name)
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train.py"] + sorted(
    os.path.relpath(path, REPO) for folder in ("tools", "benchmarks")
    for path in glob.glob(os.path.join(REPO, folder, "*.py"))
    if os.path.basename(path) != "__init__.py")
# train.py's spellings of the published README (visible aliases) and the launcher's flag.
UNDERSCORE_OPTIONS = {"train.py": {"--image_encoder", "--text_encoder", "--local_rank"}}
HIDDEN_OPTIONS = {"train.py": {"--local-rank"}}  # passed by torch.distributed.launch
HYPHENATED = re.compile(r"-[a-zA-Z]|--[a-z0-9]+(-[a-z0-9]+)*")


def build_parser(script):
    """The argparse parser of `script` (a path relative to the repository), built in-process."""
    module = importlib.import_module(os.path.splitext(script)[0].replace(os.sep, "."))
    return module.build_parser()


def options(parser):
    return [action for action in parser._actions if action.option_strings
            and not isinstance(action, argparse._HelpAction)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_flags_are_hyphenated_and_documented(script):
    parser = build_parser(script)
    for action in options(parser):
        hidden = set(action.option_strings) & HIDDEN_OPTIONS.get(script, set())
        assert hidden or (action.help and action.help != argparse.SUPPRESS), \
            f"{script}: {action.option_strings} has no help"
        for option in action.option_strings:
            assert HYPHENATED.fullmatch(option) or option in UNDERSCORE_OPTIONS.get(script, ()), \
                f"{script}: {option} is not hyphenated"
    for action in parser._actions:
        if not action.option_strings:  # the only positional any script takes: the overrides
            assert (action.dest, action.nargs, action.metavar, action.help) == \
                ("overrides", "*", OVERRIDES_METAVAR, OVERRIDES_HELP), script
        device = "--device" in action.option_strings
        assert not device or (action.default, action.type, action.metavar, action.help) == \
            (None, device_name, DEVICE_METAVAR, DEVICE_HELP), script


def test_overrides_and_device_where_expected():
    """Every script that builds a model from a config takes the overrides; every one that runs a
    model on a chosen device takes --device (the test above checks they are spelled alike)."""
    takes = {script: {action.dest for action in build_parser(script)._actions}
             for script in SCRIPTS}
    with_overrides = {script for script, dests in takes.items() if "overrides" in dests}
    with_device = {script for script, dests in takes.items() if "device" in dests}
    assert with_overrides == {
        "train.py", "tools/convert_published_checkpoint.py", "tools/export.py",
        "tools/infer.py", "tools/pretrain_trunk.py", "tools/visualize.py",
        "benchmarks/inference.py", "benchmarks/pose_network.py", "benchmarks/roofline.py",
        "benchmarks/throughput.py"}
    assert with_device == {
        "tools/infer.py", "tools/visualize.py", "benchmarks/encoder.py",
        "benchmarks/inference.py", "benchmarks/pose_network.py", "benchmarks/text_path.py",
        "benchmarks/throughput.py"}


def test_overrides_may_sit_between_options():
    from tools import export

    args = export.parse_args(["a.b=1", "--checkpoint", "c.pt", "d.e=2", "--out", "x.onnx"])
    assert args.overrides == ["a.b=1", "d.e=2"] and args.checkpoint == "c.pt"


def test_device_names():
    parser = build_parser("tools/infer.py")
    required = ["--checkpoint", "c.pt", "--input", "i.jpg", "--out", "o"]
    for name in ("cpu", "cuda", "cuda:1"):
        assert parser.parse_args(required + ["--device", name]).device == name
    assert parser.parse_args(required).device is None  # resolve_device: cuda when available


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:"])
def test_bad_device_name_is_refused_by_the_parser(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser("benchmarks/text_path.py").parse_args(["--device", name])
    assert exit_info.value.code == 2 and "cpu, cuda or cuda:N" in capsys.readouterr().err


def test_train_takes_the_underscore_spellings_of_the_published_commands():
    import train

    hyphenated = train.parse_args([
        "--config", "c.yaml", "--image-encoder", "hrnet_48", "--text-encoder", "ViT-L/14",
        "--run-name", "r", "--allow-data-change", "--local-rank", "1", "a.b=1"])
    underscored = train.parse_args([
        "--config", "c.yaml", "--image_encoder", "hrnet_48", "--text_encoder=ViT-L/14",
        "--run_name=r", "--allow_data_change", "--local_rank", "1", "a.b=1"])
    assert vars(hyphenated) == vars(underscored)
    assert hyphenated.run_name == "r" and hyphenated.allow_data_change
    # Values, overrides and whatever follows `--` are left as written.
    args = train.parse_args(["--config", "c.yaml", "--run-name", "x_y", "some_key=1", "--",
                             "--run_name=z"])
    assert args.run_name == "x_y" and args.overrides == ["some_key=1", "--run_name=z"]
    text = train.build_parser().format_help()
    assert "--image_encoder" in text and "--text_encoder" in text  # the published spellings
    assert "--run_name" not in text and "--allow_data_change" not in text
    assert "--local" not in text
    with pytest.raises(MetaPoseError, match="unrecognized arguments: --run_nam"):
        train.parse_args(["--config", "c.yaml", "--run_nam", "x"])


def test_other_scripts_take_hyphenated_flags_only(capsys):
    from benchmarks import throughput

    for flag in ("--with_model", "--image_encoder"):
        with pytest.raises(SystemExit):
            throughput.parse_args([flag, "hrnet_32"])
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


# Runs `python SCRIPT --help` for each script in one interpreter (torch imported once): before
# each, sys.path is what `python SCRIPT` gives (the script's folder first, neither the current
# folder nor the repository) and every module of the repository is forgotten.
HELP_RUNNER = r"""
import contextlib, io, json, os, runpy, sys
repo, scripts = sys.argv[1], sys.argv[2:]
base = [p for p in sys.path if p and os.path.abspath(p) != repo]
results = {}
for script in scripts:
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(repo + os.sep):
            del sys.modules[name]
    path = os.path.join(repo, script)
    sys.path[:] = [os.path.dirname(path)] + base
    sys.argv = [path, "--help"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name="__main__")
        status = "finished without exiting"
    except SystemExit as exit:
        status = exit.code
    except BaseException as error:
        status = f"{type(error).__name__}: {error}"
    results[script] = [status, out.getvalue()]
print(json.dumps(results))
"""


def test_help_of_every_script_from_another_folder(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", HELP_RUNNER, REPO, *SCRIPTS], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for script in SCRIPTS:
        status, text = results[script]
        assert status in (0, None) and text.startswith("usage: "), (script, status)
        assert re.search(r"--[a-z]+_[a-z]", text.replace("--image_encoder", "")
                         .replace("--text_encoder", "")) is None, script


def test_config_defaults_do_not_depend_on_the_current_folder():
    for script in SCRIPTS:
        for action in build_parser(script)._actions:
            if action.dest == "config" and action.default is not None:
                assert os.path.isabs(action.default) and os.path.isfile(action.default), script


def test_write_errors_name_the_flag_that_chose_the_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    name_output_flag("--logdir", str(blocker))
    with pytest.raises(MetaPoseError, match=r"or pass another --logdir\)") as error:
        atomic_write_text(str(blocker / "run" / "metrics.jsonl"), "x")
    assert "--out" not in str(error.value)
    name_output_flag("--out", str(blocker / "run" / "prompts.yaml"))  # the closest one counts
    with pytest.raises(MetaPoseError, match=r"or pass another --out\)"):
        atomic_write_text(str(blocker / "run" / "prompts.yaml"), "x")
    other = tmp_path / "other_file"
    other.write_text("")
    with pytest.raises(MetaPoseError, match=r"or write to another folder\)") as error:
        atomic_write_text(str(other / "x.txt"), "x")
    assert "--logdir" not in str(error.value) and "--out" not in str(error.value)
