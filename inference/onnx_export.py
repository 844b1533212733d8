"""Export of a trained MetaPose (HRNet trunk + pose network) to ONNX with its text features baked
in as a constant table, checked against PyTorch with onnxruntime (docs/method.md §5).

The graph: inputs `images` (B, 3, H, W) float32, RGB normalised with the ImageNet mean/std, at
data.image_size; `keypoints_2d` (B, 17, 2) normalised screen coordinates of the frame
(u = x/w*2-1, v = y/w*2-h/w); `keypoints_2d_crop` (B, 17, 2) pixels of the 192x256 crop; and,
for a joint_action model exported without a fixed action, `action` (B,) int64: a row of the
text table, whose names (row 0 "all" = the mean of the 15 actions, then the actions in H36M id
order) are in the model's metadata `text_rows`. Output `joints_3d` (B, 17, 3) metres, H36M order,
camera axes, root-relative (joint 0 at 0, 0, 0; the metadata `joints_3d` says so), or with
`raw_output` the network's own output (joint 0 near 0). The batch axis is dynamic. Neither CLIP
nor the tokenizer is in the graph; the HRNet heatmap head is not exported (2D joints are inputs).
"""

import contextlib
import io
import os
import warnings

import numpy as np
import torch
from torch import nn

from inference.loading import TextFeatureTable, resolve_action
from models.flip_test import predict
from utils.atomic_files import atomic_write_bytes, cannot_write
from utils.errors import MetaPoseError

MIN_OPSET = 16  # grid_sample
DEFAULT_OPSET = 17
TOLERANCE_M = 1e-4


ROOT_RELATIVE = "metres, H36M order, camera axes, root-relative (joint 0 at 0, 0, 0)"
RAW_OUTPUT = "metres, H36M order, camera axes, the network's raw output (joint 0 near, not at, 0)"


class ExportedMetaPose(nn.Module):
    """The network as the graph sees it: the evaluation's prediction (models/flip_test.predict,
    with or without the flip test) of a MetaPose whose text encoder is a constant table, made
    root-relative unless `raw_output` (as every inference output)."""

    def __init__(self, model, flip_test, with_action, raw_output=False):
        super().__init__()
        self.model, self.flip_test, self.with_action = model, bool(flip_test), bool(with_action)
        self.raw_output = bool(raw_output)

    def forward(self, images, keypoints_2d, keypoints_2d_crop, action=None):
        if action is None:  # a one-row table
            action = torch.zeros_like(keypoints_2d[:, 0, 0], dtype=torch.long)
        inputs = {"images": images, "keypoints_2d": keypoints_2d,
                  "keypoints_2d_crop": keypoints_2d_crop, "actions": action}
        joints = predict(self.model, inputs, self.flip_test, "none")
        return joints if self.raw_output else joints - joints[:, :1]


def exported_module(loaded, action=None, flip_test=False, raw_output=False):
    """ExportedMetaPose of a LoadedModel: with `action` (a name or "all") the table is cut to that
    row and the graph has no action input; joint_action without `action` keeps every row.

    Raises MetaPoseError for an action given to a joint-mode model or an unknown action.
    """
    table = loaded.model.text_encoder
    if loaded.text_mode == "joint":
        if action is not None:
            raise MetaPoseError(f"--action {action!r}: this model's text mode is joint (no action "
                                "in its text), so there is no action to fix; export without "
                                "--action.")
        return ExportedMetaPose(loaded.model, flip_test, False, raw_output), table.names
    if action is not None:
        name = resolve_action(action, loaded.text_mode)
        row = table.row(name)
        loaded.model.text_encoder = TextFeatureTable(table.features[row:row + 1], (name,))
        return ExportedMetaPose(loaded.model, flip_test, False, raw_output), (name,)
    return ExportedMetaPose(loaded.model, flip_test, True, raw_output), table.names


