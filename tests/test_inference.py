"""Inference end to end on a tiny model: the Predictor equals the evaluation's prediction, the
whole chain on an image and a video through tools/infer.py, the ONNX export, and bad inputs that
end in one message with nothing written."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from datasets.camera import screen_to_pixels
from datasets.images import read_image
from utils.checkpoint import save_checkpoint
from utils.cli import run_cli
from utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny joint_action MetaPose saved as this project's checkpoints are (weights + config)."""
    from models import build_model

    config = load_config(TINY)
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = build_model(config)
    path = str(tmp_path_factory.mktemp("checkpoint") / "best.pt")
    save_checkpoint({"model": model.state_dict(), "config": json.loads(json.dumps(config)),
                     "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def synthetic_frames(tmp_path_factory):
    """A synthetic validation split of 4 full 1000x1002 frames (docs/method.md §1.5)."""
    from datasets.synthetic import generate_synthetic

    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_synthetic(root, train_frames=1, val_frames=4, seed=0, full_frames=True,
                       verbose=False)
    return root


def infer(argv, capsys):
    """tools/infer.py in this process: (exit status, stderr)."""
    from tools.infer import main

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    return exit_info.value.code, capsys.readouterr().err


def evaluation_path(config, checkpoint, flip_test):
    """The evaluation's dataset, batch preparation and prediction on the validation frames."""
    from datasets import build_dataset
    from datasets.transforms import prepare_batch
    from models import build_model
    from models.flip_test import predict
    from utils.checkpoint import load_checkpoint, load_model_state, load_model_weights

    dataset = build_dataset(config, "validation")
    model = build_model(config, weights_from_checkpoint=True)
    state, info = load_model_state(load_checkpoint(checkpoint), checkpoint)
    load_model_weights(model, state, checkpoint, info)
    batch = prepare_batch(default_collate([dataset[i] for i in range(len(dataset))]),
                          torch.device("cpu"))
    with torch.no_grad():
        return dataset, predict(model.eval(), batch, flip_test).numpy()


def label_inputs(dataset):
    """Per validation frame: its full-frame image path, the label's box as the data pipeline
    reads it (center/scale columns) and the label's 2D joints in frame pixels."""
    labels, frames = dataset.labels, []
    for row in dataset.frames:
        path = dataset.image_path(row)
        height, width = read_image(path).shape[:2]
        center = labels["center"][row].astype(np.float64)
        half = labels["scale"][row].astype(np.float64) * 100
        frames.append((path, np.concatenate([center - half, center + half]),
                       screen_to_pixels(labels["joints_2d_cpn"][row], width, height),
                       int(labels["action"][row])))
    return frames


def test_predictor_equals_the_evaluation_prediction(tiny_checkpoint, synthetic_frames, tmp_path,
                                                    capsys):
    from inference import Predictor

    config = load_config(TINY, [f"data.root={synthetic_frames}", "data.synthetic.enabled=false"])
    dataset, expected = evaluation_path(config, tiny_checkpoint, flip_test=False)
    frames = label_inputs(dataset)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, box_padding=1.0)
    requests = [predictor.request(path, boxes=[box], keypoints=[points], action=action)
                for path, box, points, action in frames]
    results = [people[0] for people in predictor.predict_frames(requests)]
    got = np.stack([person.joints_3d_raw for person in results])
    assert np.abs(got - expected).max() < 1e-5
    # joints_3d is that prediction made root-relative: joint 0 exactly at the origin
    for person, raw in zip(results, expected):
        assert np.array_equal(person.joints_3d[0], np.zeros(3))
        assert np.abs(person.joints_3d - (raw - raw[0])).max() < 1e-5

    # the CLI with --flip-test, boxes and H36M keypoints from JSON files, equals the flip test
    _, expected_flip = evaluation_path(config, tiny_checkpoint, flip_test=True)
    folder = tmp_path / "frames"
    folder.mkdir()
    boxes, keypoints = {}, {"format": "h36m", "frames": {}}
    for path, box, points, _ in frames:
        os.symlink(path, folder / os.path.basename(path))
        boxes[os.path.basename(path)] = [box.tolist()]
        keypoints["frames"][os.path.basename(path)] = [points.tolist()]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    (tmp_path / "keypoints.json").write_text(json.dumps(keypoints))
    action = frames[0][3]  # the CLI takes one action per run: check the frames that have it
    out = tmp_path / "out"
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", str(folder), "--out",
                         str(out), "--boxes", str(tmp_path / "boxes.json"), "--keypoints",
                         str(tmp_path / "keypoints.json"), "--box-padding", "1",
                         "--action", str(action), "--flip-test", "--no-render"], capsys)
    assert status == 0, err
    records = {r["frame"]: r for r in
               json.loads((out / "predictions.json").read_text())["frames"]}
    assert sorted(records) == sorted(boxes)
    checked = 0
    for (path, _, _, frame_action), expected_joints in zip(frames, expected_flip):
        if frame_action == action:
            joints = np.array(records[os.path.basename(path)]["people"][0]["joints_3d"])
            assert np.abs(joints - (expected_joints - expected_joints[0])).max() < 1e-5
            checked += 1
    assert checked >= 1


