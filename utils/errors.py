"""The one exception type that user-facing programs turn into a short message and a non-zero exit."""


class MetaPoseError(Exception):
    """A problem with the user's input (config, data, checkpoint, files), not a bug.

    The message must name the file, key or value at fault and say what to do; entry points
    print it as one paragraph without a traceback and exit with status 2.
    """


class PeerLostError(MetaPoseError):
    """Another process of a multi-process run stopped or stopped answering: a collective
    failed, and the process group's threads may still wait on that process. Entry points print
    the message and leave at once (os._exit) instead of running the group's destructors at
    interpreter exit, which can then abort the process or hang."""
