"""MPI-INF-3DHP data: CA-PF label files read safely into columns, samples in the H36M
conventions (joint order, metres, flips), valid-frame filtering, configuration checks, and
training + evaluation end to end on the synthetic set with 1, 2 and 3 processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from datasets import build_dataset, mpi_inf_3dhp
from datasets.mpi_inf_3dhp import MPIINF3DHPDataset
from datasets.mpi_inf_3dhp_labels import (MPI_JOINT_NAMES, MPI_TO_H36M, PLACEHOLDER_ACTION,
                                          TEST_FRAME_SIZES, load_3dhp_labels, read_label_file,
                                          write_label_file)
from datasets.synthetic_3dhp import generate_synthetic_3dhp
from tests.test_train_cli import REPO, read_metrics, run_train
from utils.checkpoint import file_sha256
from utils.config import load_config
from utils.errors import MetaPoseError
from utils.flip import flip_joints_3d, flip_keypoints_2d
from utils.metrics_3dhp import PoseAccuracyAccumulator
from utils.skeleton import JOINT_NAMES

TINY_3DHP = os.path.join(REPO, "experiments", "tests", "tiny_3dhp.yaml")
TRAIN_FRAMES, VALID_FRAMES = 48, 29  # experiments/tests/tiny_3dhp.yaml


@pytest.fixture(scope="module")
def synthetic_3dhp(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_3dhp"))
    summary = generate_synthetic_3dhp(root, TRAIN_FRAMES, VALID_FRAMES, seed=0, verbose=False)
    return root, summary


def columns_of(root, name):
    return load_3dhp_labels(os.path.join(root, name))


# ---------------------------------------------------------------------------------------------
# Joints and flips


def test_joint_mapping_and_flips_follow_the_h36m_pairs():
    assert sorted(MPI_TO_H36M) == list(range(17))
    for h36m_name, mpi_index in zip(JOINT_NAMES, MPI_TO_H36M):
        side = [s for s in ("left", "right") if h36m_name.startswith(s)]
        if side:  # a left H36M joint is a left 3DHP joint, and the same limb joint
            assert MPI_JOINT_NAMES[mpi_index] == h36m_name.replace(" ", "_"), h36m_name
        else:
            assert not MPI_JOINT_NAMES[mpi_index].startswith(("left", "right"))
    # Mirroring in 3DHP order with 3DHP's own pairs, then reordering, is the H36M-order flip.
    mpi_pairs = [(2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13)]
    joints = torch.randn(4, 17, 3)
    mirrored = joints.clone()
    mirrored[..., 0] = -mirrored[..., 0]
    for a, b in mpi_pairs:
        mirrored[:, [a, b]] = mirrored[:, [b, a]]
    order = list(MPI_TO_H36M)
    assert torch.equal(flip_joints_3d(joints[:, order]), mirrored[:, order])
    assert torch.equal(flip_keypoints_2d(joints[:, order, :2]), mirrored[:, order, :2])


# ---------------------------------------------------------------------------------------------
# Label files


def test_synthetic_files_have_the_ca_pf_layout(synthetic_3dhp):
    root, summary = synthetic_3dhp
    train = read_label_file(os.path.join(root, "data_train_3dhp.npz"))
    test = read_label_file(os.path.join(root, "data_test_3dhp.npz"))
    cameras, fps = train["S1 Seq1"] if "S1 Seq1" in train else next(iter(train.values()))
    assert fps in (25, 50) and all(key.isdigit() for key in cameras)
    unit = next(iter(cameras.values()))
    assert {"data_2d", "data_2d_crop", "data_3d"} <= set(unit)
    assert sorted(test) == ["TS1", "TS2", "TS3", "TS4", "TS5", "TS6"]
    assert {"data_2d", "data_2d_crop", "data_3d", "valid"} <= set(test["TS1"])
    assert sum(int(v["valid"].sum()) for v in test.values()) == VALID_FRAMES
    assert summary["val_invalid"] >= 6 and summary["train_frames"] == TRAIN_FRAMES
    # Joint 14 (pelvis) is the root, millimetres, a few metres in front of the camera.
    assert 3000 < np.median(unit["data_3d"][:, 14, 2]) < 5500


def test_columns_are_h36m_order_metres_with_both_frame_sizes(synthetic_3dhp):
    root, _ = synthetic_3dhp
    raw = read_label_file(os.path.join(root, "data_test_3dhp.npz"))
    columns = columns_of(root, "data_test_3dhp.npz")
    assert len(columns["image"]) == sum(len(v["valid"]) for v in raw.values())
    rows = np.flatnonzero(columns["sequence"] == b"TS5")
    tsv = raw["TS5"]
    np.testing.assert_allclose(columns["joints_3d"][rows],
                               tsv["data_3d"][:, list(MPI_TO_H36M)] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(columns["joints_2d_gt"][rows], tsv["data_2d"][:, list(MPI_TO_H36M)])
    assert columns["valid"][rows].tolist() == tsv["valid"].astype(bool).tolist()
    # 2D normalised with each sequence's own frame size: v spans about +-h/w around the centre.
    for name, (width, height) in TEST_FRAME_SIZES.items():
        rows = np.flatnonzero(columns["sequence"] == name.encode())
        v = columns["joints_2d_gt"][rows, :, 1]
        assert np.all(np.abs(v) < height / width + 0.05), name
    assert columns["image"][rows[0]].decode() == f"TS6/TS6_{columns['frame'][rows[0]]:06d}.jpg"


def _layout_with(**changes):
    """A small training layout in the CA-PF format, with `changes` applied to its camera."""
    rng = np.random.default_rng(0)
    joints = rng.normal(0, 300, (3, 17, 3)) + np.array([0, 0, 4000])
    camera = {"data_2d": rng.uniform(-0.5, 0.5, (3, 17, 2)), "data_3d": joints,
              "data_2d_crop": rng.uniform(0, 190, (3, 17, 2))}
    camera.update(changes)
    return {"S1 Seq1": [{"0": camera}, 25]}


@pytest.mark.parametrize("changes, match", [
    ({"data_2d": np.zeros((3, 28, 2))},
     r"'S1 Seq1' camera '0' key 'data_2d' has shape \(3, 28, 2\)"),
    ({"data_3d": np.zeros((3, 17, 3))}, "neither millimetres"),
    ({"data_2d_crop": np.full((2, 17, 2), 5.0)}, "different lengths"),
])
def test_bad_label_files_name_the_problem(tmp_path, changes, match):
    path = str(tmp_path / "labels.npz")
    write_label_file(path, _layout_with(**changes))
    with pytest.raises(MetaPoseError, match=match):
        load_3dhp_labels(path)


def test_a_file_mixing_pixels_and_normalised_2d_is_refused(tmp_path):
    layout = _layout_with()
    layout["S1 Seq1"][0]["1"] = dict(layout["S1 Seq1"][0]["0"],
                                     data_2d=np.full((3, 17, 2), 900.0))
    layout["S1 Seq1"][0]["2"] = dict(layout["S1 Seq1"][0]["0"],
                                     data_2d=np.full((3, 17, 2), 1100.0))
    path = str(tmp_path / "mixed.npz")
    write_label_file(path, layout)
    with pytest.raises(MetaPoseError, match="camera '0' key 'data_2d' holds normalised screen "
                                            "coordinates .* while the rest of the file holds "
                                            "pixels"):
        load_3dhp_labels(path)
    test = {"TS7": {"data_2d": np.full((2, 17, 2), 900.0), "data_2d_crop": np.zeros((2, 17, 2)),
                    "data_3d": np.full((2, 17, 3), 4000.0), "valid": np.ones(2)}}
    write_label_file(path, test)
    with pytest.raises(MetaPoseError, match="frame size of 'TS7' is not known"):
        load_3dhp_labels(path)


def ca_pf_copy(root, out):
    """The label files of `root` written again exactly as CA-PF's preparation scripts write them
    (data_to_npz_3dhp.py, data_to_npz_3dhp_test.py): data_2d in pixels of the video frame
    (annot2), float64 arrays from MATLAB, no person boxes, test `valid` as MATLAB doubles, and
    np.savez_compressed(file, data=dict); the images are linked."""
    os.makedirs(out)
    os.symlink(os.path.join(root, "images"), os.path.join(out, "images"))

    def pixels(normalised, size):
        width, height = size
        return ((np.asarray(normalised, np.float64) + [1.0, height / width]) * width / 2.0)

    def as_matlab(unit, size):
        return {"data_2d": pixels(unit["data_2d"], size),
                "data_2d_crop": np.asarray(unit["data_2d_crop"], np.float64),
                "data_3d": np.asarray(unit["data_3d"], np.float64)}

    train = read_label_file(os.path.join(root, "data_train_3dhp.npz"))
    dic_seq = {name: [{camera: as_matlab(unit, (2048, 2048)) for camera, unit in cams.items()},
                      fps] for name, (cams, fps) in train.items()}
    np.savez_compressed(os.path.join(out, "data_train_3dhp"), data=dic_seq)
    test = read_label_file(os.path.join(root, "data_test_3dhp.npz"))
    dic_seq = {}
    for name, unit in test.items():
        dic_seq[name] = dict(as_matlab(unit, TEST_FRAME_SIZES[name]),
                             valid=np.asarray(unit["valid"], np.float64))
    np.savez_compressed(os.path.join(out, "data_test_3dhp"), data=dic_seq)
    return test


def evaluate_set(root, model):
    """PCK, AUC and MPJPE of `model` on the validation split under `root` (the evaluation's
    dataset, batches, prediction and metric set)."""
    from torch.utils.data import default_collate

    from datasets import build_metric_set
    from datasets.transforms import prepare_batch
    from models.flip_test import predict

    config = load_config(TINY_3DHP, [f"data.root={root}", "data.synthetic.enabled=false"])
    dataset = build_dataset(config, "validation")
    metrics = build_metric_set(config, dataset)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    inputs = prepare_batch(batch, torch.device("cpu"))
    with torch.no_grad():
        pred = predict(model.eval(), inputs, flip_test=True)
    metrics.update_batch(pred, inputs["joints_3d"], batch)
    return metrics.summary(), inputs


def test_ca_pf_pixel_files_evaluate_like_normalised_ones(synthetic_3dhp, tmp_path, caplog):
    from models import build_model

    root, _ = synthetic_3dhp
    copy = str(tmp_path / "ca_pf")
    original_test = ca_pf_copy(root, copy)
    assert {"TS5", "TS6"} <= set(original_test) and TEST_FRAME_SIZES["TS5"] == (1920, 1080)
    with caplog.at_level("INFO", logger="datasets.mpi_inf_3dhp_labels"):
        for name in ("data_train_3dhp.npz", "data_test_3dhp.npz"):
            normalised, pixels = columns_of(root, name), columns_of(copy, name)
            np.testing.assert_array_equal(pixels["joints_2d_gt"], normalised["joints_2d_gt"])
            np.testing.assert_allclose(pixels["joints_3d"], normalised["joints_3d"], atol=1e-6)
    logged = caplog.text
    assert "'data_2d' holds pixels" in logged and "TS5-TS6 1920x1080" in logged
    assert "'data_2d' holds normalised screen coordinates" in logged
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = build_model(load_config(TINY_3DHP))
    expected, expected_inputs = evaluate_set(root, model)
    got, got_inputs = evaluate_set(copy, model)
    assert torch.equal(got_inputs["keypoints_2d"], expected_inputs["keypoints_2d"])
    assert got["frames"] == expected["frames"] == VALID_FRAMES
    assert (got["pck"], got["auc"]) == (expected["pck"], expected["auc"])
    assert got["mpjpe"] == pytest.approx(expected["mpjpe"], abs=1e-6)
    assert got["per_scene"]["Outdoor"] == expected["per_scene"]["Outdoor"]


def test_bad_structures_are_refused(tmp_path):
    path = str(tmp_path / "labels.npz")
    write_label_file(path, {"Subject1": {}})
    with pytest.raises(MetaPoseError, match="neither a training sequence"):
        load_3dhp_labels(path)
    write_label_file(path, {"TS1": {"data_2d": np.zeros((2, 17, 2)),
                                    "data_2d_crop": np.zeros((2, 17, 2)),
                                    "data_3d": np.full((2, 17, 3), 4000.0)}})
    with pytest.raises(MetaPoseError, match="lacks 'valid'"):
        load_3dhp_labels(path)
    np.savez_compressed(path, data=np.zeros(3))
    with pytest.raises(MetaPoseError, match="plain float64 array"):
        read_label_file(path)
    with open(path, "wb") as handle:
        handle.write(b"not a zip archive")
    with pytest.raises(MetaPoseError, match="not an npz"):
        read_label_file(path)
    with pytest.raises(MetaPoseError, match="does not exist"):
        read_label_file(str(tmp_path / "missing.npz"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickles_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    path = str(tmp_path / "evil.npz")
    layout = _layout_with()
    layout["S1 Seq1"].append(_RunsCode(marker))
    np.savez_compressed(path, data=layout)
    with pytest.raises(MetaPoseError, match=r"tries to import (posix|os)\.system"):
        load_3dhp_labels(path)
    assert not marker.exists()
    np.load(path, allow_pickle=True)["data"]  # what an unrestricted load does...
    assert marker.exists()  # ...runs the command


def test_ca_pf_files_without_boxes_load_and_metres_are_accepted(tmp_path):
    """A file as CA-PF writes it: float64, no person boxes; data_3d in mm or in metres."""
    mm_path, m_path = str(tmp_path / "mm.npz"), str(tmp_path / "m.npz")
    layout = _layout_with()
    write_label_file(mm_path, layout)
    layout_m = _layout_with()
    layout_m["S1 Seq1"][0]["0"]["data_3d"] = layout_m["S1 Seq1"][0]["0"]["data_3d"] / 1000.0
    write_label_file(m_path, layout_m)
    a, b = load_3dhp_labels(mm_path), load_3dhp_labels(m_path)
    np.testing.assert_allclose(a["joints_3d"], b["joints_3d"], rtol=1e-6)
    assert np.isnan(a["center"]).all() and a["image"][0] == b"s_01_seq_01_ca_00/" \
        b"s_01_seq_01_ca_00_000001.jpg"
    with pytest.raises(MetaPoseError, match="no person boxes"):
        MPIINF3DHPDataset(a, str(tmp_path), image_mode="full")


def test_nan_in_invalid_test_frames_is_tolerated(tmp_path):
    joints = np.full((3, 17, 3), 4000.0) + np.arange(17)[None, :, None]
    test = {"TS2": {"data_2d": np.zeros((3, 17, 2)), "data_2d_crop": np.zeros((3, 17, 2)),
                    "data_3d": joints, "valid": np.array([1, 0, 1])}}
    test["TS2"]["data_3d"][1] = np.nan
    path = str(tmp_path / "test.npz")
    write_label_file(path, test)
    columns = load_3dhp_labels(path)
    dataset = MPIINF3DHPDataset(columns, str(tmp_path), blank_images=True)
    assert len(dataset) == 2 and dataset.num_invalid == 1
    test["TS2"]["valid"] = np.array([1, 1, 1])
    write_label_file(path, test)
    with pytest.raises(MetaPoseError,
                       match="'TS2' key 'data_3d' holds NaN or Inf in valid frame 2"):
        load_3dhp_labels(path)


# ---------------------------------------------------------------------------------------------
# Samples


def test_samples_follow_the_h36m_conventions(synthetic_3dhp):
    root, _ = synthetic_3dhp
    columns = columns_of(root, "data_test_3dhp.npz")
    dataset = MPIINF3DHPDataset(columns, os.path.join(root, "images"))
    assert len(dataset) == VALID_FRAMES == int(columns["valid"].sum())
    assert dataset.num_invalid == len(columns["valid"]) - VALID_FRAMES
    assert dataset.sequence_names == ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")
    assert dataset.image_mode == "cropped"
    counts = np.zeros(6, dtype=int)
    for index in range(len(dataset)):
        sample = dataset[index]
        frame = dataset.frames[index]
        assert sample["image"].shape == (3, 256, 192) and sample["image"].dtype == torch.uint8
        assert torch.all(sample["joints_3d"][0] == 0)
        expected = dataset.labels["joints_3d"][frame] - dataset.labels["joints_3d"][frame][0]
        np.testing.assert_allclose(sample["joints_3d"].numpy(), expected, atol=1e-6)
        assert int(sample["action"]) == PLACEHOLDER_ACTION and int(sample["subject"]) == 0
        assert not bool(sample["flip"])
        counts[int(sample["sequence"])] += 1
        if index == 0:  # the pelvis is in the middle of its crop
            assert abs(float(sample["keypoints_2d_crop"][0, 0]) - 95.5) < 1e-3
    assert counts.sum() == VALID_FRAMES and (counts > 0).all()
    assert isinstance(mpi_inf_3dhp.metric_set(dataset), PoseAccuracyAccumulator)


def test_crops_show_each_side_where_its_labels_are(synthetic_3dhp):
    """The renderer colours left limbs blue and right ones orange: at the crop labels of left
    joints the crop is bluer than at right ones (labels and images agree, sides not swapped)."""
    root, _ = synthetic_3dhp
    dataset = MPIINF3DHPDataset(columns_of(root, "data_train_3dhp.npz"),
                                os.path.join(root, "images"))
    assert len(dataset) == TRAIN_FRAMES and len(set(dataset.labels["camera"].tolist())) == 8
    blue_minus_red = {"left": [], "right": []}
    for index in range(len(dataset)):
        sample = dataset[index]
        image = sample["image"].numpy().astype(float)
        for joint, name in enumerate(JOINT_NAMES):
            side = name.split()[0]
            if side in blue_minus_red and name.split()[1] in ("shoulder", "hip", "knee", "elbow"):
                x, y = np.rint(sample["keypoints_2d_crop"][joint].numpy()).astype(int)
                if 0 <= x < 192 and 0 <= y < 256:
                    blue_minus_red[side].append(image[2, y, x] - image[0, y, x])
    left, right = np.array(blue_minus_red["left"]), np.array(blue_minus_red["right"])
    assert (left > 0).mean() > 0.7 and (right < 0).mean() > 0.7


def test_build_dataset_checks_the_3dhp_settings(synthetic_3dhp):
    root, _ = synthetic_3dhp
    base = [f"data.root={root}", "data.synthetic.enabled=false"]
    config = load_config(TINY_3DHP, base)
    validation = build_dataset(config, "validation")
    assert isinstance(validation, MPIINF3DHPDataset) and len(validation) == VALID_FRAMES
    with pytest.raises(MetaPoseError, match="ground-truth 2D joints only"):
        build_dataset(load_config(TINY_3DHP, base + ["data.keypoints_2d=cpn"]), "train")
    with pytest.raises(MetaPoseError, match="no H36M action labels"):
        build_dataset(load_config(TINY_3DHP, base + ["model.text_encoder.mode=joint_action"]),
                      "train")
    with pytest.raises(MetaPoseError, match="prepare_3dhp.py"):
        build_dataset(load_config(TINY_3DHP, [f"data.root={root}/none",
                                              "data.synthetic.enabled=false"]), "train")


def test_make_synthetic_command_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic.py"),
                             "--dataset", "mpi_inf_3dhp", "--out", str(tmp_path), "--train-frames",
                             "3", "--val-frames", "2", "--full-frames"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "written as 256x192 crops only" in result.stderr


# ---------------------------------------------------------------------------------------------
# End to end: torchrun training, then --eval with 1, 2 and 3 processes


@pytest.fixture(scope="module")
def trained_3dhp(tmp_path_factory):
    """2 epochs with 2 processes (torchrun) on a synthetic 3DHP set the run generates itself."""
    space = tmp_path_factory.mktemp("train_3dhp")
    args = ["--config", TINY_3DHP, "--logdir", str(space / "logs"), "--run-name", "ddp",
            f"data.root={space / 'data'}", "train.batch_size=8"]
    result = run_train(args, processes=2)
    return space, str(space / "logs" / "ddp"), result.stdout


def test_torchrun_trains_and_records_the_3dhp_metrics(trained_3dhp):
    _, run_dir, stdout = trained_3dhp
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for entry in metrics:
        assert set(entry) == {"epoch", "pck", "auc", "mpjpe", "frames", "per_scene",
                              "per_sequence"}
        assert entry["frames"] == VALID_FRAMES
        assert set(entry["per_scene"]) == {"GS", "noGS", "Outdoor"}
        assert sum(v["frames"] for v in entry["per_scene"].values()) == VALID_FRAMES
        assert 0 <= entry["auc"] <= entry["pck"] <= 100 and entry["mpjpe"] > 0
    log = open(os.path.join(run_dir, "log.txt"), encoding="utf-8").read()
    for word in ("Sequence", "GS", "noGS", "Outdoor", "Total", "marked invalid"):
        assert word in log, word
    assert "2 process(es)" in stdout and "best MPJPE" in log
    best = torch.load(os.path.join(run_dir, "checkpoints", "best.pt"), weights_only=True)
    assert best["best_score"] == min(m["mpjpe"] for m in metrics)
    assert best["epoch"] == min(metrics, key=lambda m: m["mpjpe"])["epoch"]


def test_eval_with_1_2_3_processes_counts_every_valid_frame_once(trained_3dhp):
    space, run_dir, _ = trained_3dhp
    checkpoint = os.path.join(run_dir, "checkpoints", "last.pt")
    results = {}
    for processes in (1, 2, 3):
        name = f"eval{processes}"
        run_train(["--config", TINY_3DHP, "--logdir", str(space / "logs"), "--run-name", name,
                   "--eval", "--checkpoint", checkpoint, f"data.root={space / 'data'}"],
                  processes=processes)
        with open(os.path.join(space / "logs" / name, "eval.json"), encoding="utf-8") as handle:
            results[processes] = json.load(handle)
        log = open(os.path.join(space / "logs" / name, "log.txt"), encoding="utf-8").read()
        assert "Outdoor" in log and "Total" in log
    final = read_metrics(run_dir)[-1]
    for processes, result in results.items():
        assert result["frames"] == VALID_FRAMES and result["epoch"] == 2
        # eval.json is the metrics record plus the fingerprints of what was evaluated
        assert set(result) == set(final) | {"checkpoint", "data"}
        assert result["checkpoint"]["sha256"] == file_sha256(checkpoint)
        assert result["data"]["validation"]["path"].endswith("data_test_3dhp.npz")
        assert result["data"]["validation"]["frames"] == VALID_FRAMES
        assert (result["pck"], result["auc"]) == (results[1]["pck"], results[1]["auc"])
        assert result["mpjpe"] == pytest.approx(results[1]["mpjpe"], rel=1e-9, abs=1e-9)
        assert result["mpjpe"] == pytest.approx(final["mpjpe"], abs=0.01), processes
        for scene, values in final["per_scene"].items():
            assert result["per_scene"][scene]["frames"] == values["frames"]
            assert result["per_scene"][scene]["pck"] == results[1]["per_scene"][scene]["pck"]
        assert {k: v["frames"] for k, v in result["per_sequence"].items()} == \
            {k: v["frames"] for k, v in final["per_sequence"].items()}
