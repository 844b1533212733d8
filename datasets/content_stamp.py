"""Content stamps: a small JSON file beside generated data that records what made it (the
generator's version and every setting), so a later run can tell whether the files on disk are
still what the current code with the current settings would write (docs/method.md §1.5).

Both the synthetic sets and the stage-1 trunk of the synthetic demo use them: a stamp that is
missing or differs from the expected one means "stale, write again"."""

import json
import os

from utils.atomic_files import atomic_write_text


def read_stamp(path):
    """The dict in the stamp file `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as stream:
            found = json.load(stream)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def stamp_problem(path, expected, notes=()):
    """None when the stamp file `path` holds exactly `expected` (a JSON-able dict), apart from
    the keys `notes` (facts recorded with the stamp, such as a measured accuracy, that do not
    decide staleness); otherwise a short reason ("it has no stamp", "its stamp has ...")."""
    if not os.path.isfile(path):
        return "it has no stamp"
    found = read_stamp(path)
    if found is None:
        return "its stamp is unreadable or not a JSON object"
    normal = json.loads(json.dumps(expected))
    for key in sorted((set(normal) | set(found)) - set(notes)):
        if found.get(key) != normal.get(key):
            return f"its stamp has {key}={found.get(key)!r}, not {normal.get(key)!r}"
    return None


def write_stamp(path, settings):
    """Writes `settings` (a JSON-able dict) as the stamp file `path`, atomically."""
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
