"""Entry point: trains or evaluates MetaPose (python train.py, torchrun, torch.distributed.launch).

    torchrun --nproc_per_node=N train.py --config experiments/human36m/human36m.yaml \
        --image-encoder hrnet_32 --text-encoder ViT-B/32 --logdir ./logs [--eval] [KEY=VALUE ...]

Every flag also takes its underscore spelling (--image_encoder, --run_name, ...), as the published
commands write them.
"""

import argparse
import json
import os
import time

import utils.openmp_env  # noqa: F401  (before torch: OpenMP reads its settings when loaded)

import torch

import engine
from datasets import build_dataset, build_metric_set
from datasets.loaders import (build_eval_loader, build_train_loader,
                              warn_if_shared_memory_is_short)
from models.loss import build_loss
from utils import distributed as dist_utils
from utils.atomic_files import atomic_write_text, name_output_flag
from utils.checkpoint import file_sha256, load_checkpoint, load_model_state
from utils.cli import UnderscoreAliasParser, add_overrides_argument, error_message, run_cli
from utils.config import CHOICES, load_config
from utils.cpu_threads import configure_cpu_threads
from utils.errors import MetaPoseError, PeerLostError
from utils.input_files import file_problem, shown_path
from utils.launcher_watchdog import report_to_launcher, watch_launcher
from utils.logger import NullWriter, build_tb_writer, close_logger, setup_logger
from utils.multi_machine import (DATA_FIX, RESUME_FIX, places, require_same_file,
                                 spans_machines, warn_unless_shared)
from utils.peer_watch import silent_peers
from utils.run_dir import REPO_ROOT, metrics_record, open_run_dir, record_metrics
from utils.signals import StopRequest, sigterm_raises
from utils import tensorboard_views
from utils.training_checkpoint import (TrainState, check_resumed_data, check_training_checkpoint,
                                       find_resume_checkpoint, load_weights, resume_training,
                                       save_training_checkpoint, score_text)

# File names of the published weights; --image-encoder/--text-encoder switch between them.
IMAGE_ENCODER_FILES = {"hrnet_32": "pose_hrnet_w32_256x192.pth",
                       "hrnet_48": "pose_hrnet_w48_256x192.pth"}
TEXT_ENCODER_FILES = {"ViT-B/32": "ViT-B-32.pt", "ViT-L/14": "ViT-L-14.pt"}


class _ArgumentParser(UnderscoreAliasParser):
    """Reports a bad command line like every other input error: one `error:` paragraph, exit 2.
    Takes the underscore spelling of every flag (--run_name), as the published commands use."""

    def error(self, message):
        raise MetaPoseError(f"{message}. Run `python train.py --help` for the options.")


def build_parser():
    parser = _ArgumentParser(
        description="Train or evaluate MetaPose. Trailing KEY=VALUE arguments override the "
                    "config (e.g. train.epochs=5 data.num_workers=4).")
    parser.add_argument("--config", required=True, help="experiment YAML file")
    parser.add_argument("--image-encoder", "--image_encoder",
                        choices=CHOICES["model.image_encoder.type"],
                        help="image encoder type (also switches the default pretrained file)")
    parser.add_argument("--text-encoder", "--text_encoder",
                        choices=CHOICES["model.text_encoder.type"],
                        help="CLIP text encoder type (also switches the default pretrained file)")
    parser.add_argument("--logdir", default="./logs", help="parent folder of the run directories")
    parser.add_argument("--run-name",
                        help="run directory name (default: <config stem>_<image encoder>)")
    parser.add_argument("--eval", action="store_true", help="evaluate a checkpoint and exit")
    parser.add_argument("--checkpoint", help="weights to evaluate (with --eval; default "
                        "checkpoint/best_epoch_<image encoder>.bin) or to start training from")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="FILE",
                        help="continue a run from FILE, or from the run's checkpoints/last.pt")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="with --resume: continue although the label files differ from "
                        "those the checkpoint was trained on (a changed validation set restarts "
                        "the best score)")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by python -m torch.distributed.launch
    add_overrides_argument(parser)
    return parser


def parse_args(argv=None):
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit between options
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.insert(0, args.resume)  # `--resume key=value`: an override, not a file
        args.resume = ""
    return args


def _switched_file(path, files, new_type):
    """`path` with its file name replaced by the default file of `new_type`, when it is the
    default file name of another type; otherwise `path` unchanged."""
    if path and os.path.basename(path) in files.values():
        return os.path.join(os.path.dirname(path), files[new_type])
    return path


