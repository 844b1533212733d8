"""Prompts files: the sentences that describe each joint (and the action) to the text encoder.

A prompts file is YAML (docs/method.md §4) with exactly these keys:

    template:        joint_action sentences; slots {joint} {part} {action} {description}
    joint_template:  joint-mode sentences (no action); slots {joint} {part}
    joints:          17 joint names in H36M order (utils.skeleton.JOINT_NAMES)
    parts:           17 body-part names, one per joint
    descriptions:    one description per H36M action, keyed by its CamelCase name (all 15)
    source:          optional free text: where the sentences come from

{action} is the CamelCase H36M action name (e.g. `TakingPhoto`), as the published code fills
it. Sentences are always built with the action of their own row: the published batch-order bug
(sentence i built with the action of sample i) is never reproduced (docs/method.md §2.9).
"""

import difflib
import os
import string
from dataclasses import dataclass
from typing import Optional

import yaml

from utils.errors import MetaPoseError
from utils.skeleton import ACTION_IDS, ACTION_NAMES, NUM_JOINTS
from utils.yaml_files import load_yaml_file

TEXT_MODES = ("joint", "joint_action")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROMPTS_FILE = "experiments/prompts/metapose_default.yaml"

# The slots each template may use, and the ones it must use: without {joint} every joint of a
# row reads the same words; without {action} or {description} every action does.
TEMPLATE_SLOTS = {
    "template": ("joint", "part", "action", "description"),
    "joint_template": ("joint", "part"),
}
REQUIRED_KEYS = ("template", "joint_template", "joints", "parts", "descriptions")
OPTIONAL_KEYS = ("source",)
ACTION_NAME_ORDER = tuple(ACTION_NAMES[action_id] for action_id in ACTION_IDS)


@dataclass(frozen=True)
class Prompts:
    """The validated content of a prompts file (see the module docstring)."""

    template: str
    joint_template: str
    joints: tuple           # 17 str, H36M joint order
    parts: tuple            # 17 str
    descriptions: dict      # CamelCase action name -> str, all 15 actions
    source: Optional[str] = None
    path: str = "<prompts>"  # the file it was read from (for messages)

    def rows(self, mode):
        """(labels, sentences) of a text mode. `joint_action`: 15 rows, row r for action id
        ACTION_IDS[r], labelled by the action name; `joint`: one row labelled None. Each row
        holds the 17 joint sentences in H36M order."""
        if mode == "joint":
            return [None], [[self.joint_template.format(joint=joint, part=part)
                             for joint, part in zip(self.joints, self.parts)]]
        if mode == "joint_action":
            sentences = [[self.template.format(joint=joint, part=part, action=action,
                                               description=self.descriptions[action])
                          for joint, part in zip(self.joints, self.parts)]
                         for action in ACTION_NAME_ORDER]
            return list(ACTION_NAME_ORDER), sentences
        raise MetaPoseError(f"model.text_encoder.mode is {mode!r}; use one of "
                            f"{', '.join(TEXT_MODES)}.")

    def to_yaml(self):
        """The prompts as prompts-file YAML text (loads back to equal values)."""
        content = {"template": self.template, "joint_template": self.joint_template,
                   "joints": list(self.joints), "parts": list(self.parts),
                   "descriptions": {name: self.descriptions[name] for name in ACTION_NAME_ORDER}}
        if self.source is not None:
            content = {"source": self.source, **content}
        return yaml.safe_dump(content, sort_keys=False, allow_unicode=True, width=100)


def _error(path, key, problem, expected):
    return MetaPoseError(f"prompts file '{path}': '{key}' {problem}; {expected} "
                         "(see experiments/prompts/metapose_default.yaml for the layout).")


