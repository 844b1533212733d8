"""Inference on real footage through tools/infer.py (in this process, on a tiny random model):
portraits and missing joints, --kpt-thr, root-relative output, tracks and times, the pictures,
inputs checked before the model is loaded, and hostile inputs and faults (FIFOs, devices, link
loops, nested JSON, huge boxes, non-finite flags, two runs into one folder, killed runs)."""

import json
import os
import signal
import subprocess
import sys
import threading

import cv2
import matplotlib
import numpy as np
import pytest

from inference.keypoints import COCO_NAMES, check_keypoints
from tests.test_inference import REPO, infer, tiny_checkpoint  # noqa: F401 (a fixture)
from utils.errors import MetaPoseError

GRACE_HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
# COCO joints
KNEES_ANKLES, HIPS = (13, 14, 15, 16), (11, 12)


def portrait_keypoints(hips=None):
    """COCO-17 [x, y, score] of the woman in grace_hopper.jpg (512 x 600): face and shoulders in
    the frame, the elbows at its lower edge; hips, knees and ankles below it with score 0 (or the
    hips as `hips`, e.g. [0, 0, 0])."""
    points = [[262, 250, 0.9], [292, 212, 0.9], [228, 212, 0.9], [330, 225, 0.8],
              [190, 225, 0.8], [420, 470, 0.8], [105, 470, 0.8], [470, 595, 0.5],
              [50, 595, 0.5], [480, 760, 0.0], [40, 760, 0.0], [335, 780, 0.0],
              [185, 780, 0.0], [330, 1010, 0.0], [190, 1010, 0.0], [330, 1230, 0.0],
              [190, 1230, 0.0]]
    if hips is not None:
        points[HIPS[0]], points[HIPS[1]] = list(hips), list(hips)
    return points


def write_json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


def predictions(out):
    return json.loads((out / "predictions.json").read_text())


def run_portrait(tmp_path, capsys, checkpoint, keypoints, *extra):
    files = write_json(tmp_path / "kp.json", {"format": "coco", "frames": {
        "grace_hopper.jpg": [keypoints]}})
    out = tmp_path / "out"
    status, err = infer(["--checkpoint", checkpoint, "--input", GRACE_HOPPER, "--out", str(out),
                         "--keypoints", files, "--action", "all", *extra], capsys)
    return status, err, out


