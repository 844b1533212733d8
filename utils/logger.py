"""Rank-aware logging (console and the run's log.txt on rank 0) and the TensorBoard writer."""

import logging
import os
import sys
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
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                                    datefmt="%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
    return handlers


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


def build_tb_writer(log_dir, rank=0):
    """A TensorBoard SummaryWriter into `log_dir` on rank 0, a NullWriter (falsy) elsewhere."""
    if rank != 0:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=log_dir)
