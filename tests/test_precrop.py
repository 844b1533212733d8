"""tools/precrop_h36m.py: every frame cut once, in parallel, resumable, failures counted."""

import os
import subprocess
import sys

import numpy as np
import pytest

from datasets.images import crop_from_full_frame, read_image
from datasets.labels import load_labels
from tests import tiny_h36m
from tools import precrop_h36m
from utils.errors import MetaPoseError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _crop(root, out, *extra):
    return precrop_h36m.precrop(str(root), str(root / "images"), str(out), ["train", "validation"],
                                *extra or (2, 95), progress=False)


def test_cuts_every_frame_then_resumes(tiny_h36m_dir, tmp_path, capsys):
    out = tmp_path / "crops"
    results = _crop(tiny_h36m_dir, out)
    assert results["train"]["written"] == 6 and results["validation"]["written"] == 5
    printed = capsys.readouterr().out
    assert "crops/s with 2 workers" in printed and str(out) in printed
    labels = load_labels(str(tiny_h36m_dir / "h36m_train.pkl"))
    for row in range(6):
        name = labels["image"][row].decode()
        crop = read_image(str(out / name))
        expected = crop_from_full_frame(read_image(str(tiny_h36m_dir / "images" / name)),
                                        labels["center"][row], labels["scale"][row])
        assert crop.shape == (256, 192, 3)
        # the tiny pattern's saturated colour stripes lose most to JPEG chroma subsampling;
        # on frames like H36M's the difference is below 1 (tests/test_synthetic.py)
        assert np.abs(crop.astype(float) - expected).mean() < 3.0
    assert not [name for _, _, files in os.walk(out) for name in files if name.endswith(".tmp")]

    # interrupted run: one crop lost, one frame gone; the rerun cuts only what is missing
    os.remove(out / labels["image"][2].decode())
    os.remove(tiny_h36m_dir / "images" / labels["image"][4].decode())
    os.remove(out / labels["image"][4].decode())
    again = _crop(tiny_h36m_dir, out, 1, 95)
    assert dict(again["train"]) == {"written": 1, "present": 4, "missing frame": 1,
                                    "unreadable frame": 0}
    assert again["validation"]["present"] == 5
    assert "frames missing" in capsys.readouterr().out


def test_refuses_to_overwrite_the_frames_and_names_missing_folders(tiny_h36m_dir):
    with pytest.raises(MetaPoseError, match="replace the full frames"):
        precrop_h36m.precrop(str(tiny_h36m_dir), str(tiny_h36m_dir / "images"),
                             str(tiny_h36m_dir / "images"), ["train"], 1, 95, progress=False)
    with pytest.raises(MetaPoseError, match="frames folder .*nowhere"):
        precrop_h36m.precrop(str(tiny_h36m_dir), str(tiny_h36m_dir / "nowhere"),
                             str(tiny_h36m_dir / "out"), ["train"], 1, 95, progress=False)


def test_unreadable_frames_are_counted_not_fatal(tiny_h36m_dir, tmp_path, capsys):
    labels = load_labels(str(tiny_h36m_dir / "h36m_validation.pkl"))
    broken = tiny_h36m_dir / "images" / labels["image"][1].decode()
    broken.write_bytes(b"\xff\xd8 cut")
    results = precrop_h36m.precrop(str(tiny_h36m_dir), str(tiny_h36m_dir / "images"),
                                   str(tmp_path / "out"), ["validation"], 2, 90, progress=False)
    assert results["validation"]["unreadable frame"] == 1
    assert results["validation"]["written"] == 4
    assert str(broken) in capsys.readouterr().out


def test_command_line(tiny_h36m_dir, tmp_path):
    tool = os.path.join(ROOT, "tools", "precrop_h36m.py")
    result = subprocess.run([sys.executable, tool, "--labels", str(tiny_h36m_dir), "--frames",
                             str(tiny_h36m_dir / "images"), "--out", str(tmp_path / "c"),
                             "--workers", "1", "--splits", "validation", "--no-progress"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "validation: 5 frames: 5 crops written" in result.stdout
    result = subprocess.run([sys.executable, tool, "--labels", str(tmp_path / "none"), "--frames",
                             str(tiny_h36m_dir / "images"), "--out", str(tmp_path / "d")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert tiny_h36m.CROP_W == 192
