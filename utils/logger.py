"""Rank-aware logging (console and the run's log.txt on rank 0) and the TensorBoard writer."""

import logging
import os
import sys
import threading
import warnings

LOGGER_NAME = "metapose"
# Loggers of the project's packages (modules log with logging.getLogger(__name__)); they all go
# to the run's console and log file.
PROJECT_LOGGERS = (LOGGER_NAME, "datasets", "models", "utils", "tools", "benchmarks")


class _ConsoleHandler(logging.StreamHandler):
    """Writes through tqdm when it is importable, so that log lines do not break a progress bar."""

    def emit(self, record):
        try:
            message = self.format(record)
            try:
                from tqdm import tqdm
                tqdm.write(message, file=self.stream)
            except ImportError:
                self.stream.write(message + "\n")
            self.flush()
        except Exception:  # logging must never take the run down
            self.handleError(record)


def setup_logger(rank=0, log_file=None):
    """Configures the project's loggers and returns the run's logger ("metapose").

    Rank 0 logs INFO and above to stdout and, when `log_file` is given, appends to that file
    (with timestamps). Other ranks print only warnings and errors, prefixed with their rank, so
    that N processes do not print everything N times. Python warnings are logged as warnings
    of this logger until close_logger. Calling it again replaces the handlers.
    """
    handlers = _make_handlers(rank, log_file)
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        _remove_handlers(logger)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
    _capture_warnings()
    return logging.getLogger(LOGGER_NAME)


_original_showwarning = None


def _log_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning replacement: one log line "<Category>: <message>" (no source line)."""
    logging.getLogger(LOGGER_NAME).warning("%s: %s", category.__name__, message)


def _capture_warnings():
    """Python warnings (e.g. "randomly initialised") go to the run's log (console and log.txt)
    instead of raw stderr, until close_logger."""
    global _original_showwarning
    if _original_showwarning is None:
        _original_showwarning = warnings.showwarning
    warnings.showwarning = _log_warning


def _make_handlers(rank, log_file):
    console = _ConsoleHandler(sys.stdout if rank == 0 else sys.stderr)
    if rank == 0:
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    else:
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
    handlers = [console]
    if rank == 0 and log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = _LogFileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                                    datefmt="%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
    return handlers


class _LogFileHandler(logging.FileHandler):
    """The run's log.txt. A failed write (e.g. a full disk) is reported once on stderr instead of
    a traceback per line (logging's default); the console still gets every line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        self._report(sys.exc_info()[1])

    def close(self):
        try:
            super().close()  # cleans up even when the final flush fails
        except OSError as error:
            self._report(error)

    def _report(self, error):
        if not self.failed:
            self.failed = True
            reason = getattr(error, "strerror", None) or error
            print(f"warning: cannot write the log file '{self.baseFilename}' ({reason}); log "
                  "lines go to the console only from now on.", file=sys.stderr, flush=True)


def get_logger(name=LOGGER_NAME):
    return logging.getLogger(name)


def _remove_handlers(logger):
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def close_logger(logger=None):
    """Closes and removes the handlers of the project's loggers (files are flushed) and gives
    them back their default behaviour (propagate to the root logger)."""
    global _original_showwarning
    for name in PROJECT_LOGGERS:
        project_logger = logging.getLogger(name)
        _remove_handlers(project_logger)
        project_logger.propagate = True
        project_logger.setLevel(logging.NOTSET)
    if _original_showwarning is not None:
        if warnings.showwarning is _log_warning:
            warnings.showwarning = _original_showwarning
        _original_showwarning = None


class NullWriter:
    """Stands in for a TensorBoard SummaryWriter on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __bool__(self):
        return False


class _FailSafeWriter:
    """Rank 0's SummaryWriter, except that a write error (e.g. a full disk) is logged once and
    ends TensorBoard logging instead of the run (checkpoint writes report such errors with
    their own message)."""

    def __init__(self, writer, log_dir):
        self._writer, self._log_dir, self._failed = writer, log_dir, False

    def __getattr__(self, name):
        attribute = getattr(self._writer, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            return self._guarded(attribute, *args, **kwargs)
        return call

    def add_summary(self, summary, global_step=None):
        """Writes a ready-made Summary protocol buffer (e.g. the hparams plugin's, which
        SummaryWriter.add_hparams would put into a separate run directory)."""
        return self._guarded(lambda: self._writer._get_file_writer().add_summary(summary,
                                                                                 global_step))

    def _guarded(self, function, *args, **kwargs):
        if self._failed:
            return None
        try:
            return function(*args, **kwargs)
        except OSError as error:
            self._failed = True
            get_logger().warning("cannot write TensorBoard events to '%s' (%s): TensorBoard "
                                 "logging stops here and the run goes on (free space now, "
                                 "or the next checkpoint cannot be written either)",
                                 self._log_dir, error.strerror or error)
            return None

    def __bool__(self):
        return True


def _quiet_tensorboard_thread_errors(arguments):
    """threading.excepthook: TensorBoard's writer thread re-raises its write errors in the main
    thread (where _FailSafeWriter reports them), so its own traceback is not printed."""
    if isinstance(arguments.exc_value, OSError) and \
            type(arguments.thread).__module__.startswith("tensorboard."):
        return
    _previous_excepthook(arguments)


_previous_excepthook = threading.excepthook


def build_tb_writer(log_dir, rank=0):
    """A TensorBoard SummaryWriter into `log_dir` on rank 0 (write errors are logged once and
    stop TensorBoard logging, not the run), a NullWriter (falsy) elsewhere."""
    if rank != 0:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter
    if threading.excepthook is not _quiet_tensorboard_thread_errors:
        threading.excepthook = _quiet_tensorboard_thread_errors
    return _FailSafeWriter(SummaryWriter(log_dir=log_dir), log_dir)