def resolve_config(args):
    """The config file merged with the encoder flags, then the KEY=VALUE overrides (which win)."""
    base = load_config(args.config)
    flags = []
    if args.image_encoder:
        path = _switched_file(base.model.image_encoder.pretrained, IMAGE_ENCODER_FILES,
                              args.image_encoder)
        flags += [f"model.image_encoder.type={args.image_encoder}",
                  f"model.image_encoder.pretrained={'null' if path is None else path}"]
    if args.text_encoder:
        path = _switched_file(base.model.text_encoder.pretrained, TEXT_ENCODER_FILES,
                              args.text_encoder)
        flags += [f"model.text_encoder.type={args.text_encoder}",
                  f"model.text_encoder.pretrained={'null' if path is None else path}"]
    return load_config(args.config, flags + list(args.overrides))


# ----------------------------------------------------------------------------------------------
# Building


def build_model_on_device(config, context, weights_from_checkpoint=False):
    """models.build_model on the run's device with the speed options applied, initialised
    identically on every rank (seeded with config.seed). weights_from_checkpoint: every weight
    comes from a checkpoint next, so the pretrained HRNet and CLIP files are not read (they need
    not exist)."""
    from models import build_model
    from models.speed import prepare_model_for_speed

    dist_utils.seed_everything(config.seed)
    model = build_model(config, weights_from_checkpoint=weights_from_checkpoint)
    model = prepare_model_for_speed(model.to(context.device), config, context.device)
    dist_utils.seed_everything(config.seed + context.rank)
    return model


def build_datasets(config, context, splits):
    """Datasets of `splits`: built on rank 0 first (it may generate the synthetic set), then by
    the first process of every other machine (which generates the same set where it does not
    see rank 0's: machines need not share a filesystem), then by the rest. Over several
    processes every label file must be the same file everywhere (utils/multi_machine.py)."""
    turn = 0 if context.rank == 0 else 1 if context.local_rank == 0 else 2
    datasets = dist_utils.in_turns(
        lambda: [build_dataset(config, split, 0 if turn < 2 else context.rank)
                 for split in splits], turn)
    for dataset in datasets:
        source = getattr(dataset, "source", None)
        if source and os.path.isfile(source):
            require_same_file(os.path.abspath(source), "the label file", DATA_FIX, context)
    return datasets


def prepare_trunk(config, context):
    """Stage 1 of the synthetic demo (models/trunk_pretraining.py): with
    data.synthetic.trunk.enabled, the HRNet file model.image_encoder.pretrained is trained on the
    synthetic crops when it is missing or stale, in the same turns as the synthetic set."""
    if not config.data.synthetic.trunk.enabled:
        return
    from models.trunk_pretraining import ensure_trunk

    turn = 0 if context.rank == 0 else 1 if context.local_rank == 0 else 2
    dist_utils.in_turns(lambda: ensure_trunk(config) if turn < 2 else None, turn)


def data_fingerprint(datasets):
    """{split: {"path", "sha256", "frames"}} of the label files `datasets` ({split: dataset})
    were read from: recorded in checkpoints and eval.json, compared on --resume. Rank 0 hashes
    the files; every rank gets its result."""
    record = None
    if dist_utils.is_main():
        record = {split: {"path": os.path.abspath(dataset.source),
                          "sha256": file_sha256(dataset.source), "frames": len(dataset)}
                  for split, dataset in datasets.items()
                  if os.path.isfile(getattr(dataset, "source", "") or "")}
    return dist_utils.broadcast_object(record)


# ----------------------------------------------------------------------------------------------
# Training and evaluation runs


def log_evaluation(logger, writer, summary, epoch, metric_set):
    """The dataset's table in the log, its scalars and figures in TensorBoard."""
    logger.info("evaluation%s: %d frames\n%s", f" after epoch {epoch}" if epoch else "",
                summary["frames"], metric_set.format_table(summary))
    if writer:
        for tag, value in metric_set.scalars(summary).items():
            writer.add_scalar(tag, value, epoch or 0)
        writer.add_scalar("val/samples_per_s", summary["samples_per_s"], epoch or 0)
        tensorboard_views.write_evaluation(writer, summary, epoch or 0, metric_set)


