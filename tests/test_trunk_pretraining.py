"""Stage 1 of the synthetic demo (models/trunk_pretraining.py, tools/pretrain_trunk.py): the trunk
file's layout, its staleness checks, the synthetic set's stamp and the COCO joints it draws."""

import os

import numpy as np
import pytest
import torch

from datasets import SYNTHETIC_STAMP, build_dataset, synthetic_set_problem
from datasets.coco_joints_file import coco_file_path, read_coco_file
from inference.keypoints import coco_to_h36m
from models.hrnet import HRNet, build_image_encoder, load_keypoint_head, load_pretrained
from models.trunk_pretraining import (crop_to_heatmap, gaussian_targets, heatmap_shape,
                                      stamp_path, trunk_problem)
from tools import pretrain_trunk
from utils.config import load_config
from utils.errors import MetaPoseError
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tests", "tiny.yaml")
WIDTH = 2


def _overrides(folder, *extra):
    return [f"data.root={folder}", "data.synthetic.train_frames=24",
            "data.synthetic.val_frames=12", "data.synthetic.trunk.enabled=true",
            "data.synthetic.trunk.epochs=1", "data.synthetic.trunk.batch_size=12",
            f"model.image_encoder.width={WIDTH}",
            f"model.image_encoder.pretrained={folder}/trunk.pth", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic set and the stage-1 trunk trained on it by the command-line tool."""
    folder = str(tmp_path_factory.mktemp("stage1"))
    with pytest.raises(SystemExit) as exit_info:
        pretrain_trunk.run_cli(pretrain_trunk.main, ["--config", TINY, *_overrides(folder)])
    assert exit_info.value.code == 0
    return folder


def test_trunk_file_has_the_official_layout_and_loads_as_pretrained(trained):
    path = os.path.join(trained, "trunk.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    trunk_keys = set(HRNet(WIDTH).state_dict())
    assert trunk_keys <= set(state)
    assert set(state) - trunk_keys == {"final_layer.weight", "final_layer.bias"}
    assert tuple(state["final_layer.weight"].shape) == (17, WIDTH, 1, 1)
    # the trunk loader takes it strictly, and it is not the random initialisation
    loaded = load_pretrained(HRNet(WIDTH), path, "hrnet_32")
    assert not torch.equal(loaded.conv1.weight, HRNet(WIDTH).conv1.weight)
    head, same_trunk = load_keypoint_head(path, WIDTH, trunk=loaded)
    assert same_trunk and torch.equal(head.weight, state["final_layer.weight"])
    encoder = build_image_encoder("hrnet_32", path, frozen=True, width=WIDTH)
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])


def test_stamp_records_accuracy_and_the_file_counts_as_current(trained):
    config = load_config(TINY, _overrides(trained))
    assert trunk_problem(config) is None
    import json

    with open(stamp_path(config.model.image_encoder.pretrained), encoding="utf-8") as stream:
        accuracy = json.load(stream)["accuracy"]
    assert 0.0 <= accuracy["pck_2px"] <= accuracy["pck_4px"] <= 1.0
    assert accuracy["mean_error_px"] > 0 and accuracy["joints"] > 0


def test_missing_and_stale_trunks_are_detected(trained, tmp_path):
    missing = load_config(TINY, _overrides(trained, f"model.image_encoder.pretrained={tmp_path}/x.pth"))
    assert "does not exist" in trunk_problem(missing)
    other_lr = load_config(TINY, _overrides(trained, "data.synthetic.trunk.lr=0.01"))
    assert "lr" in trunk_problem(other_lr)
    other_width = load_config(TINY, _overrides(trained, "model.image_encoder.width=3"))
    assert "width" in trunk_problem(other_width)
    # a different synthetic set (its stamp) makes the trunk stale too
    stamp = os.path.join(trained, SYNTHETIC_STAMP)
    original = open(stamp, encoding="utf-8").read()
    try:
        with open(stamp, "w", encoding="utf-8") as stream:
            stream.write(original.replace('"seed": 0', '"seed": 5'))
        assert "synthetic" in trunk_problem(load_config(TINY, _overrides(trained)))
    finally:
        with open(stamp, "w", encoding="utf-8") as stream:
            stream.write(original)


def test_null_pretrained_with_stage1_is_refused(trained):
    config = load_config(TINY, _overrides(trained, "model.image_encoder.pretrained=null"))
    with pytest.raises(MetaPoseError, match="model.image_encoder.pretrained"):
        trunk_problem(config)


def test_synthetic_set_is_rewritten_when_its_stamp_is_stale(tmp_path):
    folder = str(tmp_path)
    config = load_config(TINY, _overrides(folder, "data.synthetic.train_frames=6",
                                          "data.synthetic.val_frames=3"))
    assert "does not exist" in synthetic_set_problem(config)
    assert len(build_dataset(config, "train")) == 6
    assert synthetic_set_problem(config) is None
    more = load_config(TINY, _overrides(folder, "data.synthetic.train_frames=8",
                                        "data.synthetic.val_frames=3"))
    assert "train_frames" in synthetic_set_problem(more)
    assert len(build_dataset(more, "train")) == 8
    os.remove(os.path.join(folder, SYNTHETIC_STAMP))  # label files made otherwise: kept
    assert synthetic_set_problem(more) is None
    with_trunk = load_config(TINY, _overrides(folder, "data.synthetic.train_frames=8",
                                              "data.synthetic.val_frames=3",
                                              "data.synthetic.trunk.enabled=true",
                                              f"model.image_encoder.pretrained={folder}/t.pth"))
    assert synthetic_set_problem(with_trunk) is None  # it has its COCO-17 joints
    os.remove(coco_file_path(os.path.join(folder, "h36m_train.pkl")))  # a set from before stamps
    assert "no stamp" in synthetic_set_problem(with_trunk)


def test_coco_joints_agree_with_the_drawn_skeleton(trained):
    config = load_config(TINY, _overrides(trained))
    dataset = build_dataset(config, "validation")
    coco = read_coco_file(dataset.source)
    assert len(coco) == len(dataset)
    for frame in dataset.frames:
        h36m = np.asarray(dataset.labels["joints_2d_gt_crop"][frame], dtype=np.float64)
        joints = coco[bytes(dataset.labels["image"][frame])].astype(np.float64)
        # nose and the limb joints are the H36M joints themselves
        np.testing.assert_allclose(joints[0], h36m[9], atol=1e-3)
        np.testing.assert_allclose(joints[[5, 6, 11, 12, 15, 16]], h36m[[11, 14, 4, 1, 6, 3]],
                                   atol=1e-3)
        # eyes and ears sit on the head: closer to the nose than the nose-to-head-top bone
        # (plus a pixel of rounding), and inside the crop
        head_size = np.linalg.norm(h36m[10] - h36m[9])
        assert np.all(np.linalg.norm(joints[1:5] - h36m[9], axis=1) <= 1.0 * head_size + 1.0)
        assert np.all((joints[1:5] >= 0) & (joints[1:5] <= [CROP_WIDTH - 1, CROP_HEIGHT - 1]))
        # the COCO -> H36M conversion of tools/infer.py puts the head top near joint 10
        assert np.linalg.norm(coco_to_h36m(joints)[10] - h36m[10]) <= 0.35 * head_size + 1.0


def test_gaussian_targets_peak_at_the_joint():
    shape = heatmap_shape((64, 48))
    assert shape == (16, 12)
    joints = torch.tensor([[[96.0, 128.0], [-500.0, 10.0]]])  # crop centre; far outside
    targets, weights = gaussian_targets(crop_to_heatmap(joints, shape), shape, 1.0)
    assert weights.tolist() == [[1.0, 0.0]]
    peak = divmod(int(targets[0, 0].argmax()), shape[1])
    assert peak == (8, 6)  # heatmap pixel k lies at crop pixel 16k
    assert float(targets[0, 0].max()) == pytest.approx(1.0)


def test_unknown_stage1_key_is_refused():
    with pytest.raises(MetaPoseError, match="data.synthetic.trunk.epochs"):
        load_config(TINY, ["data.synthetic.trunk.epoch=3"])
    with pytest.raises(MetaPoseError, match="data.synthetic.trunk.sigma"):
        load_config(TINY, ["data.synthetic.trunk.sigma=0"])


def test_train_runs_stage1_when_the_trunk_is_missing_and_then_keeps_it(tmp_path):
    from models.trunk_pretraining import ensure_trunk
    from tests.launch import run_train_in_fork

    folder = tmp_path / "set"
    overrides = _overrides(str(folder), "data.synthetic.train_frames=12",
                           "data.synthetic.val_frames=6", "train.epochs=1", "train.batch_size=6",
                           "eval.num_visualize=0")
    output = tmp_path / "train.log"
    assert run_train_in_fork(["--config", TINY, "--logdir", str(tmp_path / "logs"), *overrides],
                             output=str(output)) == 0
    assert "stage 1: training the trunk because" in output.read_text()
    written = os.path.getmtime(folder / "trunk.pth")
    recorded = ensure_trunk(load_config(TINY, overrides))  # current: kept, its accuracy returned
    assert os.path.getmtime(folder / "trunk.pth") == written
    assert set(recorded) == {"pck_2px", "pck_4px", "mean_error_px", "joints"}