def write_video(path, frames=8, size=(96, 80), fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in range(frames):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        cv2.circle(frame, (20 + 3 * index, 40), 12, (200, 180, 90), -1)
        writer.write(frame)
    writer.release()
    return str(path)


# ---------------------------------------------------------------------------------------------
# Missing joints, --kpt-thr, portraits


def test_portrait_with_legs_below_the_frame_returns_17_root_relative_joints(tiny_checkpoint,
                                                                            tmp_path, capsys):
    status, err, out = run_portrait(tmp_path, capsys, tiny_checkpoint, portrait_keypoints(),
                                    "--raw-3d")
    assert status == 0, err
    content = predictions(out)
    (person,) = content["frames"][0]["people"]
    joints = np.array(person["joints_3d"])
    assert joints.shape == (17, 3) and np.isfinite(joints).all()
    assert joints[0].tolist() == [0.0, 0.0, 0.0]
    raw = np.array(person["joints_3d_raw"])
    assert np.abs(joints - (raw - raw[0])).max() < 2e-6 and np.abs(raw[0]).max() > 0
    # the legs (H36M 1-6), pelvis and belly come from missing COCO joints; face and shoulders not
    missing = person["joints_2d_missing"]
    assert [missing[j] for j in (0, 1, 2, 3, 4, 5, 6, 7)] == [True] * 8
    assert not any(missing[j] for j in (8, 9, 10, 11, 14))
    assert "root-relative" in content["joints_3d"] and content["joint_names"][2] == "right knee"
    assert "random heatmap head" not in err  # the head was not used


def test_joints_given_as_zeros_are_never_used_as_pixel_0_0(tiny_checkpoint, tmp_path, capsys):
    for hips in ([0, 0, 0], [0, 0, 0.9]):  # OpenPose's way, and [0, 0] with a score
        status, err, out = run_portrait(tmp_path, capsys, tiny_checkpoint,
                                        portrait_keypoints(hips))
        assert status == 0, err
        (person,) = predictions(out)["frames"][0]["people"]
        points = np.array(person["joints_2d"])
        assert np.hypot(*points.T).min() > 50, points  # nothing near the top-left corner
        assert person["joints_2d_missing"][1] and person["joints_2d_missing"][4]  # the hips
    # two-column joints: [0, 0] is missing too
    points = np.array(portrait_keypoints([0, 0, 0]))[:, :2]
    h36m, scores, missing = check_keypoints(points[:13].tolist() + [[330, 500]] * 4, 512, 600,
                                            "x", "coco")
    assert scores is None and missing[0] and np.hypot(*h36m.T).min() > 50


def test_missing_joints_are_imputed_by_the_fitted_template():
    from inference.missing_joints import COCO_ANCHORS, COCO_TEMPLATE, impute_missing

    # a person who is the template turned, zoomed, shifted (and once mirrored: seen from behind)
    angle = 0.3
    rotation = 420 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for mirror in (1.0, -1.0):
        truth = (COCO_TEMPLATE * [mirror, 1.0]) @ rotation.T + [300, 200]
        missing = np.zeros(17, bool)
        missing[[9, 10, 13, 14, 15, 16]] = True  # wrists, knees, ankles
        given = truth.copy()
        given[missing] = 0.0
        filled = impute_missing(given, missing, COCO_TEMPLATE, COCO_ANCHORS)
        assert np.abs(filled - truth).max() < 1e-6
    # raised arms do not steer the fit while head, shoulders and hips are visible
    raised = truth.copy()
    raised[[7, 8, 9, 10]] += [0, -300]
    missing = np.zeros(17, bool)
    missing[[13, 14, 15, 16]] = True
    filled = impute_missing(raised, missing, COCO_TEMPLATE, COCO_ANCHORS)
    assert np.abs(filled[13:] - truth[13:]).max() < 1e-6


def test_kpt_thr_decides_which_joints_are_missing(tiny_checkpoint, tmp_path, capsys):
    from inference import Predictor

    keypoints = portrait_keypoints()
    keypoints[5][2] = keypoints[6][2] = 0.25  # the shoulders: weak
    for threshold, shoulders_missing in (("0.3", True), ("0.2", False)):
        status, err, out = run_portrait(tmp_path, capsys, tiny_checkpoint, keypoints,
                                        "--kpt-thr", threshold)
        assert status == 0, err
        (person,) = predictions(out)["frames"][0]["people"]
        assert person["joints_2d_missing"][11] == shoulders_missing  # H36M left shoulder
        placed = np.array(person["joints_2d"])[11]
        assert (placed.tolist() == [420.0, 470.0]) != shoulders_missing
    # the same in the Python API, per predictor and per call
    image = cv2.cvtColor(cv2.imread(GRACE_HOPPER), cv2.COLOR_BGR2RGB)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, action="all", kpt_thr=0.3)
    (person,) = predictor(image, keypoints=[keypoints], keypoint_format="coco")
    assert person.joints_2d_missing[11] and "left shoulder" in person.missing_names
    (person,) = predictor(image, keypoints=[keypoints], keypoint_format="coco", kpt_thr=0.2)
    assert not person.joints_2d_missing[11]
    assert person.joints_3d[0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(MetaPoseError, match="finite"):
        Predictor.from_checkpoint(tiny_checkpoint, action="all", kpt_thr=float("nan"))


def test_joints_are_named_in_messages():
    points = np.array(portrait_keypoints())
    points[13, 0] = np.nan
    with pytest.raises(MetaPoseError, match="joint 'left knee' \\(COCO-17 #13\\)"):
        check_keypoints(points, 512, 600, "frame 'a.jpg'", "coco")
    points = np.array(portrait_keypoints())
    points[:, 2] = 0.0
    points[0, 2] = 1.0
    with pytest.raises(MetaPoseError, match="which leaves nose: at least two joints"):
        check_keypoints(points, 512, 600, "frame 'a.jpg'", "coco")
    assert COCO_NAMES[13] == "left knee"


def test_hrnet_joints_below_the_threshold_are_imputed(tiny_checkpoint):
    from inference import Predictor

    image = cv2.cvtColor(cv2.imread(GRACE_HOPPER), cv2.COLOR_BGR2RGB)
    predictor = Predictor.from_checkpoint(tiny_checkpoint, action="all", kpt_thr=0.1)
    with pytest.warns(UserWarning, match="random"):  # said when the head is used
        (person,) = predictor(image)
    scores = person.joints_2d_scores
    assert person.joints_2d_source == "hrnet" and person.joints_2d_missing.any()
    # a joint copied from a COCO joint is missing exactly when that joint's score is too low
    direct = {1: 12, 2: 14, 3: 16, 4: 11, 5: 13, 6: 15, 9: 0, 11: 5, 12: 7, 13: 9, 14: 6}
    for h36m in direct:
        if scores[h36m] <= 0.1:
            assert person.joints_2d_missing[h36m]
    assert np.isfinite(person.joints_2d).all() and np.isfinite(person.joints_3d).all()


# ---------------------------------------------------------------------------------------------
# Videos: tracks, times, fps; pictures


def test_video_records_carry_time_track_ids_and_fps(tiny_checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames=8, fps=10)
    boxes = {str(i): [[2 + i, 10, 40 + i, 70], [50 - i, 10, 90 - i, 70]] for i in range(8)}
    out = tmp_path / "out"
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", video, "--out", str(out),
                         "--action", "all", "--boxes", write_json(tmp_path / "b.json", boxes),
                         "--box-padding", "1"], capsys)
    assert status == 0, err
    content = predictions(out)
    assert content["fps"] == 10.0 and content["kind"] == "video"
    assert [record["time"] for record in content["frames"]] == [i / 10 for i in range(8)]
    ids = [[person["track_id"] for person in record["people"]] for record in content["frames"]]
    assert ids == [[0, 1]] * 8
    # without boxes: one whole-frame person per frame, one track, also with --smooth
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", video, "--out",
                         str(tmp_path / "out2"), "--action", "all", "--smooth", "2",
                         "--no-render"], capsys)
    assert status == 0, err
    frames = predictions(tmp_path / "out2")["frames"]
    assert [r["people"][0]["track_id"] for r in frames] == [0] * 8
    assert all(r["time"] is not None for r in frames)


