"""Placeholder prompts for tests: sentences made up for the tests (never the authors' text), in
the structure of a prompts file, with descriptions of very different lengths so that read
positions fall both on prompts and on words."""

import yaml

from models.prompts import ACTION_NAME_ORDER, parse_prompts
from utils.skeleton import NUM_JOINTS

PLACEHOLDER_JOINTS = [f"jointname{j}" for j in range(NUM_JOINTS)]
PLACEHOLDER_PARTS = ["trunk", "limb", "limb", "limb", "limb", "limb", "limb", "trunk", "trunk",
                     "top", "top", "wing", "wing", "wing", "wing", "wing", "wing"]


def placeholder_content(template="{joint} {part} {action} with {description}",
                        joint_template="{joint}"):
    """A prompts-file mapping: description k of the 15 actions has 1 + 2k filler words."""
    descriptions = {name: " ".join(["placeholder words"] * k + ["filler"])
                    for k, name in enumerate(ACTION_NAME_ORDER)}
    return {"template": template, "joint_template": joint_template,
            "joints": list(PLACEHOLDER_JOINTS), "parts": list(PLACEHOLDER_PARTS),
            "descriptions": descriptions}


def placeholder_prompts(**kwargs):
    """Validated Prompts of placeholder_content(**kwargs)."""
    return parse_prompts(placeholder_content(**kwargs), "<placeholder prompts>")


def write_prompts_file(path, content):
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(content, handle, sort_keys=False)
    return str(path)
