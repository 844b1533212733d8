"""CPU (or CUDA) throughput of inference: a full frame to 3D poses through `inference.Predictor`.

Usage:
    python benchmarks/inference.py [--config experiments/human36m/human36m.yaml]
        [--device cpu|cuda|cuda:N] [--batch-sizes 1 32] [--frames 64] [--flip-test]
        [--user-keypoints] [--json] [KEY=VALUE ...]

The model is the config's (default: the paper configuration, HRNet-W32 + ViT-B/32) with random
weights (throughput does not depend on their values). Each frame is a 1000x1002 image whose
whole frame is the person box; the chain is crop -> HRNet (features and COCO heatmaps) -> COCO
-> H36M -> pose network, or with --user-keypoints the joints are given and only the heatmap
decoding is skipped. Text features are a constant table after start-up (not timed). Prints
frames per second for each batch size (people batched per forward pass).
"""

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       resolve_device, run_cli)
from utils.config import load_config  # noqa: E402

PAPER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                     "human36m", "human36m.yaml")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=PAPER,
                        help="experiment YAML (default: the paper's, "
                             "experiments/human36m/human36m.yaml)")
    add_device_argument(parser)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 32],
                        metavar="N", help="people per forward pass, one figure each "
                                          "(default 1 32)")
    parser.add_argument("--frames", type=positive_int, default=64,
                        help="frames timed per batch size (rounded up to whole batches)")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed batches first")
    parser.add_argument("--flip-test", action="store_true",
                        help="average with the mirrored prediction, as tools/infer.py "
                             "--flip-test does")
    parser.add_argument("--user-keypoints", action="store_true",
                        help="give the 2D joints (as tools/infer.py --keypoints does): the "
                             "heatmap decoding is skipped")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    return build_parser().parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # joint mode: one text row to compute at start-up; the per-frame cost is the same
    config = load_config(args.config, ["model.text_encoder.mode=joint", *args.overrides])
    from inference import Predictor
    from models import build_model

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config, weights_from_checkpoint=True)
        config.model.image_encoder.pretrained = None  # random trunk: the head is random too
        predictor = Predictor.from_model(model, config, device=resolve_device(args.device),
                                         flip_test=args.flip_test)
    setup_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1002, 1000, 3), dtype=np.uint8)
    keypoints = [rng.uniform(200, 800, (17, 2))] if args.user_keypoints else None
    results = {"config": os.path.relpath(args.config), "device": str(predictor.device),
               "threads": torch.get_num_threads(), "flip_test": args.flip_test,
               "user_keypoints": args.user_keypoints, "setup_s": round(setup_s, 2)}
    for batch in args.batch_sizes:
        predictor.batch_size = batch
        requests = [predictor.request(frame, keypoints=keypoints) for _ in range(batch)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random head's warning, said at its first use
            for _ in range(args.warmup):
                predictor.predict_frames(requests)
        rounds = -(-args.frames // batch)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(rounds):
            predictor.predict_frames(requests)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        results[f"batch_{batch}_frames_per_s"] = round(rounds * batch / seconds, 3)
        if not args.json:
            print(f"batch {batch:3d}: {rounds * batch / seconds:8.3f} frames/s "
                  f"({rounds * batch} frames in {seconds:.1f} s)", flush=True)
    print(json.dumps(results) if args.json else
          f"setup {setup_s:.1f} s, {results['threads']} threads, {results['device']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
