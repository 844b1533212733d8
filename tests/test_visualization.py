"""Sample figures, PNG grids, the CLI error wrapper and the visualize tool's input checks."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from utils.cli import run_cli
from utils.config import load_config
from utils.errors import MetaPoseError
from utils.metrics_h36m import ActionErrorAccumulator
from utils.visualization import crop_to_image_pixels, draw_sample, figure_to_array, save_samples_png

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A standing person, camera frame (Y down), root-relative metres.
STANDING = np.array([
    [0, 0, 0], [-0.13, 0, 0], [-0.14, 0.45, 0.02], [-0.15, 0.88, 0.05], [0.13, 0, 0],
    [0.14, 0.45, 0.02], [0.15, 0.88, 0.05], [0, -0.23, 0], [0, -0.48, 0], [0, -0.58, -0.08],
    [0, -0.68, 0], [0.17, -0.45, 0], [0.3, -0.2, 0], [0.35, 0.05, -0.1], [-0.17, -0.45, 0],
    [-0.32, -0.22, 0.05], [-0.4, 0.0, -0.15]], dtype=np.float32)


def make_sample(seed=0, height=64, width=48):
    rng = np.random.default_rng(seed)
    keypoints_crop = np.stack([STANDING[:, 0] * 120 + 96, STANDING[:, 1] * 120 + 128], axis=1)
    return {
        "image": rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
        "keypoints_crop": keypoints_crop,
        "pred_3d": STANDING + rng.normal(0, 0.03, STANDING.shape).astype(np.float32),
        "gt_3d": STANDING,
        "title": f"Walking #{seed}",
    }


def test_draw_sample_and_figure_to_array():
    sample = make_sample()
    fig = draw_sample(sample["image"], sample["keypoints_crop"], sample["pred_3d"],
                      sample["gt_3d"], title=sample["title"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 and fig.axes[1].name == "3d"
    array = figure_to_array(fig)
    width, height = fig.canvas.get_width_height()
    assert array.shape == (height, width, 3) and array.dtype == np.uint8
    assert array.std() > 10  # something was drawn


def test_draw_sample_accepts_torch_chw():
    sample = make_sample(1)
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1)
    fig = draw_sample(image, torch.from_numpy(sample["keypoints_crop"]),
                      torch.from_numpy(sample["pred_3d"]), torch.from_numpy(sample["gt_3d"]))
    assert figure_to_array(fig).ndim == 3


def test_crop_to_image_pixels_maps_pixel_edges():
    keypoints = np.array([[-0.5, -0.5], [191.5, 255.5], [95.5, 127.5]])
    mapped = crop_to_image_pixels(keypoints, height=64, width=48)
    assert np.allclose(mapped, [[-0.5, -0.5], [47.5, 63.5], [23.5, 31.5]])


def test_save_samples_png_writes_readable_png(tmp_path):
    path = tmp_path / "nested" / "grid.png"
    assert save_samples_png(str(path), [make_sample(i) for i in range(3)], columns=2) == str(path)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None and image.ndim == 3
    assert image.shape[1] > image.shape[0]  # two samples per row, two rows
    with pytest.raises(ValueError):
        save_samples_png(str(tmp_path / "empty.png"), [])


def test_tensorboard_add_figure(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    sample = make_sample()
    writer = SummaryWriter(str(tmp_path))
    writer.add_figure("validation/sample", draw_sample(sample["image"], sample["keypoints_crop"],
                                                       sample["pred_3d"], sample["gt_3d"]), 0)
    writer.close()
    assert any(name.startswith("events.") for name in os.listdir(tmp_path))


def test_run_cli_turns_errors_into_exit_codes(capsys):
    def bad(argv):
        raise MetaPoseError("file 'x.yaml' is missing.\nPass an existing file.")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bad)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: file 'x.yaml' is missing. Pass an existing file."

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli(interrupted)
    assert exit_info.value.code == 130

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda argv: None)
    assert exit_info.value.code == 0


def test_visualize_tool_rejects_bad_input(tmp_path, capsys):
    from tools.visualize import main

    config = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
    out = str(tmp_path / "out.png")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MetaPoseError, match="is not a PyTorch checkpoint"):
        main(["--config", config, "--checkpoint", str(garbage), "--out", out])
    not_weights = tmp_path / "not_weights.pt"
    torch.save({"epoch": 3}, not_weights)
    with pytest.raises(MetaPoseError, match="is not a model checkpoint"):
        main(["--config", config, "--checkpoint", str(not_weights), "--out", out])
    weights = tmp_path / "weights.pt"
    torch.save({"model": {"lift.weight": torch.zeros(3, 2)}}, weights)
    with pytest.raises(MetaPoseError, match="config file"):
        main(["--config", str(tmp_path / "none.yaml"), "--checkpoint", str(weights), "--out", out])
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser: usage, exit 2
        main(["--config", config, "--checkpoint", str(garbage), "--out", out, "--num", "0"])
    assert exit_info.value.code == 2 and "--num: expected a positive integer, got '0'" in \
        capsys.readouterr().err

    # As a program: one line on stderr, exit status 2, no traceback.
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "visualize.py"),
                             "--config", config, "--checkpoint", str(tmp_path / "none.pt"),
                             "--out", out], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class _FakePoseModel(torch.nn.Module):
    """Stands in for MetaPose: (images, keypoints_2d, keypoints_2d_crop, actions) -> (B, 17, 3)."""

    def __init__(self):
        super().__init__()
        self.lift = torch.nn.Linear(2, 3)

    def forward(self, images, keypoints_2d, keypoints_2d_crop, actions):
        assert images.dtype == torch.float32 and images.shape[1] == 3
        assert keypoints_2d_crop.shape == keypoints_2d.shape and actions.dtype == torch.int64
        return self.lift(keypoints_2d) + images.mean() * 0


class _FakeDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        sample = make_sample(index, height=32, width=24)
        return {
            "image": torch.from_numpy(sample["image"]).permute(2, 0, 1).contiguous(),
            "keypoints_2d": torch.from_numpy(STANDING[:, :2] * 0.3),
            "keypoints_2d_crop": torch.from_numpy(sample["keypoints_crop"]).float(),
            "joints_3d": torch.from_numpy(STANDING),
            "action": torch.tensor(2 + index, dtype=torch.int64),
            "subject": torch.tensor(9, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def test_visualize_tool_with_stand_in_model_and_data(tmp_path, monkeypatch):
    """The tool's own logic (checkpoint formats, flip-test prediction, drawing) with the model
    and dataset builders replaced by small stand-ins."""
    import types

    # Imported before `models` and `datasets` are replaced below.
    import datasets.transforms  # noqa: F401
    import models.flip_test  # noqa: F401
    import models.published_checkpoint  # noqa: F401
    from tools.visualize import main

    monkeypatch.setitem(sys.modules, "models",
                        types.SimpleNamespace(build_model=lambda config, **kwargs: _FakePoseModel()))
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(build_dataset=lambda config, split: _FakeDataset(),
                                              build_metric_set=lambda config, dataset:
                                              ActionErrorAccumulator()))
    config = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
    weights = _FakePoseModel().state_dict()
    checkpoints = {"engine.pt": {"model": weights, "epoch": 1},
                   "raw.pt": weights,
                   "ddp.pt": {"module." + key: value for key, value in weights.items()}}
    for name, content in checkpoints.items():
        torch.save(content, tmp_path / name)
        out = tmp_path / f"{name}.png"
        assert main(["--config", config, "--checkpoint", str(tmp_path / name), "--out", str(out),
                     "--num", "3", "--device", "cpu"]) == 0
        assert cv2.imread(str(out)) is not None

    # Without --config: the config stored in the checkpoint; a raw state dict has none.
    stored = {"model": weights, "epoch": 1, "config": json.loads(json.dumps(load_config(config)))}
    torch.save(stored, tmp_path / "stored.pt")
    assert main(["--checkpoint", str(tmp_path / "stored.pt"), "--out", str(tmp_path / "s.png"),
                 "--num", "2", "--device", "cpu"]) == 0
    assert cv2.imread(str(tmp_path / "s.png")) is not None
    with pytest.raises(MetaPoseError, match="holds MetaPose weights but no config; pass --config"):
        main(["--checkpoint", str(tmp_path / "raw.pt"), "--out", str(tmp_path / "r.png")])

    torch.save({"model": {"other.weight": torch.zeros(3, 2)}}, tmp_path / "wrong.pt")
    with pytest.raises(MetaPoseError, match="does not fit"):
        main(["--config", config, "--checkpoint", str(tmp_path / "wrong.pt"),
              "--out", str(tmp_path / "wrong.png"), "--device", "cpu"])
    torch.save({"model": {"lift.weight": torch.zeros(4, 2), "lift.bias": torch.zeros(3)}},
               tmp_path / "shape.pt")
    with pytest.raises(MetaPoseError, match="does not fit"):
        main(["--config", config, "--checkpoint", str(tmp_path / "shape.pt"),
              "--out", str(tmp_path / "shape.png"), "--device", "cpu"])
