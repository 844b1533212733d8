"""Speed of the data tools on this machine: tools/prepare_h36m.py on a fake release (frames/s)
and tools/precrop_h36m.py on synthetic full frames (crops/s).

    python -m benchmarks.prepare_speed --frames 2000 --crops 400 --workers 1 2

The fake release (tests/fake_h36m_release.py) has every sequence of S1 and S9 for two cameras,
`--frames` frames each, in the real file formats (CDF poses, cameras.h5, CPN .npz); preparing it
reads the CDF files, builds the entries and writes both pickles. The crops are cut from `--crops`
synthetic 1000x1002 JPEG frames (datasets/synthetic.py --full-frames) at JPEG quality 95.
"""

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets.synthetic import generate_synthetic  # noqa: E402
from tests.fake_h36m_release import write_fake_release  # noqa: E402
from tools import precrop_h36m, prepare_h36m  # noqa: E402


def prepare_speed(folder, frames):
    recordings = {}
    for subject, layout in ((1, "official"), (9, "toolbox")):
        names = sorted(prepare_h36m.sequence_names(subject).items(), key=lambda item: item[1])
        recordings[subject] = (layout, [(name, action, subaction, (0, 2))
                                        for name, (action, subaction) in names])
    raw = os.path.join(folder, "raw")
    write_fake_release(raw, recordings, frames, images=False)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        counts = prepare_h36m.prepare(raw, os.path.join(folder, "data"),
                                      os.path.join(raw, "cameras.h5"),
                                      os.path.join(raw, prepare_h36m.CPN_FILE), None, None, 1,
                                      [1, 9])
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(f"prepare_h36m: {total:,} frames ({len(recordings) * 60} recordings of {frames} frames, "
          f"CPN, cameras.h5) in {seconds:.1f} s: {total / seconds:,.0f} frames/s")


def precrop_speed(folder, crops, workers):
    data = os.path.join(folder, "synthetic")
    generate_synthetic(data, crops, 1, seed=0, full_frames=True, verbose=False)
    for count in workers:
        out = os.path.join(folder, f"crops_{count}")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = precrop_h36m.precrop(data, os.path.join(data, "images"), out, ["train"],
                                          count, 95, progress=False)
        seconds = time.perf_counter() - start
        written = result["train"]["written"]
        print(f"precrop_h36m: {written} crops from 1000x1002 frames with {count} worker(s) in "
              f"{seconds:.1f} s: {written / seconds:,.0f} crops/s")
        shutil.rmtree(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per fake recording")
    parser.add_argument("--crops", type=int, default=400, help="full frames to crop")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        prepare_speed(folder, args.frames)
        precrop_speed(folder, args.crops, args.workers)


if __name__ == "__main__":
    main()
