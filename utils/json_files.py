"""Reading a JSON file a user names: a regular file (utils/input_files.py), of bounded size, valid
UTF-8 JSON, not nested beyond what a reader can follow — each failure one message that names the
file and says what to do."""

import json

from utils.errors import MetaPoseError
from utils.input_files import read_regular_file, shown_path

# Largest JSON input read (a --keypoints file of an hour of 30 fps video with ten people is about
# 0.6 GB); larger files are refused before they are read.
MAX_JSON_BYTES = 2 << 30


def read_json_file(path, what, remedy="", max_bytes=MAX_JSON_BYTES):
    """The parsed content of the JSON file `path`; `what` names its role in messages (e.g.
    "--keypoints file"), `remedy` follows each message.

    Raises:
        MetaPoseError for a path that is not a readable regular file (a folder, a FIFO, a device,
        a dangling link, a loop of links), a file over `max_bytes`, text that is not UTF-8 or
        not JSON, and JSON nested so deeply (lists in lists thousands of levels down) that the
        reader cannot follow it.
    """
    data = read_regular_file(path, what, remedy, max_bytes=max_bytes)
    suffix = f" {remedy}" if remedy else ""
    shown = shown_path(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MetaPoseError(f"{what} '{shown}' is not UTF-8 text (byte {error.start}: "
                            f"{error.reason}).{suffix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MetaPoseError(f"{what} '{shown}' is not valid JSON (line {error.lineno}, column "
                            f"{error.colno}: {error.msg}).{suffix}") from None
    except RecursionError:
        raise MetaPoseError(f"{what} '{shown}' nests lists or objects more deeply than a JSON "
                            "reader can follow (thousands of levels; this file's layout needs a "
                            f"handful).{suffix}") from None