class Training:
    """One training run: the model (unwrapped for checkpoints and evaluation, DDP-wrapped for
    training steps), the data, the optimisation state and the epoch loop."""

    def __init__(self, config, context, paths, args, logger, workers=None):
        """workers: DataLoader workers per process (None: data.num_workers; on a CPU train.py
        passes the thread plan's, utils/cpu_threads.py)."""
        self.config, self.context, self.paths = config, context, paths
        self.logger, self.writer = logger, None
        self.notes = []  # lines for the head of config.yaml (settings a resume changed)
        # The checkpoint file and the data first: problems with them show before the (slower)
        # model build.
        start_path, start_checkpoint, converted = self._read_start_checkpoint(args)
        train_set, val_set = build_datasets(config, context, ("train", "validation"))
        self.data = data_fingerprint({"train": train_set, "validation": val_set})
        self.validation_changed = args.resume is not None and check_resumed_data(
            start_checkpoint.get("data") or {}, self.data, start_path, args.allow_data_change,
            logger)
        workers = config.data.num_workers if workers is None else workers
        # Batches are pinned on CUDA (asynchronous copies), never on the CPU (datasets/loaders.py).
        self.train_loader = build_train_loader(
            train_set, config.train.batch_size, workers, config.seed, context)
        self.val_loader = build_eval_loader(val_set, config.eval.batch_size, workers, context)
        warn_if_shared_memory_is_short(workers, (config.train.batch_size, config.eval.batch_size),
                                       config.data.image_size)
        if args.resume is None:  # a later --resume needs what rank 0 writes on every machine
            warn_unless_shared(paths.root, context)
        self.metric_set = build_metric_set(config, val_set)
        if start_path is None:
            prepare_trunk(config, context)
        self.model = build_model_on_device(config, context,
                                           weights_from_checkpoint=start_path is not None)
        self.optimizer = engine.build_optimizer(self.model.trainable_parameters(),
                                                config.train.lr, config.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer,
                                                                gamma=config.train.lr_decay)
        use_scaler = config.speed.amp == "fp16" and context.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state = self._initial_state(args, start_path, start_checkpoint, converted)
        engine.use_fused_steps(self.optimizer)  # also when the checkpoint's optimizer was not fused
        trainable = sum(p.numel() for p in self.model.trainable_parameters())
        logger.info("%d training / %d validation frames, %d process(es), %s trainable parameters, "
                    "%d steps per epoch", len(train_set), len(val_set), context.world_size,
                    f"{trainable:,}", len(self.train_loader))
        self.train_model = self.model
        if context.distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            # The model's buffers (the frozen HRNet's batch-norm statistics, the text cache's
            # tokens) never change in training: nothing to broadcast at every step.
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids, find_unused_parameters=False,
                broadcast_buffers=False)
        self.loss_fn = build_loss(config)
        self.settings = engine.StepSettings.from_config(config)
        self.stop = StopRequest()

    def _read_start_checkpoint(self, args):
        """(path, loaded contents, converted weights or None) of the checkpoint to resume
        (--resume [FILE]) or to start from (--checkpoint FILE: any checkpoint, a published one
        included), or (None, None, None). Rank 0 picks the file; every process reads it and,
        over several machines, must find the same file (utils/multi_machine.py)."""
        if args.resume is not None:
            picked = {}
            several = dist_utils.is_initialized() and spans_machines(places(self.context))

            def pick():  # rank 0; its MetaPoseError reaches every process
                if not dist_utils.is_main():
                    return
                try:
                    picked["path"], picked["checkpoint"] = (
                        (args.resume, load_checkpoint(args.resume)) if args.resume
                        else find_resume_checkpoint(self.paths, self.logger))
                except MetaPoseError as error:
                    if not several:
                        raise
                    raise MetaPoseError(f"{error} This run spans several machines: "
                                        f"{RESUME_FIX}.") from None

            dist_utils.main_first(pick)
            path = dist_utils.broadcast_object(picked.get("path"))
            require_same_file(os.path.abspath(path), "the checkpoint to resume", RESUME_FIX,
                              self.context)
            checkpoint = picked.get("checkpoint") or load_checkpoint(path)
            check_training_checkpoint(checkpoint, path)
            return path, checkpoint, None
        if args.checkpoint:
            require_same_file(os.path.abspath(args.checkpoint), "--checkpoint",
                              "give every machine the file at that path", self.context)
            checkpoint = load_checkpoint(args.checkpoint)
            return args.checkpoint, checkpoint, load_model_state(checkpoint, args.checkpoint)
        return None, None, None

    def _initial_state(self, args, path, checkpoint, converted=None):
        if args.resume is not None:
            state, applied = resume_training(path, self.model, self.optimizer, self.scheduler,
                                             self.scaler, self.config, self.logger, checkpoint,
                                             len(self.train_loader), self.data)
            state.data = self.data
            if self.validation_changed:  # scores on two validation sets do not compare
                self.logger.warning("--allow-data-change: the validation set changed, so the best "
                                    "%s restarts (was %s at epoch %s)",
                                    self.metric_set.score_label, score_text(state.best_score),
                                    state.best_epoch)
                state.best_score, state.best_epoch = None, None
            if applied:
                self.notes.append(f"resumed from '{path}' after epoch {state.epoch}, with "
                                  f"changed {', '.join(applied)} from epoch {state.epoch + 1} on")
            if dist_utils.is_main():  # evaluations the checkpoint does not account for run again
                record_metrics(self.paths, None,
                               keep_until_epoch=state.epoch - int(state.eval_pending))
            return state
        if checkpoint is not None:
            load_weights(self.model, checkpoint, path, self.config, self.logger, converted)
            self.logger.info("initialised the model from '%s' (weights only: a fresh optimizer "
                             "and learning-rate schedule, training starts at epoch 1)", path)
        return TrainState(data=self.data)

    def save(self, new_best=False, evaluation=None):
        """Checkpoints (and `evaluation`, a metrics.jsonl record) in the order that keeps best.pt
        right after any kill (utils/training_checkpoint.py); a second Ctrl-C waits for it."""
        with self.stop.deferred():
            save_training_checkpoint(self.paths, self.model, self.optimizer, self.scheduler,
                                     self.scaler, self.state, self.config, new_best, evaluation)

    def evaluate_and_record(self, epoch):
        """Evaluates the trained `epoch` (already saved with eval_pending), logs it and saves the
        result: best.pt when the metric set's score (H36M: P1, 3DHP: MPJPE) is a new best, its
        metrics.jsonl line, last.pt."""
        config, state, metric_set = self.config, self.state, self.metric_set
        summary = engine.evaluate(self.model, self.val_loader, self.context.device,
                                  metrics=metric_set, flip_test=config.eval.flip_test,
                                  amp=config.speed.amp,
                                  channels_last=self.settings.channels_last,
                                  num_visualize=config.eval.num_visualize, writer=self.writer,
                                  global_step=epoch, stop=self.stop)
        if summary is None:  # last.pt already holds the epoch, marked eval_pending
            self.logger.warning("evaluation after epoch %d interrupted; it runs first on --resume",
                                epoch)
            return
        log_evaluation(self.logger, self.writer, summary, epoch, metric_set)
        score = summary[metric_set.score_key]
        new_best = metric_set.is_better(score, state.best_score)
        if new_best:
            state.best_score, state.best_epoch = score, epoch
        tensorboard_views.write_best_score(self.writer, metric_set, state.best_score, epoch)
        state.eval_pending = False
        self.save(new_best, metrics_record(summary, epoch, metric_set))

    def train_epoch(self, epoch):
        """Seeds from (seed, rank, epoch), skips the batches trained before an interruption
        (restoring the RNG state saved then), and trains one epoch."""
        state, loader = self.state, self.train_loader
        seed = dist_utils.epoch_seed(self.config.seed, self.context.rank, epoch)
        dist_utils.seed_everything(seed)
        loader.generator.manual_seed(seed)
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        if state.batches_done:
            loader.sampler.skip_next(state.batches_done * self.config.train.batch_size)
            if state.rng_states and self.context.rank < len(state.rng_states):
                dist_utils.set_rng_state(state.rng_states[self.context.rank])
        stats = engine.train_one_epoch(self.train_model, self.loss_fn, loader, self.optimizer,
                                       self.context.device, epoch, self.settings,
                                       scaler=self.scaler, writer=self.writer, stop=self.stop,
                                       skip_batches=state.batches_done,
                                       bad_steps_in_a_row=state.bad_steps_in_a_row)
        state.bad_steps_in_a_row = stats["bad_steps_in_a_row"]
        return stats

    def run(self, writer):
        """The epoch loop; returns the exit status (0, or 128 + signal number after a stop).
        Each trained epoch is saved before its evaluation starts."""
        self.writer = writer
        state, epochs, every = self.state, self.config.train.epochs, self.config.eval.every
        self.stop.install()
        try:
            if state.eval_pending:
                self.evaluate_and_record(state.epoch)
            for epoch in range(state.epoch, epochs):
                if dist_utils.any_flag(self.stop.requested)[0]:
                    self.logger.warning("stopped before epoch %d; %s holds epoch %d (continue "
                                        "with --resume)", epoch + 1, self.paths.last, epoch)
                    break
                started = time.perf_counter()
                stats = self.train_epoch(epoch)
                if stats["interrupted"]:
                    state.batches_done = stats["batches_done"]
                    self.save()
                    self.logger.warning("stopped in epoch %d after %d batches; saved %s (continue "
                                        "with --resume)", epoch + 1, state.batches_done,
                                        self.paths.last)
                    break
                self.scheduler.step()
                state.epoch, state.batches_done = epoch + 1, 0
                log_train_epoch(self.logger, self.writer, stats, epoch, epochs,
                                time.perf_counter() - started)
                state.eval_pending = state.epoch % every == 0 or state.epoch == epochs
                self.save()
                if state.eval_pending:
                    self.evaluate_and_record(state.epoch)
            stopping = dist_utils.any_flag(self.stop.requested)[0]
        finally:
            self.stop.restore()
        if stopping:
            return self.stop.exit_code or 143
        self.logger.info("done: %d epochs, best %s %s; run directory %s", state.epoch,
                         self.metric_set.score_label, score_text(state.best_score),
                         self.paths.root)
        return 0


