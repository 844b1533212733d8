"""First start at the real size: converting a 1,559,752-entry label pickle into the column cache.

Writes a training pickle of --entries entries holding what tools/prepare_h36m.py puts in each
entry (docs/method.md §1.1: float64 joints, a per-entry camera dict, box, joints_vis, ...), then, each in
a fresh process, runs the first start (`load_labels` converting the pickle) and a cached start,
and prints the time and the peak resident memory of each, plus the RSS the process keeps after
the conversion (what forked DataLoader workers would inherit).

Two pickle layouts:
    single   one pickle.dump of the whole list (protocol 4), like CA-PF's preparation script;
             the worst case for the unpickler's memo.
             Written without ever holding the list (entries are pickled one by one against a
             memo seeded with the objects every entry shares, which is what a single dump does).
    tool     what tools/prepare_h36m.py writes now (datasets/label_writer.py: entries written
             incrementally, the memo cleared after every recording).

    python benchmarks/label_conversion.py --entries 1559752 --layout single --folder /tmp/lc
    python benchmarks/label_conversion.py --entries 389938 --repo /path/to/old/checkout ...

--repo runs the load steps with another checkout's `datasets` package (the "before" figures).
"""

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDING_FRAMES = 2600  # about the mean H36M recording length (frames per camera)
_TEMPLATE_M = np.array([  # a standing H36M skeleton (metres, camera axes: x right, y down)
    [0.0, 0.0, 0.0], [0.13, 0.0, 0.0], [0.13, 0.45, 0.02], [0.13, 0.89, 0.05],
    [-0.13, 0.0, 0.0], [-0.13, 0.45, 0.02], [-0.13, 0.89, 0.05], [0.0, -0.23, 0.0],
    [0.0, -0.48, 0.0], [0.0, -0.58, -0.05], [0.0, -0.69, 0.0], [-0.15, -0.46, 0.0],
    [-0.17, -0.19, 0.0], [-0.18, 0.06, 0.0], [0.15, -0.46, 0.0], [0.17, -0.19, 0.0],
    [0.18, 0.06, 0.0]])


def _recording_entries(rng, number, frames, subject):
    """`frames` label dicts of one recording, with the keys, types and sizes of the real ones."""
    action, subaction, camera_id = 2 + number % 15, 1 + (number // 15) % 2, number % 4
    root = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.3), rng.uniform(4.0, 6.0)])
    joints = root + _TEMPLATE_M + rng.normal(0, 0.01, (frames, 17, 3))
    fx, fy, cx, cy = 1145.0, 1144.0, 512.5, 515.4
    pixels = joints[..., :2] / joints[..., 2:] * np.array([fx, fy]) + np.array([cx, cy])
    noisy = pixels + rng.normal(0, 3.0, pixels.shape)
    camera = {"R": np.eye(3), "T": np.zeros((3, 1)), "fx": fx, "fy": fy, "cx": cx, "cy": cy,
              "k": np.zeros((3, 1)), "p": np.zeros((2, 1))}
    folder = f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera_id + 1:02d}"
    entries = []
    for frame in range(frames):
        root_z = joints[frame, 0, 2]
        size = 2000.0 / (root_z * 1000.0) * fx
        center = pixels[frame, 0] + np.array([0.0, 0.1 * size])
        scale = np.array([size / 200.0, size / 200.0])
        zoom = 191.0 / (size - 1.0)
        entries.append({
            "image": f"{folder}/{folder}_{frame + 1:06d}.jpg",
            "joints_3d": joints[frame].copy(),
            "joints_2d_gt": pixels[frame] / 500.0 - 1.0,
            "joints_2d_cpn": noisy[frame] / 500.0 - 1.0,
            "joints_2d_gt_crop": (pixels[frame] - center) * zoom + np.array([95.5, 127.5]),
            "joints_2d_cpn_crop": (noisy[frame] - center) * zoom + np.array([95.5, 127.5]),
            "subject": subject, "action": action, "subaction": subaction,
            "camera_id": camera_id, "image_id": frame + 1, "video_id": number,
            "camera": {key: value.copy() if isinstance(value, np.ndarray) else value
                       for key, value in camera.items()},
            "center": center, "scale": scale,
            "box": np.concatenate([center - size / 2, center + size / 2]),
            "joints_vis": np.ones((17, 3)), "source": "h36m", "nposes": frames,
        })
    return entries


def _recordings(entries, seed=0):
    """Yields (recording number, its entries) until `entries` entries were produced."""
    rng = np.random.default_rng(seed)
    subjects = (1, 5, 6, 7, 8)
    done, number = 0, 0
    while done < entries:
        frames = min(RECORDING_FRAMES, entries - done)
        yield number, _recording_entries(rng, number, frames, subjects[number % 5])
        done += frames
        number += 1


def _strip(data):
    """The opcodes of one protocol-4 `pickle.dumps` result without PROTO, FRAME and STOP."""
    assert data[:2] == b"\x80\x04" and data[-1:] == b"."
    body = data[2:-1]
    if body[:1] == b"\x95":  # one frame (an entry is far below the 64 kB frame size)
        assert int.from_bytes(body[1:9], "little") == len(body) - 9 + 1
        body = body[9:]
    return body