def test_pictures_hold_a_fixed_cube_boxes_labels_and_h264(tmp_path):
    from inference.pictures import BOX_RGB, FootageRenderer, output_layout
    from inference.video_out import H264, VideoOut

    assert output_layout(1000, 1002)[0] == 1002  # the input's own height
    assert output_layout(4000, 3000)[0] == 1080 and output_layout(160, 120)[0] == 360
    assert output_layout(9000, 300)[1] <= 1920  # a panorama is letterboxed
    renderer = FootageRenderer(max_people=2)
    image = np.full((300, 400, 3), 90, np.uint8)
    pose = np.random.default_rng(0).normal(0, 0.3, (17, 3))
    pose -= pose[0]
    limits = []
    for scale in (1.0, 0.1):  # a normal pose, then a 10x smaller one: the cube stays
        people = [{"box": [50, 40, 200, 280], "joints_2d": np.full((17, 2), 120.0),
                   "joints_3d": pose * scale, "missing": np.zeros(17, bool), "label": "#7"}]
        picture = renderer.render(image, people, "frame 0")
        panel = renderer._panel(picture.shape[0])
        limits.append((panel.axes.get_xlim(), panel.axes.get_ylim(), panel.axes.get_zlim()))
    assert limits[0] == limits[1] and limits[0][1] == (-1.0, 1.0)
    assert picture.shape[0] == 360 and picture.shape[0] % 2 == 0 and picture.shape[1] % 2 == 0
    scale = 360 / 300
    top_edge = picture[int(round((40 + 0.5) * scale - 0.5)), 120:200]
    assert (np.abs(top_edge.astype(int) - BOX_RGB).sum(axis=1) < 60).mean() > 0.8  # the box
    video = VideoOut(str(tmp_path / "v.mp4"), 12.5)
    for _ in range(3):
        video.write(picture)
    video.close()
    capture = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii")
    assert video.codec == H264 and fourcc.lower() in ("avc1", "h264")