def log_train_epoch(logger, writer, stats, epoch, epochs, seconds):
    kl = f"  kl {stats['kl']:.5f}" if "kl" in stats else ""
    skipped = f", {stats['bad_steps']} skipped (non-finite)" if stats["bad_steps"] else ""
    logger.info("epoch %d/%d  loss %.5f  mpjpe %.1f mm%s  lr %.3g  %.0f samples/s  %d steps%s  "
                "(%.0f s)", epoch + 1, epochs, stats["loss"], stats["mpjpe"] * 1000.0, kl,
                stats["lr"], stats["samples_per_s"], stats["steps"], skipped, seconds)
    if writer:
        engine.add_loss_scalars(writer, "train", {name: stats[name] for name in
                                                  ("loss", "mpjpe", "kl") if name in stats},
                                epoch + 1)
        writer.add_scalar("train/lr", stats["lr"], epoch + 1)
        writer.add_scalar("train/samples_per_s", stats["samples_per_s"], epoch + 1)
        writer.add_scalar("train/bad_steps", stats["bad_steps"], epoch + 1)


def eval_checkpoint_path(args, config):
    """The file --eval scores: --checkpoint, or the released weights of the image encoder."""
    encoder = config.model.image_encoder.type
    path = args.checkpoint or os.path.join(REPO_ROOT, "checkpoint", f"best_epoch_{encoder}.bin")
    problem = file_problem(path)
    if problem is not None:
        raise MetaPoseError(
            f"no checkpoint to evaluate: '{shown_path(path)}' {problem}. Pass --checkpoint "
            f"logs/<run>/checkpoints/best.pt (a run of yours) or put the released weights at "
            f"checkpoint/best_epoch_{encoder}.bin.")
    return path


