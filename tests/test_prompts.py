"""Prompts files (validation, sentences) and tools/import_prompts.py (parses, never runs, the
published train.py; tested on fake files with placeholder sentences)."""

import re
import textwrap

import pytest
import yaml

from models.prompts import (ACTION_NAME_ORDER, DEFAULT_PROMPTS_FILE, load_prompts, parse_prompts,
                            resolve_prompts_path)
from models.text_encoder import read_positions, tokenize_rows
from tests.placeholder_prompts import placeholder_content, write_prompts_file
from tools import import_prompts
from utils.cli import run_cli
from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, ACTION_NAMES, BODY_PARTS, JOINT_NAMES


def test_default_prompts_file_is_complete_and_fits_both_layouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found from any working directory
    prompts = load_prompts(DEFAULT_PROMPTS_FILE)
    assert prompts.joints == JOINT_NAMES and prompts.parts == BODY_PARTS
    assert set(prompts.descriptions) == set(ACTION_NAMES.values())
    for mode in ("joint", "joint_action"):
        labels, rows = prompts.rows(mode)
        ids = tokenize_rows(labels, rows, prompts.path)
        read_positions(ids, labels, "sot_first", 10, prompts.path)  # raises if one does not fit
        published = read_positions(ids, labels, "published", 10, prompts.path)
        assert (published >= 10).all()  # every feature is read on a word, not on a prompt


def test_rows_use_the_action_of_their_own_row():
    prompts = parse_prompts(placeholder_content(template="{action}|{description}|{joint}|{part}"),
                            "x.yaml")
    labels, rows = prompts.rows("joint_action")
    assert labels == list(ACTION_NAME_ORDER) == [ACTION_NAMES[i] for i in ACTION_IDS]
    for label, row in zip(labels, rows):
        for j, sentence in enumerate(row):
            assert sentence == (f"{label}|{prompts.descriptions[label]}|{prompts.joints[j]}|"
                                f"{prompts.parts[j]}")
    assert rows[ACTION_NAME_ORDER.index("TakingPhoto")][0].startswith("TakingPhoto|")
    labels, rows = prompts.rows("joint")
    assert labels == [None] and rows == [list(prompts.joints)]


def test_round_trip_through_yaml(tmp_path):
    content = placeholder_content(template="it's {{braced}} \"{joint}\": {description}  ")
    prompts = parse_prompts({"source": "tests", **content}, "x.yaml")
    path = tmp_path / "p.yaml"
    path.write_text(prompts.to_yaml(), encoding="utf-8")
    again = load_prompts(str(path))
    assert (again.template, again.joints, again.descriptions, again.source) == \
        (prompts.template, prompts.joints, prompts.descriptions, "tests")
    assert again.rows("joint_action") == prompts.rows("joint_action")


def _broken(change):
    content = placeholder_content()
    change(content)
    return content


BROKEN_FILES = [
    ("missing action", lambda c: c["descriptions"].pop("WalkDog"),
     r"'descriptions' lacks the action\(s\) WalkDog"),
    ("unknown action", lambda c: c["descriptions"].update(Walkdog="x"),
     r"unknown action 'Walkdog' \(did you mean 'WalkDog'\?\)"),
    ("unknown slot", lambda c: c.update(template="{joint} {actoin} {description}"),
     r"'template' has the slot \{actoin\}"),
    ("action slot in joint mode", lambda c: c.update(joint_template="{joint} {action}"),
     r"'joint_template' has the slot \{action\}; its slots are \{joint\}, \{part\}"),
    ("format spec", lambda c: c.update(template="{joint:>10} {description}"),
     r"has the slot \{joint:>10\}"),
    ("positional slot", lambda c: c.update(template="{} {joint} {description}"),
     r"has the slot \{\}"),
    ("unbalanced brace", lambda c: c.update(template="{joint} {description"),
     r"'template' is not a valid template"),
    ("no joint slot", lambda c: c.update(template="{part} {description}"),
     r"'template' has no \{joint\} slot"),
    ("no action slot", lambda c: c.update(template="{joint} {part}"),
     r"neither an \{action\} nor a \{description\} slot"),
    ("wrong joint count", lambda c: c["joints"].pop(),
     r"'joints' holds 16 entries; it must be a list of 17 strings"),
    ("non-string part", lambda c: c["parts"].__setitem__(3, 7), r"'parts' entry 3 is 7"),
    ("non-string description", lambda c: c["descriptions"].update(Eating=["a"]),
     r"'descriptions.Eating' is \['a'\]"),
    ("unknown key", lambda c: c.update(templates="x"), r"unknown key 'templates'"),
    ("missing key", lambda c: c.pop("parts"), r"lacks the key\(s\) parts"),
]