def test_without_an_h264_encoder_mp4v_is_written_and_said(tmp_path, monkeypatch):
    from inference import video_out

    monkeypatch.setattr(video_out, "h264_encoder", lambda: None)
    video = video_out.VideoOut(str(tmp_path / "v.mp4"), 10)
    with pytest.warns(UserWarning, match="mp4v"):
        video.write(np.zeros((64, 80, 3), np.uint8))
    video.close()
    assert video.codec == video_out.MP4V and os.path.getsize(tmp_path / "v.mp4") > 0


# ---------------------------------------------------------------------------------------------
# Every input is checked before the model is loaded; a failed run leaves nothing


@pytest.fixture
def no_model_building(monkeypatch):
    """Makes building the model an error: a test that gets past the checks fails loudly."""
    import inference.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(inference.loading, "build_trained_model", refuse)


def test_inputs_are_checked_before_the_model_is_built(tiny_checkpoint, tmp_path, capsys,
                                                      no_model_building):
    bad_keypoints = portrait_keypoints()
    bad_keypoints[3] = [float("inf"), 3, 1]
    cases = [
        (["--keypoints", write_json(tmp_path / "k.json", {"format": "coco", "frames": {
            "grace_hopper.jpg": [bad_keypoints]}})], "not finite"),
        (["--boxes", write_json(tmp_path / "b.json", [[0, 0, 1e308, 1e308]])], "reaches more"),
        (["--boxes", write_json(tmp_path / "c.json", {"other.jpg": []})], "has no entry"),
        (["--hrnet", str(tmp_path)], "is a folder"),
        (["model.image_encoder.pretrained=/nowhere/pose_hrnet.pth"], "no HRNet heatmap head"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        status, err = infer(["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out",
                             str(out), "--action", "all", *extra], capsys)
        assert status == 2 and message in err and "Traceback" not in err, (extra, err)
        assert not out.exists()


def test_a_failed_run_removes_the_folders_it_created(tiny_checkpoint, tmp_path, capsys,
                                                     monkeypatch):
    import inference.predictor

    # the model's output is broken (a damaged checkpoint): the run stops after the folder was made
    monkeypatch.setattr(inference.predictor, "predict",
                        lambda *args, **kwargs: __import__("torch").full((1, 17, 3), np.nan))
    out = tmp_path / "new" / "deeper" / "out"
    status, err = run_portrait(tmp_path, capsys, tiny_checkpoint, portrait_keypoints())[:2]
    assert status == 2 and "non-finite 3D joints" in err
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out",
                         str(out), "--action", "all", "--no-render", "--keypoints",
                         str(tmp_path / "kp.json")], capsys)
    assert status == 2 and "non-finite" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("kept")
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out",
                         str(existing), "--action", "all", "--keypoints",
                         str(tmp_path / "kp.json")], capsys)
    assert status == 2 and sorted(os.listdir(existing)) == ["mine.txt"]


# ---------------------------------------------------------------------------------------------
# Hostile inputs and faults


def _opens_within(seconds, function, *args):
    """Runs function(*args) in a thread; (finished, error raised) after at most `seconds`."""
    result = {}

    def target():
        try:
            function(*args)
        except MetaPoseError as error:
            result["error"] = str(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), result.get("error", "")


