"""The run directory: its paths, creation under a lock, the resolved config and git commit,
metrics.jsonl."""

import functools
import json
import os
import shutil
import subprocess
import time
import unicodedata
from dataclasses import dataclass

from utils import distributed as dist_utils
from utils.atomic_files import atomic_write_text, remove_temporaries
from utils.config import config_to_yaml
from utils.errors import MetaPoseError
from utils.input_files import printable, shown_path
from utils.run_lock import RunLock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*arguments):
    """stdout of `git ARGUMENTS` in the repository, or None (not a checkout, git missing)."""
    try:
        result = subprocess.run(["git", *arguments], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_commit():
    """The repository's HEAD commit, or "unknown" (not a git checkout, git missing)."""
    return _git("rev-parse", "HEAD") or "unknown"


def has_uncommitted_changes():
    """Whether tracked files differ from HEAD (False when git cannot tell)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no"))


@dataclass
class RunPaths:
    root: str

    @property
    def checkpoints(self):
        return os.path.join(self.root, "checkpoints")

    @property
    def last(self):
        return os.path.join(self.checkpoints, "last.pt")

    @property
    def best(self):
        return os.path.join(self.checkpoints, "best.pt")

    @property
    def metrics(self):
        return os.path.join(self.root, "metrics.jsonl")

    def file(self, name):
        return os.path.join(self.root, name)


class RunDirectory:
    """The run directory this process works in: its paths, the writer's lock (rank 0) and
    whether this start created the folder.

    A start that fails before `started()` (a bad value, missing data, a refused checkpoint, an
    interrupt) calls `abandon()`, which removes the folder again when this start created it, so
    failed starts leave no empty runs behind. `started()` writes config.yaml and git_commit.txt.
    """

    def __init__(self, paths, lock=None, created=()):
        self.paths, self.lock, self.created = paths, lock, list(created)
        self.is_started = False

    def started(self, config, notes=()):
        """Records the resolved config (headed by the git commit and `notes`, e.g. settings a
        resume changed) and the commit (rank 0); from now on the directory is kept."""
        if self.is_started:
            return
        if self.lock is not None:
            commit = git_commit()
            header = "".join(f"# {line}\n" for line in [f"git commit: {commit}", *notes])
            atomic_write_text(self.paths.file("config.yaml"), header + config_to_yaml(config))
            atomic_write_text(self.paths.file("git_commit.txt"), commit + "\n")
        self.is_started = True

    def abandon(self):
        """After a failed start: removes what this start created, then releases the lock."""
        if not self.is_started and self.lock is not None:
            root = os.path.abspath(self.paths.root)
            for folder in reversed(self.created):  # the run folder first, then empty parents
                if folder == root:
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
        self.close()

    def close(self):
        if self.lock is not None:
            self.lock.release()


def run_name(args, config, eval_checkpoint=None):
    """The run directory's name: --run-name, else `<config stem>_<image encoder>` for training
    and `eval_<checkpoint>_<date-time>` for --eval (an evaluation gets a folder of its own and
    never writes into the run that trained the checkpoint)."""
    if args.run_name is not None:  # an empty name is refused, not replaced
        return args.run_name
    if args.eval:
        folder, stem = os.path.split(os.path.splitext(os.path.abspath(eval_checkpoint))[0])
        if os.path.basename(folder) == "checkpoints":  # <run>/checkpoints/best.pt: name the run
            stem = f"{os.path.basename(os.path.dirname(folder))}_{stem}"
        return f"eval_{stem}_{time.strftime('%Y%m%d-%H%M%S')}"
    stem = os.path.splitext(os.path.basename(args.config))[0]
    return f"{stem}_{config.model.image_encoder.type}"


# A run directory is one folder directly inside --logdir; its name appears in log lines,
# config.yaml and TensorBoard event files, which are UTF-8, and must fit the file system
# (NAME_MAX: 255 bytes on Linux and macOS).
MAX_RUN_NAME_BYTES = 255


def _name_problem(name):
    """Why `name` cannot be a folder directly inside --logdir, or None."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is '{name}', which names --logdir itself or the folder above it"
    if os.path.isabs(name):
        return "is an absolute path, not a folder name inside --logdir"
    separators = [sep for sep in (os.sep, os.altsep, "/", "\\") if sep and sep in name]
    if separators:
        return (f"holds '{separators[0]}', so the run directory would not be a folder directly "
                "inside --logdir")
    if printable(name) != name or "\0" in name:
        return "holds bytes that are not UTF-8 text, which log files and TensorBoard cannot write"
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "holds control characters (a line break, a tab, ...)"
    if len(name.encode("utf-8")) > MAX_RUN_NAME_BYTES:
        return (f"is {len(name.encode('utf-8')):,} bytes long, more than the "
                f"{MAX_RUN_NAME_BYTES} a folder name may have")
    return None


def check_run_location(args, name):
    """Raises MetaPoseError unless `name` can be a folder directly inside a --logdir that logs
    and TensorBoard can write: nothing is ever created outside --logdir (a name such as
    '../escape' or '/tmp/x' is refused) and nothing is created for a refused name."""
    problem = _name_problem(name)
    if problem is not None:
        origin = ("--run-name" if args.run_name is not None else "the run directory name (made "
                  "from the "
                  + ("checkpoint" if args.eval else "config file") + " name)")
        raise MetaPoseError(
            f"{origin} '{shown_path(name)}' {problem}. Pass --run-name with a plain folder name "
            "(letters, digits, '-', '_', '.'), and choose where runs are written with --logdir.")
    logdir = os.fspath(args.logdir)
    if not logdir or printable(logdir) != logdir or "\0" in logdir:
        raise MetaPoseError(f"--logdir '{shown_path(logdir)}' is empty or holds bytes that are "
                            "not UTF-8 text, which log files and TensorBoard cannot write. Pass "
                            "another --logdir.")


def open_run_dir(args, config, eval_checkpoint=None):
    """The RunDirectory of this run on every process. Rank 0 creates `<logdir>/<name>`, takes its
    lock before anything is written, removes temporaries of killed writes and refuses to start a
    fresh training over old checkpoints or an evaluation in a folder that holds results. A name
    that is not one folder inside --logdir is refused on every process before anything is
    created (check_run_location)."""
    check_run_location(args, run_name(args, config, eval_checkpoint))
    opened = dist_utils.main_first(
        lambda: _open_on_main(args, config, eval_checkpoint) if dist_utils.is_main() else None)
    root = dist_utils.broadcast_object(opened.paths.root if opened else None)
    return opened or RunDirectory(RunPaths(root))


def _open_on_main(args, config, eval_checkpoint):
    default_eval_name = args.eval and args.run_name is None
    root = os.path.join(args.logdir, run_name(args, config, eval_checkpoint))
    try:
        created, candidate, number = _make_folders(root, exclusive=default_eval_name), root, 1
        while created is None:  # two evaluations of one checkpoint started in the same second
            number += 1
            candidate = f"{root}-{number}"
            created = _make_folders(candidate, exclusive=True)
        root = candidate
        lock = RunLock.acquire(root)
    except OSError as error:
        raise MetaPoseError(f"cannot write the run directory '{root}' under --logdir "
                            f"'{args.logdir}' ({error.strerror or error}). Pass a writable "
                            "--logdir.") from None
    run = RunDirectory(RunPaths(root), lock, created)
    try:
        for folder in (run.paths.root, run.paths.checkpoints):
            remove_temporaries(folder)  # left by killed writes; the real files are complete
        _check_reuse(run.paths, args)
    except BaseException:
        run.abandon()
        raise
    return run


def _make_folders(root, exclusive=False):
    """Creates `root` and its missing parents; returns the folders created (outermost first),
    or None when `exclusive` and `root` exists already."""
    missing, folder = [], os.path.abspath(root)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    if exclusive and not missing:
        return None
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:  # made by another process meanwhile: not ours to remove
            if exclusive and folder == missing[0]:
                return None
            continue
        created.append(folder)
    return created


def _check_reuse(paths, args):
    if args.eval:
        held = [p for p in (paths.checkpoints, paths.metrics, paths.file("eval.json"))
                if os.path.exists(p)]
        if held:
            raise MetaPoseError(
                f"run directory '{paths.root}' already holds results ({', '.join(held)}); an "
                "evaluation writes into a folder of its own. Pass another --run-name, or none "
                "(then it writes to <logdir>/eval_<checkpoint>_<date-time>); nothing was "
                "overwritten.")
    elif args.resume is None:
        existing = [p for p in (paths.last, paths.best) if os.path.exists(p)]
        if existing:
            raise MetaPoseError(
                f"run directory '{paths.root}' already holds checkpoints "
                f"({', '.join(existing)}) from an earlier run. Pass --resume to continue "
                "that run, or --run-name NAME to start a new one; nothing was overwritten.")


def record_metrics(paths, record, keep_until_epoch=None):
    """Appends `record` to metrics.jsonl by rewriting the file atomically; with
    `keep_until_epoch`, lines of later epochs (left by a run resumed from an earlier epoch)
    are dropped first."""
    lines = []
    if os.path.exists(paths.metrics):
        with open(paths.metrics, "r", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                entry = json.loads(line)
                if keep_until_epoch is not None and (entry.get("epoch") or 0) > keep_until_epoch:
                    continue
                lines.append(line.rstrip("\n"))
    if record is not None:
        lines.append(json.dumps(record))
    atomic_write_text(paths.metrics, "".join(line + "\n" for line in lines))


def metrics_record(summary, epoch, metric_set):
    """The metrics.jsonl / eval.json object: the epoch and the fields the metric set keeps (H36M:
    p1, p2, frames, per_action; MPI-INF-3DHP: pck, auc, mpjpe, frames, per_scene,
    per_sequence)."""
    return {"epoch": epoch, **metric_set.record(summary)}
