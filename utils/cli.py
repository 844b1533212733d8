"""Entry-point wrapper: user-input errors become one `error: ...` line and exit status 2."""

import argparse
import os
import sys

from utils.errors import MetaPoseError

# How a DataLoader worker's exception reaches the main process: re-raised with the same type and,
# as its message, the worker's whole traceback text (torch.utils.data._utils.ExceptionWrapper).
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def error_message(error):
    """The message of `error` as one paragraph: the worker traceback that a DataLoader adds to an
    error raised in one of its workers is removed (the error's own message is kept)."""
    text = str(error)
    if _WORKER_TRACEBACK in text:
        kind = type(error)
        module = kind.__module__
        name = kind.__qualname__ if module in ("__main__", "builtins") else \
            f"{module}.{kind.__qualname__}"
        start = text.rfind(f"\n{name}: ")
        if start >= 0:  # the traceback ends with "<module>.<type>: <original message>"
            text = text[start + len(name) + 3:]
    return " ".join(text.split())


def _rank_prefix():
    """"[rank R] " in a multi-process run (launcher variables set), "" otherwise."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return f"[rank {int(os.environ.get('RANK', '0'))}] "
    except ValueError:
        pass
    return ""


def run_cli(main, argv=None):
    """Runs `main(argv)` and exits with its return value (None -> 0).

    A MetaPoseError is printed to stderr as one paragraph, `error: <message>` (`error: [rank R]
    <message>` in a multi-process run), without a traceback — also when it was raised in a
    DataLoader worker — and the process exits with status 2; Ctrl-C exits with status 130. Any
    other exception is a bug and keeps its traceback.
    """
    try:
        status = main(argv)
    except MetaPoseError as error:
        print(f"error: {_rank_prefix()}{error_message(error)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(0 if status is None else status)


def positive_int(text):
    """An argparse type: an integer >= 1, else a message that names the value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