def test_a_fifo_or_a_device_as_input_is_refused_at_once(tmp_path):
    from inference.media import open_input

    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    try:
        for path, problem in ((fifo, "is a FIFO"), ("/dev/zero", "is a device"),
                              (loop, "is a loop of symbolic links")):
            finished, error = _opens_within(10, open_input, str(path))
            assert finished and problem in error, (path, error)
    finally:  # a reader that opened the FIFO after all gets its end of file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing blocks
            pass


def test_files_that_are_not_regular_files_are_named_as_what_they_are(tiny_checkpoint, tmp_path,
                                                                      capsys):
    fifo = tmp_path / "kp.json"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    cases = [("--keypoints", str(tmp_path), "is a folder, not a file"),
             ("--keypoints", str(fifo), "is a FIFO"),
             ("--keypoints", "/dev/zero", "is a device"),
             ("--keypoints", str(loop), "is a loop of symbolic links"),
             ("--boxes", "/dev/zero", "is a device"),
             ("--boxes", str(loop), "is a loop of symbolic links"),
             ("--input", str(loop), "is a loop of symbolic links")]
    for flag, path, problem in cases:
        files = {"--input": GRACE_HOPPER, flag: path}
        argv = ["--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "out"), "--action",
                "all"] + [item for pair in files.items() for item in pair]
        status, err = infer(argv, capsys)
        assert status == 2 and problem in err and "does not exist" not in err, (flag, err)


def test_a_folder_with_a_fifo_or_a_dangling_link_says_so(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.full((40, 30, 3), 100, np.uint8))
    for name, make, problem in (("b.jpg", os.mkfifo, "is a FIFO"),
                                ("c.png", lambda p: os.symlink(tmp_path / "gone.png", p),
                                 "symbolic link to a file that does not exist")):
        make(folder / name)
        status, err = infer(["--checkpoint", tiny_checkpoint, "--input", str(folder), "--out",
                             str(tmp_path / "out"), "--action", "all"], capsys)
        assert status == 2 and f"holds '{name}'" in err and problem in err, err
        os.remove(folder / name)


def test_deeply_nested_json_is_refused_in_one_line(tiny_checkpoint, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    for flag in ("--keypoints", "--boxes"):
        status, err = infer(["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out",
                             str(tmp_path / "out"), "--action", "all", flag, str(deep)], capsys)
        assert status == 2 and "nests lists or objects more deeply" in err, err
        assert "Traceback" not in err and "RecursionError" not in err


@pytest.mark.parametrize("box, message", [([0, 0, 1e308, 1e308], "reaches more than 2 frame"),
                                          ([-1e9, 0, 100, 100], "reaches more than 2 frame"),
                                          ([0, 0, 1e400, 5], "not finite")])
def test_boxes_far_beyond_the_frame_are_refused(tiny_checkpoint, tmp_path, capsys, box,
                                                message):
    boxes = tmp_path / "boxes.json"
    boxes.write_text("[[" + ", ".join(repr(v) if v != 1e400 else "1e400" for v in box) + "]]")
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out",
                         str(tmp_path / "out"), "--action", "all", "--boxes", str(boxes)],
                        capsys)
    assert status == 2 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--smooth", "inf"), ("--smooth", "nan"),
                                         ("--smooth", "1e300"), ("--kpt-thr", "nan"),
                                         ("--box-padding", "inf")])
def test_non_finite_or_huge_numbers_are_refused(tiny_checkpoint, tmp_path, capsys, flag, value):
    video = write_video(tmp_path / "clip.mp4", frames=3)
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", video, "--out",
                         str(tmp_path / "out"), "--action", "all", flag, value], capsys)
    assert status == 2 and f"argument {flag}" in err and "Traceback" not in err, err


