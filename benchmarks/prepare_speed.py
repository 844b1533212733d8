"""Speed of the data tools on this machine: tools/prepare_h36m.py on a fake release (frames/s)
and tools/precrop_h36m.py on synthetic full frames (crops/s).

    python benchmarks/prepare_speed.py --frames 2000 --crops 400 --workers 1 2

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
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from datasets.synthetic import generate_synthetic  # noqa: E402
from tests.fake_h36m_release import write_fake_release  # noqa: E402
from tools import precrop_h36m, prepare_h36m  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402


# runs a tool's main and prints its own peak RSS (bytes) last on stderr
_RUN_TOOL = ("import runpy, sys\nsys.argv = sys.argv[1:]\nsys.path.insert(0, '.')\n"
             "from benchmarks.label_conversion import peak_rss_bytes\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('peak', peak_rss_bytes(), file=sys.stderr)")


def prepare_speed(folder, frames):
    recordings = {}
    for subject, layout in ((1, "official"), (9, "toolbox")):
        names = sorted(prepare_h36m.sequence_names(subject).items(), key=lambda item: item[1])
        recordings[subject] = (layout, [(name, action, subaction, (0, 2))
                                        for name, (action, subaction) in names])
    raw = os.path.join(folder, "raw")
    write_fake_release(raw, recordings, frames, images=False)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _RUN_TOOL, os.path.join(ROOT, "tools",
                             "prepare_h36m.py"), "--raw", raw, "--out",
                             os.path.join(folder, "data"), "--subjects", "1,9", "--workers", "1"],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    peak = float(result.stderr.strip().splitlines()[-1].split()[-1]) / 2 ** 30
    total = sum(int(line.split()[1].replace(",", "")) for line in result.stdout.splitlines()
                if line.startswith(("train:", "validation:")))
    print(f"prepare_h36m: {total:,} frames ({len(recordings) * 60} recordings of {frames} frames, "
          f"CPN, cameras.h5) in {seconds:.1f} s with the interpreter's start: "
          f"{total / seconds:,.0f} frames/s; peak RSS {peak:.2f} GiB")


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


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=positive_int, default=2000,
                        help="frames per fake recording (default 2000)")
    parser.add_argument("--crops", type=positive_int, default=400,
                        help="full frames to crop (default 400)")
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], metavar="N",
                        help="worker counts of tools/precrop_h36m.py, one figure each "
                             "(default 1 2)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        prepare_speed(folder, args.frames)
        precrop_speed(folder, args.crops, args.workers)


if __name__ == "__main__":
    run_cli(main)
