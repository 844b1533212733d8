"""Entry-point wrapper: user-input errors become one `error: ...` line and exit status 2."""

import sys

from utils.errors import MetaPoseError


def run_cli(main, argv=None):
    """Runs `main(argv)` and exits with its return value (None -> 0).

    A MetaPoseError is printed to stderr as one paragraph, `error: <message>`, without a
    traceback, and the process exits with status 2; Ctrl-C exits with status 130. Any other
    exception is a bug and keeps its traceback.
    """
    try:
        status = main(argv)
    except MetaPoseError as error:
        message = " ".join(str(error).split())
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(0 if status is None else status)