def write_single_dump(path, entries):
    """The bytes pickle.dump(list_of_entries, protocol=4) would write, without the list.

    Every later entry is pickled against a memo seeded with the first entry's objects (the
    shared key strings, numpy globals and dtypes), at the indices they have in the whole
    stream; so it refers back to them exactly as one dump of the whole list does.
    """
    with open(path, "wb") as handle:
        handle.write(b"\x80\x04]\x94")  # PROTO 4, EMPTY_LIST, MEMOIZE (the list is index 0)
        seed, pending, first = None, [], None
        for _, recording in _recordings(entries):
            for entry in recording:
                buffer = io.BytesIO()
                pickler = pickle.Pickler(buffer, protocol=4)
                if seed is None:  # the list itself is memo index 0
                    placeholder = []
                    pickler.memo = {id(placeholder): (0, placeholder)}
                    pickler.dump(entry)
                    seed = pickler.memo.copy()
                    first = entry  # keeps the seeded objects alive
                else:
                    pickler.memo = seed
                    pickler.dump(entry)
                pending.append(_strip(buffer.getvalue()))
                if len(pending) == 1000:
                    handle.write(b"(" + b"".join(pending) + b"e")
                    pending = []
        if pending:
            handle.write(b"(" + b"".join(pending) + b"e")
        handle.write(b".")
    del first


def write_tool_layout(path, entries):
    """The file tools/prepare_h36m.py writes: datasets/label_writer.py, memo cleared per recording."""
    sys.path.insert(0, ROOT)
    from datasets.label_writer import LabelPickleWriter

    with LabelPickleWriter(path) as writer:
        for _, recording in _recordings(entries):
            writer.write_recording(recording)


def peak_rss_bytes():
    """This process's peak resident memory (VmHWM). Unlike getrusage's ru_maxrss, which after
    fork + exec keeps the parent's peak, it counts this program only."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load_step(pickle_path, cache_dir, repo):
    """Runs in a fresh process: one load_labels call; prints a JSON line of its figures."""
    sys.path.insert(0, repo)
    import resource

    import psutil

    from datasets.labels import load_labels

    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    columns = load_labels(pickle_path, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    frames = len(columns["image"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, cpu = peak_rss_bytes(), usage.ru_utime + usage.ru_stime
    after = psutil.Process().memory_info().rss
    repeat = time.perf_counter()
    load_labels(pickle_path, cache_dir=cache_dir)
    again = time.perf_counter() - repeat
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "frames": frames, "peak_rss": peak,
                      "rss_before": before, "rss_after": after, "again_s": again}))


def _run_load(pickle_path, cache_dir, repo):
    command = [sys.executable, "-c",
               "import sys; sys.path.insert(0, sys.argv[1]); "
               "from benchmarks.label_conversion import _load_step; "
               "_load_step(sys.argv[2], sys.argv[3], sys.argv[4])",
               ROOT, pickle_path, cache_dir, repo]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        sys.exit(f"load step failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1559752,
                        help="label entries in the pickle (default 1559752: the H36M training "
                             "set)")
    parser.add_argument("--layout", choices=("single", "tool"), default="single",
                        help="pickle layout: single (one dump) or tool (tools/prepare_h36m.py's); "
                             "default single")
    parser.add_argument("--folder", required=True, help="where the pickle and its cache go")
    parser.add_argument("--repo", default=ROOT,
                        help="checkout whose datasets/ does the loading (default: this one)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the pickle a previous run left in --folder")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    path = os.path.join(args.folder, f"h36m_train_{args.layout}_{args.entries}.pkl")
    cache_dir = os.path.join(args.folder, f"cache_{os.path.basename(os.path.abspath(args.repo))}")
    if not (args.keep and os.path.isfile(path)):
        start = time.perf_counter()
        (write_single_dump if args.layout == "single" else write_tool_layout)(path, args.entries)
        print(f"wrote {path}: {os.path.getsize(path) / 1e9:.2f} GB in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    if os.path.isdir(cache_dir):
        import shutil
        shutil.rmtree(cache_dir)
    first = _run_load(path, cache_dir, os.path.abspath(args.repo))
    cached = _run_load(path, cache_dir, os.path.abspath(args.repo))
    gib = 2 ** 30
    print(f"{first['frames']:,} entries, pickle {os.path.getsize(path) / 1e9:.2f} GB "
          f"({args.layout} layout), code from {args.repo}")
    print(f"first start: {first['seconds']:.1f} s ({first['cpu_s']:.1f} s CPU), peak RSS {first['peak_rss'] / gib:.2f} GiB, "
          f"RSS kept after it {first['rss_after'] / gib:.2f} GiB "
          f"(before loading {first['rss_before'] / gib:.2f} GiB)")
    print(f"cached start (fresh process): {cached['seconds'] * 1e3:.1f} ms, peak RSS "
          f"{cached['peak_rss'] / gib:.2f} GiB; again in the same process "
          f"{cached['again_s'] * 1e3:.1f} ms")


if __name__ == "__main__":
    # Imported here, not at the top: the load steps import this module in processes whose
    # `utils` and `datasets` must come from --repo.
    sys.path.insert(0, ROOT)
    from utils.cli import run_cli

    run_cli(main)
