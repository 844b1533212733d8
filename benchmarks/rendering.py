"""Speed of the pictures of tools/infer.py: frames per second drawn into an MP4.

Usage:
    python benchmarks/rendering.py [--frames 36] [--people 1] [--sizes 1000x1002 640x480 1920x1080]
        [--no-video] [--json]

For each input frame size: a synthetic frame with `--people` people (random 2D and 3D skeletons,
two joints missing) drawn `--frames` times (the 3D poses move) and written into an MP4 with the
encoder tools/infer.py uses (H.264 when imageio-ffmpeg is installed), two ways:
    reused   one inference.pictures.FootageRenderer for the whole run (what tools/infer.py does:
             the 3D figure is built once and only its skeleton lines are redrawn);
    rebuilt  a new FootageRenderer, hence a new 3D figure, for every frame (a figure per frame).
Prints frames per second for both.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils.cli import positive_int, run_cli  # noqa: E402


def frame_size(text):
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        width = height = 0
    if width < 2 or height < 2:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}")
    return width, height


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=positive_int, default=36, help="frames per measurement")
    parser.add_argument("--people", type=positive_int, default=1, help="people per frame")
    parser.add_argument("--sizes", type=frame_size, nargs="+",
                        default=[(1000, 1002), (640, 480), (1920, 1080)], metavar="WxH",
                        help="input frame sizes (default 1000x1002 640x480 1920x1080)")
    parser.add_argument("--no-video", action="store_true",
                        help="draw only (no MP4 encoding)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser


def test_frame(width, height):
    """A frame that compresses like footage (smooth shading and a few shapes), not like noise."""
    import cv2

    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 200 // width, ys * 200 // height, (xs + ys) * 100 // (width + height)],
                     axis=-1).astype(np.uint8)
    for k in range(6):
        cv2.circle(image, (width * (k + 1) // 7, height // 2), max(4, height // 12),
                   (40 * k, 255 - 40 * k, 120), -1)
    return image


def people_of(rng, width, height, count, frame):
    people = []
    for number in range(count):
        pose = rng.normal(0.0, 0.25, (17, 3)) + frame * 0.005
        missing = np.zeros(17, bool)
        missing[[3, 6]] = True
        people.append({"box": [0.1 * width, 0.1 * height, 0.6 * width, 0.9 * height],
                       "joints_2d": rng.uniform(0.1, 0.9, (17, 2)) * [width, height],
                       "joints_3d": pose - pose[0], "missing": missing,
                       "label": f"#{number}"})
    return people


def measure(size, args, reuse, folder):
    from inference.pictures import FootageRenderer
    from inference.video_out import VideoOut

    rng = np.random.default_rng(0)
    width, height = size
    image = test_frame(width, height)
    frames = [people_of(rng, width, height, args.people, index) for index in range(args.frames)]
    video = None if args.no_video else VideoOut(os.path.join(folder, "out.mp4"), 25.0)
    start = time.perf_counter()
    renderer = FootageRenderer(args.people)
    for index, people in enumerate(frames):
        if not reuse:
            renderer = FootageRenderer(args.people)
        picture = renderer.render(image, people, f"frame {index}")
        if video is not None:
            video.write(picture)
    if video is not None:
        video.close()
    seconds = time.perf_counter() - start
    return {"size": f"{width}x{height}", "mode": "reused" if reuse else "rebuilt",
            "frames": args.frames, "seconds": round(seconds, 3),
            "frames_per_second": round(args.frames / seconds, 2),
            "codec": None if video is None else video.codec}


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            for reuse in (True, False):
                results.append(measure(size, args, reuse, folder))
    if args.json:
        print(json.dumps({"results": results}))
        return 0
    for result in results:
        print(f"{result['size']:>10} {result['mode']:>8}: {result['frames_per_second']:7.2f} "
              f"frames/s ({result['frames']} frames in {result['seconds']:.2f} s"
              + (f", {result['codec']}" if result["codec"] else "") + ")")
    return 0


if __name__ == "__main__":
    run_cli(main)