def test_whole_chain_on_an_image_with_hrnet_2d(tiny_checkpoint, synthetic_frames, tmp_path,
                                               capsys):
    from inference import Predictor

    image_dir = os.path.join(synthetic_frames, "images")
    path = os.path.join(image_dir, sorted(os.listdir(image_dir))[0])
    path = os.path.join(path, sorted(os.listdir(path))[0])
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", path, "--out",
                         str(tmp_path / "out"), "--action", "all"], capsys)
    assert status == 0, err
    (record,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["frames"]
    (person,) = record["people"]
    assert record["frame"] == os.path.basename(path)
    assert person["box"] == [-0.5, -0.5, 999.5, 1001.5]  # the whole frame
    assert person["joints_2d_source"] == "hrnet" and len(person["joints_2d_scores"]) == 17
    joints = np.array(person["joints_3d"])
    assert joints.shape == (17, 3) and np.isfinite(joints).all()
    png = cv2.imread(str(tmp_path / "out" / (os.path.splitext(record["frame"])[0] + "_3d.png")))
    assert png is not None and png.shape[1] > png.shape[0]  # the frame beside the 3D view
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["predictions.json",
                                                           record["frame"][:-4] + "_3d.png"])

    # a user box through the Python API: the HRNet 2D joints come from inside that box
    predictor = Predictor.from_checkpoint(tiny_checkpoint, action="Walking", flip_test=True)
    calls = []
    predictor.model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    (person,) = predictor(read_image(path), boxes=[[300, 200, 600, 900]])
    assert len(calls) == 1  # one HRNet pass gives the heatmaps and the pose network's features
    center, size = np.array([450, 550]), np.array([700 * 0.75, 700]) * 1.5
    assert (np.abs(person.joints_2d - center) <= size / 2 + 1).all()
    assert np.isfinite(person.joints_3d).all() and person.joints_2d_source == "hrnet"