def _check_template(path, key, value):
    if not isinstance(value, str) or not value.strip():
        raise _error(path, key, f"is {value!r}", "it must be a non-empty string")
    allowed = TEMPLATE_SLOTS[key]
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as error:  # unbalanced braces
        raise _error(path, key, f"is not a valid template ({error})",
                     f"write slots as {{name}} with names from {', '.join(allowed)} and double "
                     "literal braces ({{ or }})") from None
    used = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            raise _error(path, key, f"has the slot {{{name}{'!' + conversion if conversion else ''}"
                         f"{':' + spec if spec else ''}}}",
                         f"its slots are {', '.join('{' + s + '}' for s in allowed)} (plain "
                         "names, no format specifications)")
        used.add(name)
    if "joint" not in used:
        raise _error(path, key, "has no {joint} slot",
                     "without it the 17 joints would read the same sentence")
    if key == "template" and not used & {"action", "description"}:
        raise _error(path, key, "has neither an {action} nor a {description} slot",
                     "without one of them the 15 actions would read the same sentences")


def _check_names(path, key, value):
    if not isinstance(value, list) or len(value) != NUM_JOINTS:
        count = f"{len(value)} entries" if isinstance(value, list) else repr(value)
        raise _error(path, key, f"holds {count}",
                     f"it must be a list of {NUM_JOINTS} strings, one per joint in H36M order")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise _error(path, key, f"entry {index} is {name!r}", "each entry must be a "
                         "non-empty string")
    return tuple(value)


def _check_descriptions(path, value):
    key = "descriptions"
    if not isinstance(value, dict):
        raise _error(path, key, f"is {type(value).__name__}", "it must map each of the 15 "
                     f"CamelCase H36M action names ({', '.join(ACTION_NAME_ORDER)}) to a string")
    unknown = [name for name in value if name not in ACTION_NAME_ORDER]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), ACTION_NAME_ORDER, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _error(path, key, f"names the unknown action {unknown[0]!r}{hint}",
                     f"the actions are {', '.join(ACTION_NAME_ORDER)}")
    missing = [name for name in ACTION_NAME_ORDER if name not in value]
    if missing:
        raise _error(path, key, f"lacks the action(s) {', '.join(missing)}",
                     "every one of the 15 H36M actions needs a description")
    for name in ACTION_NAME_ORDER:
        if not isinstance(value[name], str) or not value[name].strip():
            raise _error(path, f"{key}.{name}", f"is {value[name]!r}", "it must be a non-empty "
                         "string")
    return dict(value)


def parse_prompts(content, path):
    """Validates the mapping `content` read from the prompts file `path`; returns Prompts.
    Raises MetaPoseError naming the file, the key and what is expected."""
    if not isinstance(content, dict):
        raise MetaPoseError(f"prompts file '{path}' must hold a mapping with the keys "
                            f"{', '.join(REQUIRED_KEYS)}; found {type(content).__name__}.")
    unknown = [key for key in content if key not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:
        raise MetaPoseError(f"prompts file '{path}' has the unknown key {unknown[0]!r}; its keys "
                            f"are {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}.")
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise MetaPoseError(f"prompts file '{path}' lacks the key(s) {', '.join(missing)}; it "
                            f"needs {', '.join(REQUIRED_KEYS)}.")
    for key in TEMPLATE_SLOTS:
        _check_template(path, key, content[key])
    source = content.get("source")
    if source is not None and not isinstance(source, str):
        raise _error(path, "source", f"is {source!r}", "it must be a string (or left out)")
    return Prompts(template=content["template"], joint_template=content["joint_template"],
                   joints=_check_names(path, "joints", content["joints"]),
                   parts=_check_names(path, "parts", content["parts"]),
                   descriptions=_check_descriptions(path, content["descriptions"]),
                   source=source, path=str(path))


def resolve_prompts_path(path):
    """`path` as given when it exists (absolute, or relative to the working directory), else
    relative to the repository root (so the default file is found from any directory)."""
    path = os.fspath(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo) else path


def load_prompts(path=DEFAULT_PROMPTS_FILE):
    """Reads (utils/yaml_files.py: strict YAML) and validates a prompts file. Returns Prompts."""
    resolved = resolve_prompts_path(path)
    content = load_yaml_file(resolved, "prompts file",
                             f"Point model.text_encoder.prompts at a prompts file, e.g. "
                             f"{DEFAULT_PROMPTS_FILE}, or write one with tools/import_prompts.py.")
    return parse_prompts(content, resolved)
