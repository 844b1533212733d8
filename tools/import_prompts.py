"""Writes the published sentences into a prompts file, read from the authors' train.py.

Usage:
    python tools/import_prompts.py --train-py PATH/TO/MetaPose/train.py --out my_prompts.yaml

The file is PARSED (Python's ast), never imported or executed. It must hold, anywhere in the
module (the published one has them inside `one_epoch_full`), plain assignments of literal values:

    template = "... {joint} ... {part} ... {action} ... {description} ..."
    pre_text_joint = [17 joint names]
    pre_text_part = [17 body-part names]
    pre_text_action = {15 CamelCase H36M action names: description}

The published joint mode tokenises the joint names alone, so the joint template is "{joint}".
Then set `model.text_encoder.prompts=my_prompts.yaml` (README "Prompts").
"""

import argparse
import ast
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.prompts import ACTION_NAME_ORDER, load_prompts, parse_prompts  # noqa: E402
from utils.atomic_files import atomic_write_text, cannot_write, name_output_flag  # noqa: E402
from utils.checkpoint import file_sha256  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402
from utils.input_files import read_regular_file, shown_path  # noqa: E402
from utils.skeleton import NUM_JOINTS  # noqa: E402

PUBLISHED_JOINT_TEMPLATE = "{joint}"
VARIABLES = ("template", "pre_text_joint", "pre_text_part", "pre_text_action")
# The published train.py is about 30 kB; a file far larger is not it.
MAX_TRAIN_PY_BYTES = 4 * 1024 * 1024


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-py", required=True,
                        help="train.py of a clone of the authors' MetaPose repository")
    parser.add_argument("--out", required=True, help="prompts file (YAML) to write")
    return parser


def parse_args(argv):
    return build_parser().parse_args(argv)


def read_module(path):
    """(source text, ast.Module) of the Python file `path`."""
    data = read_regular_file(path, "--train-py", "Pass the train.py of your clone of the "
                             "authors' MetaPose repository.", max_bytes=MAX_TRAIN_PY_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MetaPoseError(f"--train-py '{shown_path(path)}' is not UTF-8 text ({error}); pass "
                            "the published train.py unchanged.") from None
    try:
        return text, ast.parse(text, filename=path)
    except SyntaxError as error:
        where = f"line {error.lineno}: " if error.lineno else ""
        raise MetaPoseError(f"--train-py '{shown_path(path)}' is not valid Python ({where}"
                            f"{error.msg}); pass the published train.py unchanged.") from None
    except (RecursionError, MemoryError):  # the parser's own limits (nothing was run)
        raise MetaPoseError(
            f"--train-py '{shown_path(path)}' nests an expression too deeply for Python's "
            "parser (e.g. thousands of chained operators or calls), so it cannot be read; the "
            "published train.py holds no such expression: pass it unchanged.") from None


def assignments(module):
    """{variable name: [(line, value node), ...]} of the plain assignments `name = value` (and
    `name: type = value`) anywhere in `module`, for the names in VARIABLES."""
    found = {name: [] for name in VARIABLES}
    for node in ast.walk(module):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in found:
                found[target.id].append((node.lineno, node.value))
    return {name: sorted(occurrences, key=lambda item: item[0])
            for name, occurrences in found.items()}


def literal_value(path, name, occurrences):
    """The literal value assigned to `name` (all its assignments must agree)."""
    if not occurrences:
        raise MetaPoseError(
            f"'{path}' has no assignment `{name} = ...`. Pass the published train.py of the "
            f"authors' MetaPose repository: it assigns {', '.join(VARIABLES)} (in its function "
            "one_epoch_full).")
    values = []
    for line, node in occurrences:
        try:
            values.append(ast.literal_eval(node))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise MetaPoseError(
                f"'{path}' line {line}: the value of `{name}` is not a literal (a string, list "
                "or dict written out in the file), so it cannot be read without running the "
                "file, which this tool never does.") from None
    if any(value != values[0] for value in values[1:]):
        lines = ", ".join(str(line) for line, _ in occurrences)
        raise MetaPoseError(f"'{path}' assigns different values to `{name}` (lines {lines}); "
                            "keep one assignment of the published value.")
    return values[0]


def _string_list(path, name, value, what):
    if not isinstance(value, (list, tuple)) or len(value) != NUM_JOINTS \
            or not all(isinstance(item, str) for item in value):
        found = f"{len(value)} entries" if isinstance(value, (list, tuple)) else \
            type(value).__name__
        raise MetaPoseError(f"'{path}': `{name}` must be a list of {NUM_JOINTS} strings ({what}, "
                            f"H36M joint order); found {found}.")
    return list(value)


def published_prompts(path):
    """The prompts-file mapping of the published train.py at `path`."""
    _, module = read_module(path)
    found = assignments(module)
    values = {name: literal_value(path, name, found[name]) for name in VARIABLES}
    if not isinstance(values["template"], str):
        raise MetaPoseError(f"'{path}': `template` must be a string with the slots {{joint}} "
                            f"{{part}} {{action}} {{description}}; found "
                            f"{type(values['template']).__name__}.")
    actions = values["pre_text_action"]
    if not isinstance(actions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in actions.items()):
        raise MetaPoseError(f"'{path}': `pre_text_action` must be a dict of the 15 CamelCase "
                            "H36M action names to description strings.")
    unknown = sorted(set(actions) - set(ACTION_NAME_ORDER))
    missing = [name for name in ACTION_NAME_ORDER if name not in actions]
    if unknown or missing:
        raise MetaPoseError(
            f"'{path}': `pre_text_action` must name exactly the 15 H36M actions "
            f"({', '.join(ACTION_NAME_ORDER)}); "
            + "; ".join(part for part in (
                f"unknown: {', '.join(map(repr, unknown))}" if unknown else "",
                f"missing: {', '.join(missing)}" if missing else "") if part) + ".")
    return {
        "template": values["template"],
        "joint_template": PUBLISHED_JOINT_TEMPLATE,
        "joints": _string_list(path, "pre_text_joint", values["pre_text_joint"], "joint names"),
        "parts": _string_list(path, "pre_text_part", values["pre_text_part"], "body parts"),
        "descriptions": {name: actions[name] for name in ACTION_NAME_ORDER},
    }


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    content = published_prompts(args.train_py)
    source = (f"imported by tools/import_prompts.py from {os.path.abspath(args.train_py)} "
              f"(sha256 {file_sha256(args.train_py)})")
    try:
        prompts = parse_prompts({"source": source, **content}, args.train_py)
    except MetaPoseError as error:
        raise MetaPoseError(f"the sentences of '{args.train_py}' do not form a valid prompts "
                            f"file: {error}") from None
    header = ("# The published MetaPose sentences, imported from the authors' train.py by\n"
              "# tools/import_prompts.py. They are the authors' text: keep this file out of this\n"
              "# repository. Use it with model.text_encoder.prompts=<this file>.\n")
    try:
        atomic_write_text(args.out, header + prompts.to_yaml())
    except OSError as error:
        raise cannot_write(args.out, error) from None
    load_prompts(args.out)  # what was written reads back
    print(f"wrote {args.out}: template, {NUM_JOINTS} joints and body parts, "
          f"{len(ACTION_NAME_ORDER)} action descriptions from {args.train_py}")
    return 0


if __name__ == "__main__":
    run_cli(main)
