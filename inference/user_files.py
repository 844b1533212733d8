"""The --boxes and --keypoints JSON files of tools/infer.py (schema in docs/inference.md): people
per frame, keyed by the frame's file name (images, folders) or its 0-based index (videos)."""

import os

from inference.keypoints import KEYPOINT_FORMATS
from utils.errors import MetaPoseError
from utils.input_files import shown_path
from utils.json_files import read_json_file


def _read_json(path, flag):
    return read_json_file(path, f"{flag} file", "Pass the JSON file of docs/inference.md "
                                                 f"\"{flag} files\".")


class PeopleFile:
    """People per frame from a user's JSON file.

    Accepted layouts: {"frames": {frame: [person, ...]}, ...}, the bare mapping {frame: [...]},
    or (single-image input only) a bare list of people. A person is a list (a box, or 17
    joints) or a dict with "box" / "keypoints" and an optional "score".
    """

    def __init__(self, path, flag):
        self.path, self.flag = shown_path(os.fspath(path)), flag
        content = _read_json(os.fspath(path), flag)
        self.format = None
        if isinstance(content, dict) and "frames" in content:
            self.format = content.get("format")
            content = content["frames"]
        if isinstance(content, list):
            self.frames, self.single = {None: content}, True
        elif isinstance(content, dict):
            self.frames, self.single = {str(key): value for key, value in content.items()}, False
        else:
            raise MetaPoseError(f"{flag} file '{self.path}' holds a {type(content).__name__}; "
                                "expected {\"frames\": {frame: [people]}} (see docs/inference.md).")
        for key, people in self.frames.items():
            if not isinstance(people, list):
                raise MetaPoseError(f"{flag} file '{self.path}': frame {key!r} holds a "
                                    f"{type(people).__name__}, not a list of people.")
        self.used = set()

    def people(self, key, single_input):
        """The raw people of frame `key`; raises when the file does not mention the frame."""
        if self.single:
            if not single_input:
                raise MetaPoseError(f"{self.flag} file '{self.path}' is a bare list of people, "
                                    "which only fits a single image; for folders and videos key "
                                    "the people by frame: "
                                    "{\"frames\": {\"name or index\": [...]}}.")
            self.used.add(None)
            return self.frames[None]
        if str(key) not in self.frames:
            known = ", ".join(repr(k) for k in list(self.frames)[:3])
            raise MetaPoseError(f"{self.flag} file '{self.path}' has no entry for frame {key!r} "
                                f"(its frames start {known}). Key frames by file name (images) "
                                "or 0-based index (videos); give [] for a frame without people.")
        self.used.add(str(key))
        return self.frames[str(key)]

    def check_all_used(self):
        """Raises when the file names frames the input does not have (a mismatch of files)."""
        unused = [key for key in self.frames if key not in self.used]
        if unused:
            raise MetaPoseError(f"{self.flag} file '{self.path}' names {len(unused)} frame(s) the "
                                f"input does not have, first {unused[0]!r}: does it belong to "
                                "another input?")


def _entry(person, key, field, where):
    if isinstance(person, dict):
        if key not in person:
            raise MetaPoseError(f"{where}: a person without \"{key}\" (fields: "
                                f"{', '.join(map(str, person))}).")
        return person[key], person.get(field)
    return person, None


def box_entries(people, where):
    """(boxes, scores or None) of a --boxes frame entry."""
    pairs = [_entry(person, "box", "score", where) for person in people]
    scores = [score for _, score in pairs]
    return [box for box, _ in pairs], (scores if pairs and all(s is not None for s in scores)
                                       else None)


def keypoint_entries(people, where):
    """(keypoints, boxes or None) of a --keypoints frame entry."""
    pairs = [_entry(person, "keypoints", "box", where) for person in people]
    boxes = [box for _, box in pairs]
    if any(box is not None for box in boxes) and not all(box is not None for box in boxes):
        raise MetaPoseError(f"{where}: some people have a \"box\" and some do not; give a box to "
                            "all of them or to none (then each box is the joints' extent).")
    return [points for points, _ in pairs], (boxes if pairs and boxes[0] is not None else None)


def keypoint_format(people_file, flag_value):
    """The joint order of a --keypoints file: --keypoint-format, else its "format" field."""
    value = flag_value or people_file.format
    if value is None:
        raise MetaPoseError(f"--keypoints file '{people_file.path}' does not say its joint order: "
                            "add \"format\": \"coco\" or \"h36m\" to it, or pass "
                            "--keypoint-format coco|h36m.")
    value = str(value).lower().replace("-17", "").replace("17", "")
    if value not in KEYPOINT_FORMATS:
        raise MetaPoseError(f"--keypoints file '{people_file.path}': format {value!r} is not one "
                            f"of {', '.join(KEYPOINT_FORMATS)} (COCO-17 or H36M-17 order).")
    return value
