"""Converts the raw MPI-INF-3DHP release into CA-PF's label files and person crops (docs/method.md §6).

    python tools/prepare_3dhp.py --raw /data/mpi_inf_3dhp --out data/mpi_inf_3dhp --workers 8

Inputs under --raw (the release as its download scripts unpack it):
    S1..S8/Seq1, Seq2/annot.mat              MATLAB v5: annot2, univ_annot3 per camera 0..13
    S1..S8/Seq1, Seq2/camera.calibration     the cameras' sizes and intrinsics
    S1..S8/Seq1, Seq2/imageSequence/video_<c>.avi   for the "vnect" cameras 0,1,2,4,5,6,7,8
    mpi_inf_3dhp_test_set/TS1..TS6/annot_data.mat   MATLAB v7.3 (HDF5): annot2, univ_annot3,
                                                    valid_frame (already the 17 joints)
    mpi_inf_3dhp_test_set/TS1..TS6/imageSequence/img_000001.jpg ...
    Test-set intrinsics: TS1-TS4 were filmed with studio camera 8 (2048x2048): camera 8 of
    --gs-calibration (default S1/Seq1/camera.calibration). TS5-TS6 (1920x1080) use the first
    camera of --outdoor-calibration, a camera.calibration-style file you write from the test
    set's camera parameters (default mpi_inf_3dhp_test_set/outdoor.calibration).

Outputs under --out:
    data_train_3dhp.npz, data_test_3dhp.npz   CA-PF's layout (datasets/mpi_inf_3dhp_labels.py),
                                              plus each frame's person box (center, scale)
    images/s_01_seq_01_ca_00/s_01_seq_01_ca_00_000001.jpg ...   256x192 crops (--full-frames:
                                              the video frames themselves)
    images/TS1/TS1_000001.jpg ...             crops of the valid test frames

Per training camera, the first F frames are used (F from the dataset's sequence info,
SEQUENCE_INFO), the 17 joints of the evaluation are taken from the 28, 2D joints are normalised
with the calibration's frame size, and the person box comes from the univ_annot3 pelvis with THAT
camera's intrinsics (looked up by camera id: CA-PF's preparation looks the box up by list position
for the crop labels, so for 5 of the 8 cameras its labels and crops disagree). Crop labels and
crops share one map (datasets.images.crop_affine).

Problems that leave data out are counted and listed at the end, never fatal: a missing or
unreadable video (that camera is left out), a video shorter than its valid frames (its labels are
cut to the frames it has), an annotation shorter than F, a frame size that differs from the
calibration (camera or sequence left out), missing sequences or calibrations, and missing test
images (their labels stay: evaluating needs the image, or data.skip_bad_images=true).

Resumable: each finished video or test sequence leaves images/<folder>/.done.json and is skipped
by a rerun (delete the file to redo one); images are written under a temporary name and renamed,
and the label files are written atomically at the end, so an interrupted run loses nothing done.
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from datasets.images import read_image  # noqa: E402
from datasets.camera import (  # noqa: E402
    box_from_root, crop_from_full_frame, full_frame_to_crop, pixels_to_screen,
)
from datasets.mpi_inf_3dhp_labels import (  # noqa: E402
    EXPECTED_TRAIN_SAMPLES, EXPECTED_VALID_TEST_FRAMES, ROOT, SEQUENCE_INFO, TEST_FILE,
    TEST_SEQUENCES, TRAIN_FILE, VNECT_CAMERAS, test_image_name, train_image_name,
    train_sequence_name, write_label_file,
)
from datasets.mpi_inf_3dhp_raw import (  # noqa: E402
    read_calibration, read_test_annotation, read_train_annotation,
)
from utils.atomic_files import atomic_write_bytes, atomic_write_text, name_output_flag  # noqa: E402
from utils.cli import positive_int, run_cli  # noqa: E402
from utils.errors import MetaPoseError  # noqa: E402

TEST_FOLDER = "mpi_inf_3dhp_test_set"
GS_CAMERA = 8  # the studio camera of TS1-TS4
MARKER = ".done.json"


class Report:
    """Counts and lists the problems that left data out."""

    def __init__(self):
        self.problems = []

    def add(self, kind, where, detail):
        self.problems.append((kind, where, detail))
        print(f"  {kind}: {where}: {detail}", flush=True)

    def counts(self):
        counts = {}
        for kind, _, _ in self.problems:
            counts[kind] = counts.get(kind, 0) + 1
        return counts


# ----------------------------------------------------------------------------------------------
# Images (run in worker processes): one video or one test sequence per job


def _write_jpeg(path, image, quality):
    """Encodes `image` (BGR) and writes it atomically: a killed or failed run leaves no
    half-written frame, and a full disk is one message."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MetaPoseError(f"JPEG encoding failed for '{path}'.")
    atomic_write_bytes(path, encoded.tobytes())


