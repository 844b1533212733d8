"""DataLoader worker memory with the columnar label cache versus a list of dicts (docs/method.md §1.1).

Writes a synthetic label pickle of --frames entries, then iterates a DataLoader with --workers
workers over (a) PoseFrameDataset on the memory-mapped columns and (b) a naive dataset holding the
unpickled list of dicts, and prints each worker's RSS / USS / PSS and private dirty memory (MB)
after the first batch and at the end. Images are blank so only the labels are measured.

    python benchmarks/data_memory.py --frames 100000 --workers 2
"""

import argparse
import os
import pickle
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from benchmarks.label_conversion import write_tool_layout  # noqa: E402
from datasets.pose_frames import PoseFrameDataset  # noqa: E402
from datasets.label_cache import RACY_SECONDS  # noqa: E402
from datasets.labels import _return_freed_memory, load_labels  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402


class _ListOfDicts(torch.utils.data.Dataset):
    """The naive alternative: the unpickled entries held by every worker."""

    def __init__(self, entries):
        self.entries = entries

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        joints = entry["joints_3d"] - entry["joints_3d"][:1]
        return {"joints_3d": torch.from_numpy(joints.astype(np.float32)),
                "keypoints_2d": torch.from_numpy(entry["joints_2d_cpn"].astype(np.float32)),
                "action": entry["action"], "image": torch.zeros(3, 8, 6, dtype=torch.uint8)}


def _private_dirty_mb(pid):
    """Private_Dirty of a process (MB): its own copies, unlike clean file pages (the memory-mapped
    columns it read, which the page cache shares and can drop); None where /proc lacks it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _worker_memory():
    rows = []
    for child in psutil.Process().children(recursive=True):
        try:
            info = child.memory_full_info()
        except psutil.Error:
            continue
        rows.append((child.pid, info.rss / 2**20, info.uss / 2**20, info.pss / 2**20,
                     _private_dirty_mb(child.pid)))
    return rows


def _measure(name, dataset, workers, batch_size):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=False)
    start, end = None, None
    began = time.perf_counter()
    for step, _ in enumerate(loader):
        if step == 0:
            start = _worker_memory()
        end = _worker_memory() if step % 20 == 0 else end
    end = _worker_memory() or end
    seconds = time.perf_counter() - began
    print(f"{name}: {len(dataset)} frames, {seconds:.1f} s")
    for (pid, rss0, uss0, pss0, dirty0), (_, rss1, uss1, pss1, dirty1) in zip(start, end):
        print(f"  worker {pid}: RSS {rss0:7.1f} -> {rss1:7.1f} MB   USS {uss0:7.1f} -> "
              f"{uss1:7.1f} MB   PSS {pss0:7.1f} -> {pss1:7.1f} MB   private dirty "
              f"{dirty0:6.1f} -> {dirty1:6.1f} MB")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=positive_int, default=100000,
                        help="label entries in the synthetic pickle (default 100000)")
    parser.add_argument("--workers", type=positive_int, default=2,
                        help="DataLoader worker processes measured (default 2)")
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="samples per batch (default 512)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="measure the memory-mapped columns only, not the list of dicts")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "h36m_train.pkl")
        write_tool_layout(path, args.frames)  # label entries as tools/prepare_h36m.py writes
        time.sleep(RACY_SECONDS)  # a pickle younger than this is hashed at every start
        _return_freed_memory()  # the generated entries, so the numbers below are the loader's
        rss_mb = psutil.Process().memory_info().rss / 2**20
        print(f"main process RSS before loading {rss_mb:.0f} MB")
        began = time.perf_counter()
        labels = load_labels(path)
        first = time.perf_counter() - began
        began = time.perf_counter()
        labels = load_labels(path)
        cached = time.perf_counter() - began
        cache = [name for name in os.listdir(folder) if ".columns-" in name][0]
        size = sum(os.path.getsize(os.path.join(folder, cache, f))
                   for f in os.listdir(os.path.join(folder, cache)))
        print(f"pickle {os.path.getsize(path) / 1e6:.1f} MB; first load {first:.2f} s, cached "
              f"load {cached * 1e3:.1f} ms; cache {size / 1e6:.1f} MB")
        print(f"main process RSS after loading {psutil.Process().memory_info().rss / 2**20:.0f} MB")
        dataset = PoseFrameDataset(labels, os.path.join(folder, "images"), image_size=(8, 6),
                              blank_images=True, train=True)
        _measure("columnar (memory-mapped)", dataset, args.workers, args.batch_size)
        if not args.skip_baseline:
            with open(path, "rb") as handle:
                entries = pickle.load(handle)
            print(f"main process RSS with the list of dicts "
                  f"{psutil.Process().memory_info().rss / 2**20:.0f} MB")
            _measure("list of dicts", _ListOfDicts(entries), args.workers, args.batch_size)


if __name__ == "__main__":
    run_cli(main)
