"""Loading a full-size MPI-INF-3DHP training label file: the first (converting) and the cached
load, and building the dataset over it (docs/method.md §6: 1,052,736 samples).

Writes a file in CA-PF's layout with the real sequence lengths (SEQUENCE_INFO x the 8 vnect
cameras) and random joints, then prints its size, the seconds of each step and the peak RSS.

    python benchmarks/labels_3dhp.py [--scale 1.0] [--folder DIR]
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from datasets.mpi_inf_3dhp import MPIINF3DHPDataset  # noqa: E402
from datasets.mpi_inf_3dhp_labels import (SEQUENCE_INFO, VNECT_CAMERAS,  # noqa: E402
                                          load_3dhp_labels, train_sequence_name,
                                          write_label_file)
from utils.cli import run_cli  # noqa: E402


def full_size_layout(scale, seed=0):
    """CA-PF's training layout with round(scale x F) frames per camera (float32 arrays)."""
    rng = np.random.default_rng(seed)
    layout = {}
    for (subject, sequence), (frames, fps) in sorted(SEQUENCE_INFO.items()):
        count = max(1, round(frames * scale))
        cameras = {}
        for camera in VNECT_CAMERAS:
            joints = rng.normal(0, 300, (count, 17, 3)).astype(np.float32)
            joints[..., 2] += 4000.0
            cameras[str(camera)] = {
                "data_2d": rng.uniform(-0.6, 0.6, (count, 17, 2)).astype(np.float32),
                "data_2d_crop": rng.uniform(0, 191, (count, 17, 2)).astype(np.float32),
                "data_3d": joints}
        layout[train_sequence_name(subject, sequence)] = [cameras, fps]
    return layout


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the real frame counts (default 1.0: 1,052,736)")
    parser.add_argument("--folder", help="folder to write into and keep (default: a temporary "
                                         "folder, removed at the end)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = args.folder or tempfile.mkdtemp(prefix="labels_3dhp_")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "data_train_3dhp.npz")
    try:
        start = time.perf_counter()
        layout = full_size_layout(args.scale)
        write_label_file(path, layout)
        del layout
        written = time.perf_counter() - start
        start = time.perf_counter()
        columns = load_3dhp_labels(path)
        first = time.perf_counter() - start
        rows = len(columns["image"])
        del columns
        start = time.perf_counter()
        columns = load_3dhp_labels(path)
        cached = time.perf_counter() - start
        start = time.perf_counter()
        dataset = MPIINF3DHPDataset(columns, folder, blank_images=True)
        sample = dataset[len(dataset) - 1]
        built = time.perf_counter() - start
        cache = [os.path.join(folder, name) for name in os.listdir(folder)
                 if ".columns-" in name and os.path.isdir(os.path.join(folder, name))]
        cache_bytes = sum(os.path.getsize(os.path.join(cache[0], name))
                          for name in os.listdir(cache[0]))
        print(f"samples: {rows:,} ({len(dataset):,} in the dataset, last sample keys "
              f"{sorted(sample)})")
        print(f"label file: {os.path.getsize(path) / 1e6:.0f} MB, written in {written:.1f} s")
        print(f"first load (restricted unpickle, validation, column cache): {first:.1f} s")
        print(f"cached load (memory-mapped columns): {cached * 1000:.0f} ms")
        print(f"dataset over the cached columns + one sample: {built:.2f} s")
        print(f"column cache: {cache_bytes / 1e6:.0f} MB ({cache_bytes / rows:.0f} bytes per "
              "sample)")
        print(f"peak RSS of this process: {_peak_rss_mb():.0f} MB")
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    run_cli(main)