def _frames_of(job):
    """Yields (position, BGR frame or None) of a job's frames, in order, stopping early when a
    video ends."""
    if job["video"] is not None:
        capture = cv2.VideoCapture(job["video"])
        try:
            for position in range(len(job["names"])):
                ok, frame = capture.read()
                if not ok:
                    return
                yield position, frame
        finally:
            capture.release()
        return
    for position, source in enumerate(job["sources"]):
        yield position, _test_frame(source)


def _test_frame(path):
    """The BGR pixels of a test-set frame, or None when it is missing or unreadable (counted by
    the caller). Read through datasets.images.read_image, so a folder, FIFO or device is never
    opened and a header that declares a huge image is refused before decoding."""
    try:
        return cv2.cvtColor(read_image(path), cv2.COLOR_RGB2BGR)
    except MetaPoseError:
        return None


def extract_images(job):
    """Writes the crops (or full frames) of one job; returns {"written", "missing", "problem"}.

    job: dict with "folder" (output folder), "names" (relative image names, one per frame),
    "video" (path, frames in order) or "sources" (one image path per frame), "centers",
    "scales" (per frame), "size" (expected (width, height)), "full_frames", "quality",
    "images" (the output images folder). A finished job leaves MARKER in its folder; a rerun
    with the same frames and mode returns the recorded result without decoding anything.
    """
    folder = os.path.join(job["images"], job["folder"])
    marker = os.path.join(folder, MARKER)
    expected = {"requested": len(job["names"]), "full_frames": job["full_frames"]}
    try:
        with open(marker, "r", encoding="utf-8") as handle:
            done = json.load(handle)
        if all(done.get(key) == value for key, value in expected.items()):
            return done
    except (OSError, ValueError):
        pass
    if job["video"] is not None and not os.path.isfile(job["video"]):
        return {"written": 0, "missing": [], "problem": ("missing video", job["video"])}
    os.makedirs(folder, exist_ok=True)
    written, missing, problem = 0, [], None
    width, height = job["size"]
    for position, frame in _frames_of(job):
        if frame is None:
            missing.append(position)
            continue
        if frame.shape[:2] != (height, width):
            problem = ("frame size", f"{frame.shape[1]}x{frame.shape[0]} frames, the calibration "
                                     f"says {width}x{height}")
            written = 0
            break
        image = frame if job["full_frames"] else crop_from_full_frame(
            frame, job["centers"][position], job["scales"][position])
        _write_jpeg(os.path.join(job["images"], job["names"][position]), image, job["quality"])
        written += 1
    if job["video"] is not None and problem is None and written < len(job["names"]):
        problem = ("short video", f"{written} frames decoded of the {len(job['names'])} valid "
                                  "annotated frames (labels cut to the frames it has)")
        if written == 0:
            problem = ("unreadable video", f"'{job['video']}' gives no frame")
    result = dict(expected, written=written, missing=missing, problem=problem)
    atomic_write_text(marker, json.dumps(result) + "\n")
    return result


