"""What a tiny training writes to TensorBoard, read back from its event file: the resolved config
(text and hparams), per-action and per-joint figures, per-joint errors that add up to the MPJPE,
the grid of validation frames, units in the tags and one x axis per tag family. Also: the views
follow the dataset's metric set (MPI-INF-3DHP), and a view that fails does not stop the run."""

import glob
import io
import json
import os

import pytest
import torch
import yaml

import train
from utils import tensorboard_views
from utils.joint_errors import JointErrorSums
from utils.logger import NullWriter
from utils.metrics_3dhp import PoseAccuracyAccumulator
from utils.skeleton import JOINT_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
SHOWN_FRAMES = 3  # eval.num_visualize of the run: two rows of two columns


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch tiny training (one step per epoch) and its TensorBoard events, read back."""
    from datasets.synthetic import generate_synthetic
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path_factory.mktemp("tensorboard")
    generate_synthetic(str(root / "data"), 64, 37, seed=0, verbose=False)
    status = train.main(["--config", TINY, "--logdir", str(root / "logs"), "--run-name", "tb",
                         f"data.root={root / 'data'}", "train.batch_size=64",
                         "eval.batch_size=37", f"eval.num_visualize={SHOWN_FRAMES}"])
    assert status == 0
    run_dir = root / "logs" / "tb"
    (events,) = glob.glob(str(run_dir / "tb" / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"images": 0, "tensors": 0,
                                                          "scalars": 0})
    accumulator.Reload()
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
        metrics = [json.loads(line) for line in handle]
    return {"events": accumulator, "metrics": metrics, "dir": run_dir}


def _values(events, tag):
    return [(point.step, point.value) for point in events.Scalars(tag)]


def test_config_is_written_as_yaml_text_and_as_hparams(run):
    events = run["events"]
    (text,) = events.Tensors("config/yaml/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown.startswith("```yaml\n") and markdown.endswith("```") and text.step == 0
    shown = yaml.safe_load(markdown[len("```yaml\n"):-3])
    with open(run["dir"] / "config.yaml", encoding="utf-8") as handle:
        assert shown == yaml.safe_load(handle)  # the resolved config of the run directory

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["train.batch_size"].number_value == 64
    assert hparams["train.lr"].number_value == pytest.approx(0.002)
    assert hparams["data.dataset"].string_value == "h36m"
    assert hparams["data.image_size"].string_value == "[64, 48]"
    assert hparams["model.image_encoder.pretrained"].string_value == "null"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = [info.name.tag for info in experiment.metric_infos]
    assert metric_tags == ["hparams/p1_mm", "hparams/p2_mm", "hparams/best_p1_mm"]


def test_hparams_metrics_follow_every_evaluation(run):
    events, metrics = run["events"], run["metrics"]
    p1 = [entry["p1"] for entry in metrics]
    assert _values(events, "hparams/p1_mm") == [(1, pytest.approx(p1[0])),
                                                (2, pytest.approx(p1[1]))]
    assert [value for _, value in _values(events, "hparams/p2_mm")] == \
        pytest.approx([entry["p2"] for entry in metrics])
    assert _values(events, "hparams/best_p1_mm") == [(1, pytest.approx(p1[0])),
                                                     (2, pytest.approx(min(p1)))]


def test_per_joint_errors_add_up_to_the_frame_averaged_mpjpe(run):
    events = run["events"]
    tags = [tensorboard_views.joint_tag(name) for name in JOINT_NAMES]
    assert tags[1] == "val_joint_error_mm/right_hip"
    assert {tag for tag in events.Tags()["scalars"] if tag.startswith("val_joint_error_mm/")} \
        == set(tags)
    for epoch, entry in enumerate(run["metrics"], start=1):
        per_joint = [dict(_values(events, tag))[epoch] for tag in tags]
        # H36M's P1 averages the actions; over frames it is the frame-weighted mean of them.
        frames = sum(action["frames"] for action in entry["per_action"].values())
        over_frames = sum(action["p1"] * action["frames"]
                          for action in entry["per_action"].values()) / frames
        assert sum(per_joint) / len(per_joint) == pytest.approx(over_frames, rel=1e-5)
        assert len(set(per_joint)) == len(per_joint)  # each joint its own error


def _image(events, tag):
    from PIL import Image
    return [(event.step, Image.open(io.BytesIO(event.encoded_image_string)))
            for event in events.Images(tag)]


def test_figures_and_the_frame_grid_at_each_evaluation(run):
    events = run["events"]
    assert set(events.Tags()["images"]) == {"val_figures/per_action",
                                            "val_figures/per_joint_error_mm",
                                            "val_figures/frames"}
    for tag in events.Tags()["images"]:
        images = _image(events, tag)
        assert [step for step, _ in images] == [1, 2], tag
        assert all(image.format == "PNG" and image.mode == "RGB" for _, image in images), tag
    # Three frames in two columns: two rows, each 3.6 inches at 100 dpi.
    (_, first), _ = _image(events, "val_figures/frames")
    assert first.size[1] == 2 * 360 and first.getextrema()[0][0] < first.getextrema()[0][1]


def test_tags_carry_units_and_each_family_one_x_axis(run):
    events, metrics = run["events"], run["metrics"]
    scalars = set(events.Tags()["scalars"])
    assert {tag for tag in scalars if tag.split("/")[0] in ("train", "train_step")} == {
        "train/loss_m", "train/mpjpe_mm", "train/lr", "train/samples_per_s", "train/bad_steps",
        "train_step/loss_m", "train_step/mpjpe_mm", "train_step/lr"}
    epochs = [entry["epoch"] for entry in metrics]
    for tag in scalars:
        steps = [step for step, _ in _values(events, tag)]
        if tag.startswith("train_step/"):  # one point per step: one step per epoch here
            assert steps == [1, 2], tag
        else:  # by epoch: train/* after each epoch, val*/hparams/* after each evaluation
            assert steps == epochs, tag
    assert all(tag.startswith("val_p1_mm_per_action/") for tag in scalars
               if "per_action" in tag)
    # The loss is the MPJPE while loss.kl is 0: metres in loss_m, millimetres in mpjpe_mm.
    for section in ("train", "train_step"):
        for (_, loss), (_, mpjpe) in zip(_values(events, f"{section}/loss_m"),
                                         _values(events, f"{section}/mpjpe_mm")):
            assert loss * 1000.0 == pytest.approx(mpjpe, rel=1e-5)


class RecordingWriter:
    """A truthy writer that keeps what it is given; `broken` names methods that raise."""

    def __init__(self, broken=()):
        self.scalars, self.images, self.broken = {}, {}, broken

    def add_scalar(self, tag, value, step):
        self._check("add_scalar")
        self.scalars.setdefault(tag, []).append((step, value))

    def add_image(self, tag, image, step, dataformats):
        self._check("add_image")
        self.images.setdefault(tag, []).append((step, image.shape))

    def _check(self, name):
        if name in self.broken:
            raise ValueError(f"{name} cannot draw this")


def _3dhp_pass(valid):
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(12, 17, 3, generator=generator) * 0.3
    pred = target + torch.randn(12, 17, 3, generator=generator) * 0.05
    metrics = PoseAccuracyAccumulator(("TS1", "TS3", "TS5"))
    joints = JointErrorSums(metrics, torch.device("cpu"))
    sequences = torch.arange(12) % 3
    for part in (slice(0, 5), slice(5, 12)):  # two batches
        metrics.update(pred[part], target[part], sequences[part], valid[part])
        joints.add(pred[part], target[part], valid[part])
    summary = metrics.summary()
    summary["per_joint_mm"] = joints.means_mm(joints.sums)
    return metrics, summary


def test_mpi_inf_3dhp_views_use_its_metric_set():
    """Per-joint errors as the 3DHP protocol measures them (centred at the pelvis, invalid
    frames left out) and the per-scene chart with PCK, AUC and MPJPE."""
    valid = torch.ones(12, dtype=torch.bool)
    valid[[2, 7]] = False
    metrics, summary = _3dhp_pass(valid)
    assert summary["frames"] == 10
    per_joint = summary["per_joint_mm"]
    assert per_joint[0] == 0.0  # the pelvis, after centring
    assert sum(per_joint) / len(per_joint) == pytest.approx(summary["mpjpe"], rel=1e-6)
    writer = RecordingWriter()
    tensorboard_views.write_evaluation(writer, summary, 3, metrics)
    assert set(writer.images) == {"val_figures/per_scene", "val_figures/per_joint_error_mm"}
    assert writer.scalars["hparams/mpjpe_mm"] == [(3, summary["mpjpe"])]
    assert writer.scalars["hparams/pck"] == [(3, summary["pck"])]
    assert tensorboard_views.hparams_metric_tags(metrics) == [
        "hparams/mpjpe_mm", "hparams/pck", "hparams/auc", "hparams/best_mpjpe_mm"]


def test_a_failing_view_is_reported_once_and_the_others_still_write(monkeypatch, caplog):
    monkeypatch.setattr(tensorboard_views, "_reported", set())
    metrics, summary = _3dhp_pass(torch.ones(12, dtype=torch.bool))
    writer = RecordingWriter(broken=("add_image",))
    with caplog.at_level("WARNING", logger="metapose"):
        for epoch in (1, 2):
            tensorboard_views.write_evaluation(writer, summary, epoch, metrics)
    failures = [record.getMessage() for record in caplog.records]
    assert len(failures) == 2  # the per-scene and the per-joint figure, once each
    assert all("ValueError: add_image cannot draw this" in text and "goes on" in text
               for text in failures)
    assert len(writer.scalars["val_joint_error_mm/pelvis"]) == 2
    assert len(writer.scalars["hparams/auc"]) == 2
    tensorboard_views.write_evaluation(NullWriter(), summary, 1, metrics)  # other ranks: no-op
