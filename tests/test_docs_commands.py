"""The commands the docs show run as written: every `python SCRIPT.py ...`, `python -m MODULE ...`
and `torchrun ... train.py ...` in docs/*.md (fenced code blocks and inline code) names a script
of this repository and only flags that the script's build_parser() accepts. A renamed or removed
flag therefore fails here, not in a user's shell."""

import glob
import importlib
import os
import re
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
FENCE = re.compile(r"^\s*```(\S*)")
INLINE = re.compile(r"`([^`\n]+)`")
NOT_SHELL = {"python", "json", "yaml", "yml"}  # fenced blocks whose lines are not commands
PYTHON = re.compile(r"python3?(\.\d+)?$")
LAUNCHERS = ("torch.distributed.launch", "torch.distributed.run")  # like torchrun
SEPARATORS = re.compile(r"\s(?:&&|\|\||;|\|)\s")


def shell_lines(text):
    """The command lines of a markdown page: the lines of its fenced shell (or untyped) blocks,
    continuation backslashes joined, and its inline code spans."""
    lines, block, language = [], None, None
    for raw in text.splitlines():
        fence = FENCE.match(raw)
        if fence:
            if block is None:
                block, language = [], fence.group(1).lower()
            else:
                if language not in NOT_SHELL:
                    lines.extend(_join_continuations(block))
                block = None
            continue
        if block is not None:
            block.append(raw)
        else:
            lines.extend(span for span in INLINE.findall(raw)
                         if re.match(r"(python3?|torchrun)\s", span))
    return lines


def _join_continuations(block):
    joined, pending = [], ""
    for line in block:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            joined.append(pending + line)
            pending = ""
    if pending:
        joined.append(pending)
    return joined


def _tokens(segment):
    try:
        return shlex.split(segment, comments=True)
    except ValueError:  # an unbalanced quote, e.g. the first line of a `python -c "` block
        return segment.split()


def _launched(arguments):
    """(script, its arguments) after a launcher's own flags (torchrun, torch.distributed.launch)."""
    scripts = [i for i, item in enumerate(arguments) if item.endswith(".py")]
    return [(os.path.normpath(arguments[scripts[0]]), arguments[scripts[0] + 1:])] if scripts else []


def _run_by_python(arguments):
    """(script, its arguments) of `python ARGUMENTS`: a script, a module of this repository
    (`-m benchmarks.x`), or a launcher's script; nothing for other packages (`-m pytest`)."""
    if arguments and arguments[0].endswith(".py"):
        return [(os.path.normpath(arguments[0]), arguments[1:])]
    if len(arguments) > 1 and arguments[0] == "-m":
        module = arguments[1]
        if module in LAUNCHERS:
            return _launched(arguments[2:])
        if os.path.isdir(os.path.join(REPO, module.split(".")[0])):
            return [(module.replace(".", "/") + ".py", arguments[2:])]
    return []


def commands(line):
    """[(script path relative to the repository, [arguments])] of the commands in `line`."""
    found = []
    for segment in SEPARATORS.split(line.strip().removeprefix("$ ")):
        tokens = _tokens(segment)
        for position, token in enumerate(tokens):
            if PYTHON.match(os.path.basename(token)):
                found.extend(_run_by_python(tokens[position + 1:]))
                break
            if token == "torchrun":
                found.extend(_launched(tokens[position + 1:]))
                break
    return found


def flags(arguments):
    """The long options among `arguments`, without values or the brackets of optional parts."""
    names = []
    for argument in arguments:
        if argument.startswith(("<", ">", "2>", "&")):
            break  # a redirection: what follows is not the script's
        name = argument.lstrip("[").split("=")[0].rstrip("]")
        if re.fullmatch(r"--[A-Za-z][\w-]*", name):
            names.append(name)
    return names


_PARSERS = {}


def accepts(parser, name):
    """Whether `parser` takes the option `name`, train.py's underscore spellings included."""
    spell_out = getattr(parser, "spell_out", None)  # utils/cli.py UnderscoreAliasParser
    spelled = spell_out([name])[0] if spell_out else name
    return spelled in parser._option_string_actions


def parser_of(script):
    if script not in _PARSERS:
        module = importlib.import_module(os.path.splitext(script)[0].replace(os.sep, "."))
        _PARSERS[script] = module.build_parser()
    return _PARSERS[script]


def problems(text, source):
    """What is wrong with the commands of one page: unknown scripts and flags, one line each."""
    found = []
    for line in shell_lines(text):
        for script, arguments in commands(line):
            if not os.path.isfile(os.path.join(REPO, script)):
                found.append(f"{source}: '{script}' does not exist (in: {line.strip()})")
                continue
            parser = parser_of(script)
            found.extend(f"{source}: {script} has no flag {name} (in: {line.strip()})"
                         for name in flags(arguments) if not accepts(parser, name))
    return found


def test_the_docs_show_many_commands():
    """The parsing finds the commands (a check that cannot pass on an empty harvest)."""
    count = sum(len(commands(line)) for path in DOCS
                for line in shell_lines(open(path, encoding="utf-8").read()))
    assert len(DOCS) >= 4 and count >= 30, (DOCS, count)


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_every_command_names_a_script_and_its_flags(path):
    with open(path, encoding="utf-8") as handle:
        assert problems(handle.read(), os.path.relpath(path, REPO)) == []


def test_a_wrong_flag_or_script_is_reported():
    page = ("Run it:\n\n```bash\npython tools/make_synthetic.py --out data/x \\\n"
            "    --train-frame 8\npython tools/nowhere.py --help\n```\n\n"
            "and `torchrun --nproc_per_node=2 train.py --config c.yaml --run_name x --evall`.\n")
    report = problems(page, "page.md")
    assert len(report) == 3
    assert "tools/make_synthetic.py has no flag --train-frame" in report[0]
    assert "'tools/nowhere.py' does not exist" in report[1]
    assert "train.py has no flag --evall" in report[2]  # --run_name is train.py's alias


LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)")


def anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text):
    """The anchors of the headings of a page (lines starting with # outside code blocks)."""
    found, in_code = set(), False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            found.add(anchor(line.lstrip("#")))
    return found


def test_heading_anchors_are_githubs():
    assert headings("# Top\n```bash\n# a comment\n```\n## Errors you may meet\n"
                    "### --boxes files\n") == {"top", "errors-you-may-meet", "--boxes-files"}


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_links_between_pages_reach_a_page_and_heading(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    for target, fragment in LINK.findall(text):
        target_path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        assert os.path.isfile(target_path), f"{path}: link to missing {target}"
        if fragment:
            with open(target_path, encoding="utf-8") as handle:
                anchors = headings(handle.read())
            assert fragment in anchors, f"{path}: {target} has no heading #{fragment}"