def _run_jobs(jobs, workers):
    if workers <= 1 or len(jobs) <= 1:
        return [extract_images(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(extract_images, jobs))


# ----------------------------------------------------------------------------------------------
# Labels


def _boxes(joints_mm, calibration):
    centers, scales, _ = box_from_root(joints_mm[:, ROOT], calibration.fx, calibration.fy,
                                       calibration.cx, calibration.cy)
    return centers, scales


def unit_labels(pixels, joints_mm, centers, scales, size):
    """The CA-PF arrays of one video: 2D normalised with the frame `size` (width, height), crop
    pixels through each frame's box, univ_annot3 millimetres, and the boxes (float32)."""
    crops = np.stack([full_frame_to_crop(p, c, s) for p, c, s in zip(pixels, centers, scales)])
    return {"data_2d": pixels_to_screen(pixels, *size).astype(np.float32),
            "data_2d_crop": crops.astype(np.float32), "data_3d": joints_mm.astype(np.float32),
            "center": centers.astype(np.float32), "scale": scales.astype(np.float32)}


def _plan_train(raw, subjects, sequence_info, report):
    """[(sequence name, fps, camera, arrays of the valid frames, image job)] of the release."""
    units = []
    for subject, sequence in sorted(sequence_info):
        if subject not in subjects:
            continue
        name = train_sequence_name(subject, sequence)
        folder = os.path.join(raw, f"S{subject}", f"Seq{sequence}")
        paths = {"annotation": os.path.join(folder, "annot.mat"),
                 "calibration": os.path.join(folder, "camera.calibration")}
        absent = [what for what, path in paths.items() if not os.path.isfile(path)]
        if absent:
            report.add("missing sequence", name, f"no {absent[0]} file '{paths[absent[0]]}'")
            continue
        calibration = read_calibration(paths["calibration"])
        annotation = read_train_annotation(paths["annotation"])
        frames, fps = sequence_info[(subject, sequence)]
        for camera in VNECT_CAMERAS:
            if camera not in calibration or camera not in annotation:
                report.add("missing camera", f"{name} camera {camera}",
                           "not in camera.calibration" if camera not in calibration
                           else "not in annot.mat")
                continue
            pixels, joints = (array[:frames] for array in annotation[camera])
            if len(pixels) < frames:
                report.add("short annotation", f"{name} camera {camera}",
                           f"{len(pixels)} annotated frames, the sequence info says {frames}")
            centers, scales = _boxes(joints, calibration[camera])
            names = [train_image_name(subject, sequence, camera, f)
                     for f in range(1, len(pixels) + 1)]
            job = {"folder": os.path.dirname(names[0]), "names": names,
                   "video": os.path.join(folder, "imageSequence", f"video_{camera}.avi"),
                   "sources": None, "centers": centers, "scales": scales,
                   "size": calibration[camera].size}
            units.append((name, fps, camera,
                          unit_labels(pixels, joints, centers, scales, calibration[camera].size),
                          job))
    return units


def _test_calibration(name, gs_calibration, outdoor_calibration, report):
    """The Calibration of test sequence `name`, or None (reported)."""
    studio = TEST_SEQUENCES.index(name) < 4
    path = gs_calibration if studio else outdoor_calibration
    if not os.path.isfile(path):
        report.add("no calibration", name,
                   f"'{path}' does not exist (pass --{'gs' if studio else 'outdoor'}-calibration)")
        return None
    cameras = read_calibration(path)
    if studio:
        if GS_CAMERA not in cameras:
            raise MetaPoseError(f"calibration file '{path}' (--gs-calibration) has no camera "
                                f"{GS_CAMERA}, whose intrinsics TS1-TS4 use.")
        return cameras[GS_CAMERA]
    return cameras[min(cameras)]


def _plan_test(raw, gs_calibration, outdoor_calibration, report):
    """[(sequence name, arrays incl. valid, image job)] of the test set."""
    units = []
    for name in TEST_SEQUENCES:
        folder = os.path.join(raw, TEST_FOLDER, name)
        annotation = os.path.join(folder, "annot_data.mat")
        if not os.path.isfile(annotation):
            report.add("missing sequence", name, f"no annotation file '{annotation}'")
            continue
        calibration = _test_calibration(name, gs_calibration, outdoor_calibration, report)
        if calibration is None:
            continue
        pixels, joints, valid = read_test_annotation(annotation)
        centers, scales = _boxes(joints, calibration)
        arrays = unit_labels(pixels, joints, centers, scales, calibration.size)
        arrays["valid"] = valid.astype(np.uint8)
        frames = np.flatnonzero(valid)
        job = {"folder": name, "names": [test_image_name(name, f + 1) for f in frames],
               "video": None, "centers": centers[frames], "scales": scales[frames],
               "sources": [os.path.join(folder, "imageSequence", f"img_{f + 1:06d}.jpg")
                           for f in frames], "size": calibration.size}
        units.append((name, arrays, job))
    return units


# ----------------------------------------------------------------------------------------------
# The whole conversion


def _attach(job, out, full_frames, quality):
    job.update(images=os.path.join(out, "images"), full_frames=bool(full_frames),
               quality=int(quality))
    return job


def _train_layout(units, results, report):
    layout, counts = {}, {}
    for (name, fps, camera, arrays, job), result in zip(units, results):
        if result["problem"] is not None:
            kind, detail = result["problem"]
            report.add(kind, f"{name} camera {camera}", detail)
        written = result["written"]
        if written == 0:
            continue
        layout.setdefault(name, [{}, fps])[0][str(camera)] = \
            {key: value[:written] for key, value in arrays.items()}
        counts[name] = counts.get(name, 0) + written
    return layout, counts


def _test_layout(units, results, report):
    layout, counts = {}, {}
    for (name, arrays, job), result in zip(units, results):
        if result["problem"] is not None:
            report.add(result["problem"][0], name, result["problem"][1])
            continue
        if result["missing"]:
            first = os.path.basename(job["sources"][result["missing"][0]])
            report.add("missing image", name, f"{len(result['missing'])} valid frame(s) have no "
                                              f"image (first: {first})")
        layout[name] = arrays
        counts[name] = int(arrays["valid"].sum())
    return layout, counts


def prepare(raw, out, subjects=tuple(range(1, 9)), train=True, test=True, full_frames=False,
            gs_calibration=None, outdoor_calibration=None, workers=1, quality=95,
            sequence_info=SEQUENCE_INFO):
    """Converts the release; returns {"train": {sequence: samples}, "test": {sequence: valid
    frames}, "problems": {kind: count}}.

    Args:
        raw, out: the release folder and the output folder.
        subjects: training subjects to convert (1..8).
        train, test: which label file to write.
        full_frames: write the video frames instead of 256x192 crops.
        gs_calibration, outdoor_calibration: calibration files of TS1-TS4 (camera 8) and
            TS5-TS6 (first camera); None = the defaults of the module docstring.
        workers: processes decoding videos and writing images.
        quality: JPEG quality of the written images.
        sequence_info: {(subject, sequence): (valid frames, fps)} (the release's table).
    """
    start = time.perf_counter()
    if not os.path.isdir(raw):
        raise MetaPoseError(f"raw MPI-INF-3DHP folder '{raw}' does not exist (--raw). It should "
                            f"hold S1..S8 and {TEST_FOLDER}.")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    gs_calibration = gs_calibration or os.path.join(raw, "S1", "Seq1", "camera.calibration")
    outdoor_calibration = outdoor_calibration or os.path.join(raw, TEST_FOLDER,
                                                              "outdoor.calibration")
    report, result = Report(), {"train": {}, "test": {}}
    if train:
        units = _plan_train(raw, set(subjects), sequence_info, report)
        print(f"training: {len(units)} videos to read", flush=True)
        results = _run_jobs([_attach(u[-1], out, full_frames, quality) for u in units], workers)
        layout, result["train"] = _train_layout(units, results, report)
        if layout:
            write_label_file(os.path.join(out, TRAIN_FILE), layout)
    if test:
        units = _plan_test(raw, gs_calibration, outdoor_calibration, report)
        results = _run_jobs([_attach(u[-1], out, full_frames, quality) for u in units], workers)
        layout, result["test"] = _test_layout(units, results, report)
        if layout:
            write_label_file(os.path.join(out, TEST_FILE), layout)
    result["problems"] = report.counts()
    _print_summary(result, out, subjects, sequence_info, train, test, start)
    return result


def _verdict(got, expected):
    return "matches" if got == expected else "DIFFERS (see the problems above)"


def _print_summary(result, out, subjects, sequence_info, train, test, start):
    complete = set(subjects) >= {s for s, _ in SEQUENCE_INFO} and sequence_info == SEQUENCE_INFO
    if train:
        total = sum(result["train"].values())
        expected = f"; the full release gives {EXPECTED_TRAIN_SAMPLES:,}"
        verdict = f" -> {_verdict(total, EXPECTED_TRAIN_SAMPLES)}" if complete else ""
        print(f"training: {total:,} samples of {len(result['train'])} sequences -> "
              f"{os.path.join(out, TRAIN_FILE)}{expected}{verdict}")
    if test:
        total = sum(result["test"].values())
        parts = ", ".join(f"{name} {result['test'].get(name, 0)} ({expected})"
                          for name, expected in EXPECTED_VALID_TEST_FRAMES.items())
        print(f"test: {total:,} valid frames -> {os.path.join(out, TEST_FILE)}; per sequence "
              f"(expected): {parts}; the full test set gives "
              f"{sum(EXPECTED_VALID_TEST_FRAMES.values()):,} -> "
              f"{_verdict(result['test'], EXPECTED_VALID_TEST_FRAMES)}")
    problems = result["problems"]
    print("problems: " + (", ".join(f"{count} {kind}" for kind, count in problems.items())
                          if problems else "none"))
    print(f"done in {time.perf_counter() - start:.1f} s")


def _subjects(text):
    try:
        subjects = sorted({int(part.strip().lstrip("Ss")) for part in text.split(",") if part})
    except ValueError:
        subjects = []
    if not subjects or any(s not in range(1, 9) for s in subjects):
        raise argparse.ArgumentTypeError(f"expected comma-separated subjects among 1..8, got "
                                         f"{text!r}")
    return subjects


def build_parser():
    parser = argparse.ArgumentParser(
        description="Convert the raw MPI-INF-3DHP release into CA-PF's label files "
                    "(data_train_3dhp.npz, data_test_3dhp.npz) and 256x192 person crops.",
        epilog="Input layout, outputs and how problems are reported: see the docstring at the "
               "top of tools/prepare_3dhp.py.")
    parser.add_argument("--raw", required=True, help=f"folder with S1..S8 and {TEST_FOLDER}")
    parser.add_argument("--out", required=True, help="output folder (label files and images/)")
    parser.add_argument("--subjects", type=_subjects, default=list(range(1, 9)),
                        help="comma-separated training subjects (default 1,...,8)")
    parser.add_argument("--no-train", action="store_true", help="skip the training set")
    parser.add_argument("--no-test", action="store_true", help="skip the test set")
    parser.add_argument("--full-frames", action="store_true",
                        help="write the full video frames instead of 256x192 crops")
    parser.add_argument("--gs-calibration",
                        help="calibration whose camera 8 films TS1-TS4 (default "
                             "RAW/S1/Seq1/camera.calibration)")
    parser.add_argument("--outdoor-calibration",
                        help=f"calibration of TS5-TS6 (default RAW/{TEST_FOLDER}/"
                             "outdoor.calibration)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes reading videos and writing images (default 1)")
    parser.add_argument("--quality", type=positive_int, default=95,
                        help="JPEG quality of the written images (default 95)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    prepare(args.raw, args.out, subjects=args.subjects, train=not args.no_train,
            test=not args.no_test, full_frames=args.full_frames,
            gs_calibration=args.gs_calibration, outdoor_calibration=args.outdoor_calibration,
            workers=args.workers, quality=args.quality)
    return 0


if __name__ == "__main__":
    run_cli(main)