def example_inputs(config, batch, rows, generator):
    """Plausible random inputs of the graph (images, screen joints, crop joints[, rows])."""
    height, width = (int(v) for v in config.data.image_size)
    images = torch.randn(batch, 3, height, width, generator=generator)
    screen = torch.rand(batch, 17, 2, generator=generator) * 1.6 - 0.8
    crop = torch.rand(batch, 17, 2, generator=generator) * torch.tensor([191.0, 255.0])
    action = torch.randint(0, rows, (batch,), generator=generator)
    return images, screen, crop, action


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise MetaPoseError(f"ONNX export needs the onnx and onnxruntime packages ({error}); "
                            "pip install -r requirements.txt installs them.") from None


def export_onnx(loaded, out_path, action=None, flip_test=False, opset=DEFAULT_OPSET,
                check_batches=(2, 3), raw_output=False):
    """Writes the ONNX file `out_path` (atomically, only once it passed the check) and returns
    {"rows", "inputs", "max_abs_diff_m", "bytes"}.

    The check runs the graph in onnxruntime (CPU) on random inputs of every batch size in
    `check_batches` (two sizes: the batch axis must really be dynamic) and compares with PyTorch.

    Raises:
        MetaPoseError for an opset without grid_sample, missing packages, a model the exporter
        cannot trace, or a graph that differs from PyTorch by more than 1e-4 m.
    """
    if int(opset) < MIN_OPSET:
        raise MetaPoseError(f"--opset {opset} cannot express the network: grid_sample (the "
                            f"feature sampling) needs ONNX opset {MIN_OPSET} or later.")
    _require_onnx()
    import onnx
    import onnxruntime

    module, rows = exported_module(loaded, action, flip_test, raw_output)
    module = module.cpu().eval()
    names = ["images", "keypoints_2d", "keypoints_2d_crop"] + (["action"] if module.with_action
                                                               else [])
    generator = torch.Generator().manual_seed(0)
    example = example_inputs(loaded.config, check_batches[0], len(rows), generator)[:len(names)]
    folder = os.path.dirname(os.path.abspath(out_path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise cannot_write(out_path, error, "pass a writable --out.") from None
    # the graph stays in memory until onnxruntime has checked it; then one atomic write
    exported = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, example, exported, input_names=names,
                              output_names=["joints_3d"], opset_version=int(opset),
                              dynamic_axes={name: {0: "batch"} for name in
                                            names + ["joints_3d"]}, dynamo=False)
        except Exception as error:  # the exporter's own errors name the unsupported op
            text = str(error).strip().splitlines()
            raise MetaPoseError(f"the network cannot be exported to ONNX opset {opset}: "
                                f"{type(error).__name__}: {text[0] if text else ''}") from None
    graph = onnx.load_from_string(exported.getvalue())
    onnx.checker.check_model(graph)
    metadata = {"text_rows": ",".join(rows),
                "joints_3d": RAW_OUTPUT if raw_output else ROOT_RELATIVE,
                "root_relative": str(not raw_output).lower(),
                "flip_test": str(bool(flip_test)).lower(),
                "image_size": "x".join(str(v) for v in loaded.config.data.image_size),
                "source": os.path.basename(loaded.path)}
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    data = graph.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in check_batches:
        inputs = example_inputs(loaded.config, batch, len(rows), generator)[:len(names)]
        with torch.no_grad():
            expected = module(*inputs).numpy()
        got = session.run(None, {name: value.numpy() for name, value in zip(names, inputs)})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if not worst < TOLERANCE_M:
        raise MetaPoseError(f"the exported graph differs from PyTorch by {worst:.2e} m "
                            f"(more than {TOLERANCE_M:g} m) in onnxruntime; nothing was "
                            "written. Try another --opset.")
    atomic_write_bytes(out_path, data)
    return {"rows": rows, "inputs": names, "max_abs_diff_m": worst,
            "bytes": os.path.getsize(out_path)}