class Evaluation:
    """--eval: scores released weights or a checkpoint and writes eval.json (the metrics record
    plus "checkpoint": {path, sha256} and "data": {"validation": {path, sha256, frames}})."""

    def __init__(self, config, context, paths, args, logger, workers=None):
        self.config, self.context, self.paths, self.logger = config, context, paths, logger
        self.notes = []
        self.path = eval_checkpoint_path(args, config)
        require_same_file(os.path.abspath(self.path), "the checkpoint to evaluate",
                          "give every machine the file at that path", context)
        # The file and the data first: problems with them show before the (slower) model build.
        checkpoint = load_checkpoint(self.path)
        converted = load_model_state(checkpoint, self.path)  # a published file is converted here
        self.epoch = converted[1].epoch
        (val_set,) = build_datasets(config, context, ("validation",))
        workers = config.data.num_workers if workers is None else workers
        self.loader = build_eval_loader(val_set, config.eval.batch_size, workers, context)
        warn_if_shared_memory_is_short(workers, (config.eval.batch_size,), config.data.image_size)
        self.metric_set = build_metric_set(config, val_set)
        self.model = build_model_on_device(config, context, weights_from_checkpoint=True)
        load_weights(self.model, checkpoint, self.path, config, logger, converted)
        self.record = {"checkpoint": {"path": os.path.abspath(self.path),
                                      "sha256": file_sha256(self.path) if context.is_main
                                      else None},
                       "data": data_fingerprint({"validation": val_set})}
        logger.info("evaluating '%s' on %d validation frames with %d process(es)%s", self.path,
                    len(val_set), context.world_size,
                    ", flip test" if config.eval.flip_test else "")

    def run(self, writer):
        config, metric_set = self.config, self.metric_set
        summary = engine.evaluate(self.model, self.loader, self.context.device,
                                  metrics=metric_set, flip_test=config.eval.flip_test,
                                  amp=config.speed.amp, channels_last=config.speed.channels_last,
                                  num_visualize=config.eval.num_visualize, writer=writer,
                                  global_step=self.epoch or 0)
        log_evaluation(self.logger, writer, summary, self.epoch, metric_set)
        if dist_utils.is_main():
            record = {**metrics_record(summary, self.epoch, metric_set), **self.record}
            atomic_write_text(self.paths.file("eval.json"), json.dumps(record, indent=2) + "\n")
            self.logger.info("%s; wrote %s", metric_set.headline(summary),
                             self.paths.file("eval.json"))
        return 0


