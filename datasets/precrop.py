"""Cutting 256x192 person crops out of full frames once, in parallel and resumably.

Decoding a full 1000x1002 frame costs several times as much as decoding its crop (docs/benchmarks.md), so
a training run that crops on the fly is held back by its DataLoader workers. `cut_crops` writes
every crop once with the crop map of datasets/images.py (`write_crop_file`): each crop is
written atomically, so a crop that exists is complete and a rerun skips it. Used by
tools/precrop_h36m.py (every frame of the label pickles) and tools/prepare_h36m.py --crop.
"""

import collections
import multiprocessing
import os
import sys

import numpy as np

from datasets.images import shown_image_path, unsafe_image_path, write_crop_file
from utils.errors import MetaPoseError

OUTCOMES = ("written", "present", "missing frame", "unreadable frame")
_CHUNK = 64  # crops per task handed to a worker
_EXAMPLES = 5  # failed frames named in the summary


class CropJob:
    """The crops to cut: frames_dir/<image> -> crops_dir/<image>, cut with each image's box.

    Args:
        images: (N,) relative image paths (str or UTF-8 bytes; numpy arrays or memory maps).
        centers, scales: (N, 2) boxes of the label columns (`center`, `scale`).
        frames_dir: folder of the full frames; crops_dir: folder the crops go to.
        quality: JPEG quality of the crops.
    """

    def __init__(self, images, centers, scales, frames_dir, crops_dir, quality=95):
        self.images, self.centers, self.scales = images, centers, scales
        self.frames_dir, self.crops_dir, self.quality = frames_dir, crops_dir, int(quality)

    def __len__(self):
        return len(self.images)

    def cut(self, index):
        """Cuts crop `index`; returns (outcome, frame path, message or None)."""
        name = self.images[index]
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        problem = unsafe_image_path(name)
        if problem is not None:
            raise MetaPoseError(f"image path {shown_image_path(name)} {problem}; refusing to read or write "
                                "outside the image folders.")
        frame, crop = os.path.join(self.frames_dir, name), os.path.join(self.crops_dir, name)
        if os.path.isfile(crop):
            return "present", frame, None
        if not os.path.lexists(frame):
            return "missing frame", frame, None
        try:
            write_crop_file(frame, crop, np.asarray(self.centers[index], dtype=np.float64),
                            np.asarray(self.scales[index], dtype=np.float64), self.quality)
        except MetaPoseError as error:
            if "cannot write the crop" in str(error):
                raise
            return "unreadable frame", frame, str(error)
        return "written", frame, None

    # spawned workers: re-open memory maps by name instead of copying their contents
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("images", "centers", "scales"):
            value = state[key]
            if isinstance(value, np.memmap) and value.filename:
                state[key] = ("__mmap__", value.filename)
        return state

    def __setstate__(self, state):
        for key in ("images", "centers", "scales"):
            value = state[key]
            if isinstance(value, tuple) and value[:1] == ("__mmap__",):
                state[key] = np.load(value[1], mmap_mode="r")
        self.__dict__.update(state)


_JOB = None  # the job of this worker process


def _start_worker(job):
    global _JOB
    import cv2
    cv2.setNumThreads(1)
    _JOB = job


def _cut_range(bounds):
    counts, failures = collections.Counter(), []
    for index in range(*bounds):
        outcome, frame, message = _JOB.cut(index)
        counts[outcome] += 1
        if outcome in ("missing frame", "unreadable frame") and len(failures) < _EXAMPLES:
            failures.append((outcome, frame, message))
    return counts, failures, bounds[1] - bounds[0]


def cut_crops(job, workers=None, progress=True, description="cropping"):
    """Cuts every crop of `job` with `workers` processes (default: one per CPU).

    Returns:
        (counts, failures): a Counter over OUTCOMES and up to a few (outcome, frame path,
        message) of the frames that could not be cut. Missing or unreadable frames are counted,
        never fatal; a crop that cannot be written raises MetaPoseError.
    """
    workers = max(1, int(workers or os.cpu_count() or 1))
    ranges = [(start, min(start + _CHUNK, len(job))) for start in range(0, len(job), _CHUNK)]
    counts, failures = collections.Counter({outcome: 0 for outcome in OUTCOMES}), []
    bar = _progress_bar(len(job), description, progress)
    try:
        if workers == 1 or len(job) <= _CHUNK:
            _start_worker(job)
            results = map(_cut_range, ranges)
            pool = None
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = multiprocessing.get_context(method).Pool(workers, _start_worker, (job,))
            results = pool.imap_unordered(_cut_range, ranges)
        try:
            for chunk_counts, chunk_failures, size in results:
                counts.update(chunk_counts)
                failures.extend(chunk_failures[:max(0, _EXAMPLES - len(failures))])
                if bar is not None:
                    bar.update(size)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        if bar is not None:
            bar.close()
    return counts, failures


def _progress_bar(total, description, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, unit="crop", file=sys.stderr,
                disable=None, mininterval=1.0, smoothing=0.05)
