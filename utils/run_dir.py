"""The run directory: its paths, creation, the resolved config and git commit, metrics.jsonl."""

import functools
import glob
import json
import os
import subprocess
from dataclasses import dataclass

from utils import distributed as dist_utils
from utils.checkpoint import atomic_write_text
from utils.config import config_to_yaml
from utils.errors import MetaPoseError

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


def prepare_run_dir(args, config):
    """Creates `<logdir>/<run_name>` (rank 0); refuses to start a fresh run over old checkpoints."""
    stem = os.path.splitext(os.path.basename(args.config))[0]
    name = args.run_name or f"{stem}_{config.model.image_encoder.type}"
    paths = RunPaths(os.path.join(args.logdir, name))

    def create():
        try:
            os.makedirs(paths.checkpoints if not args.eval else paths.root, exist_ok=True)
            probe = paths.file(f".write_test_{os.getpid()}")
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write("ok")
            os.remove(probe)
        except OSError as error:
            raise MetaPoseError(f"cannot write the run directory '{paths.root}' under --logdir "
                                f"'{args.logdir}' ({error.strerror or error}). Pass a writable "
                                "--logdir.") from None
        if args.resume is not None:
            for stale in glob.glob(os.path.join(paths.checkpoints, ".*.tmp")):
                os.remove(stale)  # left by a save that was killed midway; the real files are intact
        if not args.eval and args.resume is None:
            existing = [p for p in (paths.last, paths.best) if os.path.exists(p)]
            if existing:
                raise MetaPoseError(
                    f"run directory '{paths.root}' already holds checkpoints "
                    f"({', '.join(existing)}) from an earlier run. Pass --resume to continue "
                    "that run, or --run_name NAME to start a new one; nothing was overwritten.")

    if dist_utils.is_main():
        create()
    return paths


def record_metrics(paths, record, keep_until_epoch=None):
    """Appends `record` to metrics.jsonl by rewriting the file atomically; with
    `keep_until_epoch`, lines of later epochs (left by a run resumed from an older checkpoint)
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


def record_run(paths, config, args):
    """The resolved config (headed by the git commit) and the commit itself, in the run directory
    (an evaluation leaves the config of an earlier training run in place)."""
    if args.eval and os.path.exists(paths.file("config.yaml")):
        return
    commit = git_commit()
    atomic_write_text(paths.file("config.yaml"),
                      f"# git commit: {commit}\n" + config_to_yaml(config))
    atomic_write_text(paths.file("git_commit.txt"), commit + "\n")