@pytest.mark.parametrize("name, change, message", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_broken_prompts_files_name_the_file_and_the_key(tmp_path, name, change, message):
    path = write_prompts_file(tmp_path / "broken.yaml", _broken(change))
    with pytest.raises(MetaPoseError, match=message) as error:
        load_prompts(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("key, repeat", [
    ("template", lambda text: text + "template: '{joint} {action}'\n"),
    ("descriptions.Walking", lambda text: text.replace("  Walking:", "  Walking: once\n  Walking:")),
])
def test_a_key_written_twice_in_a_prompts_file_is_refused(tmp_path, key, repeat):
    path = tmp_path / "twice.yaml"
    write_prompts_file(path, placeholder_content())
    path.write_text(repeat(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(MetaPoseError, match=f"prompts file '{re.escape(str(path))}' has the key "
                                            f"'{re.escape(key)}' twice"):
        load_prompts(str(path))


def test_a_prompts_path_that_is_not_a_regular_file_is_named_as_what_it_is(tmp_path):
    with pytest.raises(MetaPoseError, match="is a folder, not a file. Point "
                                            "model.text_encoder.prompts at"):
        load_prompts(str(tmp_path))
    with pytest.raises(MetaPoseError, match="is a device, not a regular file"):
        load_prompts("/dev/zero")


def test_unreadable_prompts_files(tmp_path):
    with pytest.raises(MetaPoseError, match=r"'nope\.yaml' does not exist\. Point "
                                            r"model\.text_encoder\.prompts at"):
        load_prompts("nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("template: [unclosed\n", encoding="utf-8")
    with pytest.raises(MetaPoseError, match=r"not valid YAML at line"):
        load_prompts(str(bad))
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(MetaPoseError, match="must hold a mapping"):
        load_prompts(str(bad))
    bad.write_text("!!python/object:os.system {}\n", encoding="utf-8")  # safe_load refuses
    with pytest.raises(MetaPoseError, match="not valid YAML"):
        load_prompts(str(bad))
    assert resolve_prompts_path(DEFAULT_PROMPTS_FILE).endswith(DEFAULT_PROMPTS_FILE)


# ------------------------------------------------------------------------ tools/import_prompts

PLACEHOLDER_TEMPLATE = "placeholder {joint} of {part} doing {action}, {description}"


def fake_train_py(template=repr(PLACEHOLDER_TEMPLATE), joints=None, parts=None, actions=None,
                  extra=""):
    """A train.py shaped like the published one, with placeholder sentences (not the authors')."""
    content = placeholder_content()
    joints = joints if joints is not None else repr(content["joints"])
    parts = parts if parts is not None else repr(content["parts"])
    actions = actions if actions is not None else repr(content["descriptions"])
    return textwrap.dedent(f"""\
        import sys
        import package_that_is_not_installed  # never imported by the tool
        raise SystemExit("this file must never run")


        def one_epoch_full(model, loader, optimizer):
            template = {template}
            pre_text_joint = {joints}
            pre_text_part = {parts}
            pre_text_action = {actions}
            for batch in loader:
                text = [template.format(joint=j, part=p, action=a, description=d)
                        for j, p, a, d in batch]
        """) + extra


def run_tool(tmp_path, source, capsys):
    train_py = tmp_path / "train.py"
    train_py.write_text(source, encoding="utf-8")
    out = tmp_path / "imported.yaml"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(import_prompts.main, ["--train-py", str(train_py), "--out", str(out)])
    return exit_info.value.code, capsys.readouterr(), out


def test_import_tool_writes_the_sentences_of_train_py(tmp_path, capsys):
    code, output, out = run_tool(tmp_path, fake_train_py(), capsys)
    assert code == 0 and "wrote" in output.out
    prompts = load_prompts(str(out))
    content = placeholder_content()
    assert prompts.template == PLACEHOLDER_TEMPLATE and prompts.joint_template == "{joint}"
    assert list(prompts.joints) == content["joints"] and list(prompts.parts) == content["parts"]
    assert prompts.descriptions == content["descriptions"]
    assert "sha256" in prompts.source and "train.py" in prompts.source
    assert out.read_text(encoding="utf-8").startswith("# The published MetaPose sentences")
    labels, rows = prompts.rows("joint")
    assert rows[0] == content["joints"]  # the published joint mode: joint names alone
    # Same values assigned twice (e.g. in two functions) are fine.
    extra = f"def other():\n    template = {PLACEHOLDER_TEMPLATE!r}\n"
    assert run_tool(tmp_path, fake_train_py(extra=extra), capsys)[0] == 0


BROKEN_TRAIN_PY = [
    ("missing assignment", dict(parts="None"), r"`pre_text_part` must be a list of 17 strings"),
    ("non-literal", dict(template="'{joint}' + suffix"),
     r"line 7: the value of `template` is not a literal"),
    ("wrong count", dict(joints=repr(["a"] * 16)),
     r"`pre_text_joint` must be a list of 17 strings .*found 16 entries"),
    ("unknown action", dict(actions=repr({**placeholder_content()["descriptions"],
                                          "Jumping": "x"})),
     r"`pre_text_action` must name exactly the 15 H36M actions .*unknown: 'Jumping'"),
    ("missing action", dict(actions=repr({k: v for k, v in
                                          placeholder_content()["descriptions"].items()
                                          if k != "Posing"})),
     r"missing: Posing"),
    ("bad slot", dict(template=repr("{joint} {verb} {description}")),
     r"do not form a valid prompts file: .*has the slot \{verb\}"),
    ("differing duplicates", dict(extra="\ntemplate = 'other {joint} {description}'\n"),
     r"assigns different values to `template` \(lines 7, 15\)"),
]


@pytest.mark.parametrize("name, change, message", BROKEN_TRAIN_PY,
                         ids=[b[0] for b in BROKEN_TRAIN_PY])
def test_import_tool_errors_are_one_clear_message(tmp_path, capsys, name, change, message):
    code, output, out = run_tool(tmp_path, fake_train_py(**change), capsys)
    assert code == 2 and not out.exists()
    assert output.err.startswith("error: ") and output.err.count("\n") == 1
    assert "train.py" in output.err
    assert re.search(message, output.err), output.err


def test_import_tool_on_files_without_the_assignments(tmp_path, capsys):
    code, output, _ = run_tool(tmp_path, "def one_epoch_full():\n    pass\n", capsys)
    assert code == 2 and "has no assignment `template = ...`" in output.err
    code, output, _ = run_tool(tmp_path, "def broken(:\n", capsys)
    assert code == 2 and "is not valid Python (line 1" in output.err
    with pytest.raises(SystemExit):
        run_cli(import_prompts.main, ["--train-py", str(tmp_path / "none.py"), "--out", "x"])
    assert "does not exist" in capsys.readouterr().err


def test_import_tool_write_error_names_its_own_flag(tmp_path, capsys):
    """The shared write error suggests the flag of this tool (--out), not train.py's --logdir."""
    train_py = tmp_path / "train.py"
    train_py.write_text(fake_train_py(), encoding="utf-8")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(import_prompts.main, ["--train-py", str(train_py),
                                      "--out", str(tmp_path / "a_file" / "prompts.yaml")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "(or pass another --out)" in err, err
    assert "--logdir" not in err


def test_imported_yaml_is_plain_safe_yaml(tmp_path, capsys):
    _, _, out = run_tool(tmp_path, fake_train_py(), capsys)
    content = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert set(content) == {"source", "template", "joint_template", "joints", "parts",
                            "descriptions"}


@pytest.mark.parametrize("source", [
    "x = " + "+".join(["'a'"] * 200_000),  # RecursionError while the parser builds the tree
    "x = a" + ".b" * 100_000,
    "x = " + "-" * 100_000 + "1",  # MemoryError from the parser's own stack
])
def test_import_tool_on_expressions_too_deep_for_the_parser(tmp_path, capsys, source):
    code, output, out = run_tool(tmp_path, source, capsys)
    assert code == 2 and output.err.startswith("error: --train-py '"), output.err[-2000:]
    assert "nests an expression too deeply for Python's parser" in output.err
    assert output.err.count("\n") == 1 and not out.exists()


def test_import_tool_says_no_line_when_the_parser_gives_none(tmp_path, capsys):
    code, output, _ = run_tool(tmp_path, "x = 1\0\n", capsys)
    assert code == 2 and "is not valid Python (source code string cannot contain null bytes)" \
        in output.err and "line None" not in output.err
