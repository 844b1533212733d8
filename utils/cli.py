"""The command-line conventions every script shares: `run_cli` (user-input errors become one
`error: ...` line and exit status 2), the trailing config overrides, the --device option, and the
underscore spellings train.py accepts for its hyphenated flags."""

import argparse
import os
import sys

from utils.errors import MetaPoseError, PeerLostError

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
    DataLoader worker — and the process exits with status 2 (at once, without Python's exit
    handlers, after a PeerLostError: see utils/errors.py); Ctrl-C exits with status 130. Any
    other exception is a bug and keeps its traceback.
    """
    try:
        status = main(argv)
    except MetaPoseError as error:
        print(f"error: {_rank_prefix()}{error_message(error)}", file=sys.stderr, flush=True)
        if isinstance(error, PeerLostError):
            sys.stdout.flush()
            os._exit(2)
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


# Trailing KEY=VALUE arguments: the same name, metavar and help in every script that takes them.
OVERRIDES_METAVAR = "KEY=VALUE"
OVERRIDES_HELP = "config overrides, e.g. train.epochs=5 (applied last, so they win)"


def add_overrides_argument(parser):
    """The trailing config overrides (args.overrides, a list of "dotted.key=value" strings)."""
    parser.add_argument("overrides", nargs="*", metavar=OVERRIDES_METAVAR, help=OVERRIDES_HELP)


# --device: one spelling, one default (None: resolve_device picks) and one help in every script.
DEVICE_METAVAR = "{cpu,cuda,cuda:N}"
DEVICE_HELP = "where the model runs (default: cuda when available, else cpu)"


def device_name(text):
    """An argparse type: "cpu", "cuda" or "cuda:N", else a message that names the value."""
    kind, _, index = text.partition(":")
    if text in ("cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


def add_device_argument(parser):
    """--device (args.device: the name given, or None for resolve_device's default)."""
    parser.add_argument("--device", type=device_name, default=None, metavar=DEVICE_METAVAR,
                        help=DEVICE_HELP)


def resolve_device(device=None):
    """torch.device of "cpu" / "cuda" / "cuda:N" (or a device), checked to exist; None: cuda when
    available, else cpu.

    Raises:
        MetaPoseError for a name that is not a device, or CUDA asked for but not available.
    """
    import torch  # here: a script's --help and its input checks need no torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise MetaPoseError(f"--device {device!r} is not a device; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MetaPoseError(f"--device {device} was asked for but CUDA is not available here; "
                            "use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise MetaPoseError(f"--device {device} is not supported; use cpu or cuda.")
    return device


def underscore_aliases(parser):
    """{"--run_name": "--run-name", ...}: the underscore spelling of each hyphenated long option
    of `parser` that is not an option of its own."""
    aliases = {}
    for action in parser._actions:
        for option in action.option_strings:
            alias = "--" + option[2:].replace("-", "_")
            if option.startswith("--") and alias != option \
                    and alias not in parser._option_string_actions:
                aliases[alias] = option
    return aliases


class UnderscoreAliasParser(argparse.ArgumentParser):
    """An ArgumentParser that also takes `--run_name` for `--run-name` (and so on for every
    hyphenated long option) without listing the underscore spelling in --help: train.py accepts
    the commands of the published README, whose flags are spelled with underscores."""

    def spell_out(self, args):
        """`args` (default sys.argv[1:]) with --run_name, --run_name=x spelled --run-name, ...
        (not after `--`: what follows it is positional)."""
        args = sys.argv[1:] if args is None else list(args)
        aliases = underscore_aliases(self)
        spelled = []
        for position, token in enumerate(args):
            if token == "--":
                return spelled + args[position:]
            name, equals, value = token.partition("=")
            spelled.append(aliases[name] + equals + value if name in aliases else token)
        return spelled

    # Both entry points: parse_args and parse_intermixed_args end in one of them.
    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self.spell_out(args), namespace)

    def parse_known_intermixed_args(self, args=None, namespace=None):
        return super().parse_known_intermixed_args(self.spell_out(args), namespace)
