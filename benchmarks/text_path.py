"""Benchmark of the text path alone: one encoding of all 15 actions, truncated vs the full 77
tokens, in both layouts, and how far the truncated features are from the full-length ones.

    python benchmarks/text_path.py [--text-encoder ViT-B/32] [--device cpu|cuda|cuda:N]
        [--repeats 3] [--prompts FILE] [--json]

The CLIP tower has random weights (no file is read here); speed and the truncation error do not
depend on the values. Prints, per layout:

    tokens_truncated / tokens_full      positions run per sequence (longest read index + 1 / 77)
    encode_all_s_truncated / _full      seconds for the 15 x 17 sequences without gradients:
                                        the encoder's own (truncated) path / the reference
                                        over all 77 positions (text_features_reference)
    train_step_s_trained                forward + backward of the 15 actions, trained prompts
    train_step_s_frozen                 the same call with frozen prompts (served from the cache)
    max_abs_diff / max_rel_diff         truncated vs full features (float32)
"""

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models.prompts import DEFAULT_PROMPTS_FILE  # noqa: E402
from models.text_encoder import (TEXT_LAYOUTS, build_text_encoder,  # noqa: E402
                                 text_features_reference)
from utils.cli import add_device_argument, positive_int, resolve_device, run_cli  # noqa: E402
from utils.config import CHOICES  # noqa: E402
from utils.skeleton import ACTION_IDS  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text-encoder", choices=CHOICES["model.text_encoder.type"],
                        default="ViT-B/32", help="CLIP text encoder type (default ViT-B/32)")
    add_device_argument(parser)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs (the minimum counts; default 3)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS_FILE,
                        help="prompts file (default: the repository's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def best_time(function, repeats, device):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(layout, args, device):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random CLIP weights
        encoder = build_text_encoder(args.text_encoder, None, "joint_action", 10, layout=layout,
                                     train_prompts=True, prompts=args.prompts).to(device)
    actions = torch.tensor(ACTION_IDS, device=device)
    features = {}

    def encode(truncate):
        def run():
            with torch.no_grad():
                if truncate:  # the encoder's own path: all actions at once, into its cache
                    encoder.clear_cache()
                    features[truncate] = encoder(actions)
                else:
                    features[truncate] = text_features_reference(encoder, actions)
        return run

    def train_step():
        encoder.train()
        out = encoder(actions)
        if out.requires_grad:
            out.sum().backward()
            encoder.prompts.grad = None

    figures = {
        "tokens_truncated": max(encoder.row_lengths), "tokens_full": encoder.token_ids.shape[-1],
        "encode_all_s_truncated": best_time(encode(True), args.repeats, device),
        "encode_all_s_full": best_time(encode(False), args.repeats, device),
        "train_step_s_trained": best_time(train_step, args.repeats, device),
    }
    encoder.prompts.requires_grad_(False)
    train_step()  # fills the cache once, as the first training step does
    figures["train_step_s_frozen"] = best_time(train_step, args.repeats, device)
    difference = (features[True] - features[False]).abs().max().item()
    figures["max_abs_diff"] = difference
    figures["max_rel_diff"] = difference / features[False].abs().max().item()
    return figures


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    results = {layout: measure(layout, args, device) for layout in TEXT_LAYOUTS}
    results["text_encoder"] = args.text_encoder
    results["threads"] = torch.get_num_threads()
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"text path, {args.text_encoder}, 15 actions x 17 joints, {device}, "
          f"{results['threads']} thread(s)")
    for layout in TEXT_LAYOUTS:
        print(f"  {layout}:")
        for name, value in results[layout].items():
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            print(f"    {name:24s} {text}")
    return 0


if __name__ == "__main__":
    run_cli(main)
