"""Exports a trained MetaPose to ONNX with its text features baked in, checked with onnxruntime.

Usage:
    python tools/export.py --checkpoint FILE --out FILE.onnx [--config FILE]
        [--action NAME|all] [--flip-test] [--raw-output] [--opset N] [KEY=VALUE ...]

The graph holds the HRNet trunk and the pose network; the text features of the prompts are a
constant table, so it needs neither CLIP nor the tokenizer. joint mode: no action input.
joint_action: with --action the graph is fixed to that action (or to 'all', the mean of the 15
actions' text features) and has no action input; without it the graph takes `action` (B,) int64,
a row of the table named in the metadata `text_rows` ("all", then Directions ... WalkTogether).
The output `joints_3d` is root-relative (joint 0 at 0, 0, 0), as every inference output; with
--raw-output it is the network's own output. Inputs and units: see inference/onnx_export.py and
docs/inference.md "Export".
"""

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference.onnx_export import DEFAULT_OPSET, MIN_OPSET, TOLERANCE_M  # noqa: E402
from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import add_overrides_argument, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="best.pt / last.pt of a run, a converted or a published checkpoint")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--config", help="experiment YAML (default: the config stored in the "
                                         "checkpoint; the paper's for published files)")
    parser.add_argument("--action", help="fix the text action (a name or 'all'); "
                                         "joint_action models only")
    parser.add_argument("--flip-test", action="store_true",
                        help="bake the flip test into the graph (two passes inside)")
    parser.add_argument("--raw-output", action="store_true",
                        help="output the network's own 3D joints instead of root-relative ones")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (>= 16 for grid_sample; default {DEFAULT_OPSET})")
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    return build_parser().parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    if args.opset < MIN_OPSET:  # refused before the model is loaded
        raise MetaPoseError(f"--opset {args.opset} cannot express the network: grid_sample (the "
                            f"feature sampling) needs ONNX opset {MIN_OPSET} or later.")
    from inference.loading import load_trained_model
    from inference.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random heatmap head's warning: not exported
        loaded = load_trained_model(args.checkpoint, args.config, args.overrides, "cpu")
    report = export_onnx(loaded, args.out, action=args.action, flip_test=args.flip_test,
                         opset=args.opset, raw_output=args.raw_output)
    inputs = ", ".join(report["inputs"])
    kind = "raw" if args.raw_output else "root-relative"
    print(f"wrote {args.out} ({report['bytes'] / 1e6:.1f} MB; inputs {inputs}; {kind} joints_3d; "
          "text rows "
          f"{', '.join(report['rows'])}); onnxruntime vs PyTorch: max |diff| "
          f"{report['max_abs_diff_m']:.2e} m (limit {TOLERANCE_M:g} m)")
    return 0


if __name__ == "__main__":
    run_cli(main)
