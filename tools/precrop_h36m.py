"""Cuts the 256x192 person crop of every frame of the label pickles once, from full frames.

    python tools/precrop_h36m.py --frames images --out images_crops [--labels data]
                                 [--workers 16] [--quality 95]

For every entry of LABELS/h36m_train.pkl and LABELS/h36m_validation.pkl it reads the full frame
FRAMES/<image>, cuts the crop with the entry's `center`/`scale` (the crop map of
datasets/images.py, the same the loader applies on the fly) and writes OUT/<image> as a JPEG.
Crops are written atomically, so an interrupted run is resumed by running the same command
again (existing crops are kept). Missing or unreadable frames are counted and named at the end,
not fatal. Then train with data.image_dir pointing at OUT (relative to data.root, or absolute);
data.image_mode auto recognises 256x192 crops.

When to use it: full 1000x1002 frames decode several times slower than crops (docs/benchmarks.md,
"Input pipeline"), so on a fast GPU a run that crops on the fly is limited
by its DataLoader; cropping once costs a few hours of CPU for the 2.1 M frames, saves that
every epoch, and the crops take about a tenth of the space.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.labels import load_labels  # noqa: E402
from datasets.precrop import CropJob, cut_crops  # noqa: E402
from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402

SPLIT_FILES = {"train": "h36m_train.pkl", "validation": "h36m_validation.pkl"}


def _quality(text):
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be 1..100, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description="Cut the 256x192 person crops of every labelled frame once (parallel, "
                    "resumable), so that training decodes crops instead of full frames.",
        epilog="See the docstring at the top of tools/precrop_h36m.py for when to use it.")
    parser.add_argument("--labels", default="data",
                        help="folder of h36m_train.pkl and h36m_validation.pkl (default: data)")
    parser.add_argument("--frames", required=True, help="folder of the full frames")
    parser.add_argument("--out", required=True, help="folder the crops go to")
    parser.add_argument("--splits", default="train,validation",
                        help="comma-separated splits to crop (default: train,validation)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="parallel processes (default: one per CPU)")
    parser.add_argument("--quality", type=_quality, default=95, help="JPEG quality (default 95)")
    parser.add_argument("--cache-dir", help="label cache folder (default: next to the pickles)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    splits = [part.strip() for part in args.splits.split(",") if part.strip()]
    unknown = [split for split in splits if split not in SPLIT_FILES]
    if not splits or unknown:
        parser.error(f"--splits must name train and/or validation, got {args.splits!r}")
    args.splits = splits
    return args


def precrop(labels_dir, frames_dir, out_dir, splits, workers, quality, cache_dir=None,
            progress=True):
    """Cuts the crops of `splits`; returns {split: Counter of outcomes} (see datasets.precrop)."""
    if not os.path.isdir(frames_dir):
        raise MetaPoseError(f"frames folder '{os.path.abspath(frames_dir)}' does not exist "
                            "(--frames): it must hold the full frames, "
                            "<sequence>/<sequence>_<frame>.jpg.")
    if os.path.abspath(frames_dir) == os.path.abspath(out_dir):
        raise MetaPoseError(f"--out '{out_dir}' is the frames folder: the crops would replace "
                            "the full frames. Choose another folder.")
    results = {}
    for split in splits:
        path = os.path.join(labels_dir, SPLIT_FILES[split])
        columns = load_labels(path, cache_dir=cache_dir)
        job = CropJob(columns["image"], columns["center"], columns["scale"], frames_dir,
                      out_dir, quality)
        start = time.perf_counter()
        counts, failures = cut_crops(job, workers, progress, description=f"{split} crops")
        seconds = time.perf_counter() - start
        results[split] = counts
        rate = counts["written"] / seconds if seconds > 0 else 0.0
        print(f"{split}: {len(job):,} frames: {counts['written']:,} crops written "
              f"({rate:,.0f} crops/s with {workers} workers), {counts['present']:,} already "
              f"there, {counts['missing frame']:,} frames missing, "
              f"{counts['unreadable frame']:,} unreadable", flush=True)
        for outcome, frame, message in failures:
            print(f"  {outcome}: {frame}" + (f" ({message})" if message else ""))
    print(f"crops under {os.path.abspath(out_dir)}; train with data.image_dir set to that "
          "folder (relative to data.root, or absolute)")
    return results


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    name_output_flag("--cache-dir", args.cache_dir)
    precrop(args.labels, args.frames, args.out, args.splits, args.workers, args.quality,
            cache_dir=args.cache_dir, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