def test_video_of_20_frames_gives_an_mp4_and_20_records(tiny_checkpoint, synthetic_frames,
                                                        tmp_path, capsys):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 80))
    for index in range(20):
        frame = np.full((80, 96, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 3 * index, 40), 12, (200, 180, 90), -1)
        writer.write(frame)
    writer.release()
    out = tmp_path / "out"
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", video, "--out", str(out),
                         "--action", "Walking", "--smooth", "1.5", "--batch-size", "8"], capsys)
    assert status == 0, err
    records = json.loads((out / "predictions.json").read_text())["frames"]
    assert [r["frame"] for r in records] == list(range(20))
    assert all(len(r["people"]) == 1 and np.isfinite(r["people"][0]["joints_3d"]).all()
               for r in records)
    capture = cv2.VideoCapture(str(out / "clip_3d.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 20


def test_onnx_export_matches_pytorch(tiny_checkpoint, tmp_path, capsys):
    import onnxruntime

    from inference.loading import load_trained_model
    from models.flip_test import predict
    from tools.export import main as export_main

    out = str(tmp_path / "tiny.onnx")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(export_main, ["--checkpoint", tiny_checkpoint, "--out", out])
    assert exit_info.value.code == 0, capsys.readouterr().err
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    rows = metadata["text_rows"].split(",")
    assert rows[0] == "all" and rows[1:3] == ["Directions", "Discussion"] and len(rows) == 16
    assert metadata["root_relative"] == "true" and "joint 0 at 0, 0, 0" in metadata["joints_3d"]

    # against the model with its real text encoder (action ids), not the exported table
    loaded = load_trained_model(tiny_checkpoint)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, 64, 48, generator=generator)
    screen = torch.rand(3, 17, 2, generator=generator) * 1.6 - 0.8
    crop = torch.rand(3, 17, 2, generator=generator) * torch.tensor([191.0, 255.0])
    action_ids = torch.tensor([2, 14, 16])
    got = session.run(None, {"images": images.numpy(), "keypoints_2d": screen.numpy(),
                             "keypoints_2d_crop": crop.numpy(),
                             "action": (action_ids - 1).numpy()})[0]
    from models import build_model
    from utils.checkpoint import load_checkpoint, load_model_state, load_model_weights

    model = build_model(loaded.config, weights_from_checkpoint=True)
    state, info = load_model_state(load_checkpoint(tiny_checkpoint), tiny_checkpoint)
    load_model_weights(model, state, tiny_checkpoint, info)
    with torch.no_grad():
        expected = predict(model.eval(), {"images": images, "keypoints_2d": screen,
                                          "keypoints_2d_crop": crop, "actions": action_ids},
                           False).numpy()
    # the graph's joints_3d is root-relative, as every inference output
    assert np.abs(got - (expected - expected[:, :1])).max() < 1e-4
    assert np.abs(got[:, 0]).max() == 0.0
    # --raw-output keeps the network's own output
    from inference.onnx_export import exported_module

    raw_module, _ = exported_module(loaded, raw_output=True)
    with torch.no_grad():
        raw = raw_module(images, screen, crop, action_ids - 1).numpy()
    assert np.abs(raw - expected).max() < 1e-4

    # what it cannot export is refused, and nothing is written
    for extra, message in ((["--opset", "15"], "opset 16"),
                           (["--action", "Jogging"], "not an H36M action"),
                           (["--action", "all", "model.text_encoder.mode=joint"], "joint")):
        bad = str(tmp_path / "bad.onnx")
        with pytest.raises(SystemExit) as exit_info:
            run_cli(export_main, ["--checkpoint", tiny_checkpoint, "--out", bad] + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.startswith("error:")
        assert not os.path.exists(bad)
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx"]


def _bad_inputs(root, checkpoint, image):
    """(extra arguments, text the message must hold) for each kind of bad input."""
    (root / "notes.jpg").write_text("not an image")
    (root / "broken.mp4").write_bytes(os.urandom(2048))
    (root / "kp16.json").write_text(json.dumps({"format": "coco", "frames": {
        os.path.basename(image): [[[100, 100]] * 16]}}))
    (root / "kpnan.json").write_text(json.dumps({"format": "h36m", "frames": {
        os.path.basename(image): [[[100, 100]] * 16 + [[float("nan"), 1]]]}}))
    (root / "far_box.json").write_text(json.dumps([[2000, 2000, 2100, 2200]]))
    foreign = str(root / "resnet.pt")
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, foreign)
    folder = root / "folder"
    folder.mkdir()
    os.symlink(image, folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    base = ["--checkpoint", checkpoint, "--action", "all"]
    return [
        (base + ["--input", str(root / "missing.jpg")], "does not exist"),
        (base + ["--input", str(root / "notes.jpg")], "cannot be decoded: it is not a JPEG"),
        (base + ["--input", str(root / "broken.mp4")], "video"),
        (base + ["--input", image, "--keypoints", str(root / "kp16.json")], "16 joints"),
        (base + ["--input", image, "--keypoints", str(root / "kpnan.json")], "not finite"),
        (base + ["--input", image, "--boxes", str(root / "far_box.json")], "outside"),
        (["--checkpoint", checkpoint, "--input", image], "--action"),
        (["--checkpoint", foreign, "--input", image], "not a MetaPose checkpoint"),
        (base + ["--input", str(folder)], "b.jpg"),
    ]


def test_bad_inputs_end_in_one_message_and_nothing_written(tiny_checkpoint, synthetic_frames,
                                                           tmp_path, capsys):
    image_dir = os.path.join(synthetic_frames, "images")
    sequence = os.path.join(image_dir, sorted(os.listdir(image_dir))[0])
    image = os.path.join(sequence, sorted(os.listdir(sequence))[0])
    for number, (argv, message) in enumerate(_bad_inputs(tmp_path, tiny_checkpoint, image)):
        out = tmp_path / f"out{number}"
        status, err = infer(argv + ["--out", str(out)], capsys)
        last = err.strip().splitlines()[-1]  # after any progress bar and warnings
        assert status == 2 and last.startswith("error:") and message in last, (argv, err)
        assert "Traceback" not in err and err.count("error:") == 1, err
        assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)
