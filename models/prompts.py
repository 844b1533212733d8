"""Sentence templates that describe each joint (and the action) for the prompted text encoder."""

import re

from utils.skeleton import ACTION_DESCRIPTIONS, ACTION_IDS, ACTION_NAMES, BODY_PARTS, JOINT_NAMES

TEXT_MODES = ("joint", "joint_action")

# `joint` mode: no action label, usable on images of unknown activity.
JOINT_TEMPLATE = "a person's {joint}, a joint of the {part}."
# `joint_action` mode (the paper setting): the joint, its body part, the action and a description.
JOINT_ACTION_TEMPLATE = ("a person's {joint}, a joint of the {part}, in the action {action}: "
                         "{description}.")


def action_phrase(name):
    """'SittingDown' -> 'sitting down': CamelCase H36M action names as plain lower-case words."""
    return " ".join(re.findall(r"[A-Z][a-z]*|[a-z]+|[0-9]+", name)).lower()


def joint_sentences(action_id=None):
    """The 17 sentences (H36M joint order) for one action id (2..16), or without action if None."""
    if action_id is None:
        return [JOINT_TEMPLATE.format(joint=joint, part=part)
                for joint, part in zip(JOINT_NAMES, BODY_PARTS)]
    action = action_phrase(ACTION_NAMES[action_id])
    description = ACTION_DESCRIPTIONS[action_id]
    return [JOINT_ACTION_TEMPLATE.format(joint=joint, part=part, action=action,
                                         description=description)
            for joint, part in zip(JOINT_NAMES, BODY_PARTS)]


def all_sentences(mode):
    """Sentences of a text mode: a list of rows, each the 17 joint sentences of one row.

    `joint` gives one row; `joint_action` gives 15 rows, row r for action id ACTION_IDS[r].
    """
    if mode == "joint":
        return [joint_sentences(None)]
    if mode == "joint_action":
        return [joint_sentences(action_id) for action_id in ACTION_IDS]
    raise ValueError(f"unknown text mode {mode!r}; expected one of {TEXT_MODES}")