def _peer_stopped(error, context, timeout):
    """The MetaPoseError for an error that only says another process of the run went away or
    did not answer within `timeout` seconds (distributed.timeout), or None for any other
    error."""
    if not isinstance(error, Exception) or isinstance(error, MetaPoseError) \
            or not dist_utils.lost_peer(error):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if first.startswith("[") and "] " in first:  # "[.../pair.cc:561] Connection closed ..."
        first = first.split("] ", 1)[1]
    first = first.split(". ", 1)[0]
    silent = silent_peers()
    who = f"; {', '.join(silent[:4])}" if silent else ""
    return PeerLostError(
        f"process {context.rank} of {context.world_size} stopped because another process of "
        f"this run stopped, or did not answer within distributed.timeout={timeout:g} s "
        f"({first[:200]}{who}). The error printed by that process, or its machine, says why.")


def main(argv=None):
    """train.py; under torchrun the reason this rank stops (its `error:` message, or the
    signal that stopped it after saving) also goes into the launcher's report."""
    try:
        status = _main(argv)
    except MetaPoseError as error:
        report_to_launcher(f"error: [rank {dist_utils.rank()}] {error_message(error)}")
        raise
    if status:
        report_to_launcher(f"stopped by signal {status - 128} after saving checkpoints/last.pt "
                           "(continue with --resume)")
    return status


def _main(argv):
    watch_launcher()  # under torchrun: stop when the launcher is gone
    args = parse_args(argv)
    name_output_flag("--logdir", args.logdir)  # a failed write there suggests another --logdir
    config = resolve_config(args)
    eval_checkpoint = eval_checkpoint_path(args, config) if args.eval else None
    context = dist_utils.init_distributed(args.local_rank,
                                          init_timeout=config.distributed.init_timeout,
                                          timeout=config.distributed.timeout)
    threads = configure_cpu_threads(config, context)  # None on CUDA
    with sigterm_raises():  # a start stopped by the launcher still cleans up after itself
        run = open_run_dir(args, config, eval_checkpoint)
        logger = setup_logger(context.rank, run.paths.file("log.txt"))
        writer = NullWriter()
        try:
            logger.info("%s run in %s (%d process(es) on %s)",
                        "evaluation" if args.eval else "training", run.paths.root,
                        context.world_size, context.device)
            if threads is not None:
                logger.info("%s", threads.describe())
            job = (Evaluation if args.eval else Training)(
                config, context, run.paths, args, logger,
                workers=None if threads is None else threads.workers)
            if not args.eval:
                run.started(config, job.notes)  # a training's directory is kept from here on
            writer = build_tb_writer(run.paths.file("tb"), context.rank)
            tensorboard_views.write_run_config(writer, config, job.metric_set)
            status = job.run(writer)
            run.started(config, job.notes)  # an evaluation's, once eval.json is written
        except BaseException as error:
            run.abandon()  # a failed start leaves no directory behind
            peer_stopped = _peer_stopped(error, context, config.distributed.timeout)
            if peer_stopped is not None:
                raise peer_stopped from None
            raise
        finally:
            writer.close()
            close_logger(logger)
            run.close()
    dist_utils.cleanup()
    return status


if __name__ == "__main__":
    run_cli(main)