def test_smoothing_is_bounded_for_any_sigma():
    from inference.smoothing import gaussian_smooth

    series = np.arange(5.0)[:, None]
    assert np.allclose(gaussian_smooth(series, 1000.0), 2.0, atol=0.01)  # ~ the mean
    for sigma in (float("inf"), float("nan"), -1.0):
        with pytest.raises(MetaPoseError, match="between 0"):
            gaussian_smooth(series, sigma)


def test_out_equal_to_the_input_folder_is_refused(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "f0.jpg"), np.full((40, 30, 3), 100, np.uint8))
    (tmp_path / "alias").symlink_to(folder)
    for out in (folder, str(folder) + "/.", tmp_path / "alias"):
        for _ in range(2):  # run twice: the second run must not read the first run's pictures
            status, err = infer(["--checkpoint", tiny_checkpoint, "--input", str(folder),
                                 "--out", str(out), "--action", "all"], capsys)
            assert status == 2 and "is the input folder" in err, err
        assert sorted(os.listdir(folder)) == ["f0.jpg"]


def test_a_video_whose_header_declares_too_large_frames_is_refused(tmp_path, monkeypatch):
    import inference.media as media

    video = write_video(tmp_path / "clip.mp4", frames=2, size=(96, 80))
    monkeypatch.setattr(media, "MAX_VIDEO_FRAME_PIXELS", 96 * 80 - 1)
    with pytest.raises(MetaPoseError, match="declares 96x80 frames"):
        media.open_input(video)
    monkeypatch.setattr(media, "MAX_VIDEO_FRAME_PIXELS", 96 * 80)
    monkeypatch.setattr(media, "MAX_VIDEO_SIDE", 95)
    with pytest.raises(MetaPoseError, match="at most 95 on a side"):
        media.open_input(video)


HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from inference.output_folder import OutputFolder
out = OutputFolder(sys.argv[2])
with open(out.path("clip_3d.mp4"), "wb") as handle:
    handle.write(b"partial" * 1000)
print("ready", flush=True)
time.sleep(120)
"""


def test_one_run_per_out_folder_and_leftovers_of_a_killed_run_are_removed(tiny_checkpoint,
                                                                           tmp_path, capsys):
    from inference.output_folder import OutputFolder

    out = tmp_path / "out"
    argv = ["--checkpoint", tiny_checkpoint, "--input", GRACE_HOPPER, "--out", str(out),
            "--action", "all", "--keypoints",
            write_json(tmp_path / "kp.json", {"format": "coco", "frames": {
                "grace_hopper.jpg": [portrait_keypoints()]}})]
    # another process is writing into --out (stopped midway through its video)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, REPO, str(out)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        status, err = infer(argv, capsys)
        assert status == 2 and "is in use by another tools/infer.py run" in err, err
        assert f"pid {child.pid}" in err
        # and a second writer in this very process is refused as well
        with pytest.raises(MetaPoseError, match="in use"):
            OutputFolder(out)
        (stage,) = [name for name in os.listdir(out) if name.startswith(".infer-")]
        assert os.path.getsize(out / stage / "clip_3d.mp4") == 7000
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (out / ".predictions.json.abc123.tmp").write_text("[")  # a killed atomic write
    status, err = infer(argv, capsys)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["grace_hopper_3d.png", "predictions.json"]


def test_a_warning_during_the_progress_bar_starts_a_line_of_its_own(tiny_checkpoint, tmp_path,
                                                                     capsys):
    """The random-HRNet warning comes while the progress bar is drawn: it must not be glued to
    the end of the bar's line."""
    video = write_video(tmp_path / "clip.mp4", frames=2)
    status, err = infer(["--checkpoint", tiny_checkpoint, "--input", video,
                         "--out", str(tmp_path / "out"), "--action", "all"], capsys)
    assert status == 0, err
    pieces = [piece for line in err.split("\n") for piece in line.split("\r")]
    warned = [piece for piece in pieces if "warning:" in piece]
    assert warned and all(piece.startswith("warning:") for piece in warned), err
