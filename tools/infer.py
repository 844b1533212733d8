"""3D poses of the people in an image, a folder of images or a video, with a trained MetaPose.

Usage:
    python tools/infer.py --checkpoint FILE --input PATH --out DIR [--config FILE]
        [--keypoints JSON [--keypoint-format coco|h36m]] [--kpt-thr T] [--boxes JSON]
        [--box-padding F] [--detector NAME [--detector-weights default|random|FILE]
        [--detector-threshold T]] [--hrnet FILE] [--action NAME|all] [--device cpu|cuda|cuda:N]
        [--flip-test] [--smooth SIGMA] [--batch-size N] [--raw-3d] [--no-render] [--no-ground]
        [KEY=VALUE ...]

Writes DIR/predictions.json (schema in docs/inference.md): the input's kind and fps, the joint
names, and one record per input frame,
    {"frame": file name (images) or 0-based index (videos), "time": seconds (videos) or null,
     "width": W, "height": H,
     "people": [{"box": [x1, y1, x2, y2], "score": box confidence or null,
                 "track_id": track number (videos) or null,
                 "joints_2d": 17 x [x, y], "joints_2d_scores": 17 confidences or null,
                 "joints_2d_missing": 17 booleans, "joints_2d_source": "user" | "hrnet",
                 "joints_3d": 17 x [X, Y, Z]}]}
joints in H36M order; joints_2d and box in pixels of the input frame (missing joints at their
imputed places); joints_3d in metres, camera axes (x right, y down, z forward), root-relative
(joint 0 at 0, 0, 0; --raw-3d adds the network's own output as joints_3d_raw). Also
DIR/<name>_3d.png per image or DIR/<video>_3d.mp4 (H.264) for a video. Every input is checked
before the model is loaded; all outputs appear together at the end, and a failed run leaves DIR
as it was (a DIR it created is removed). One run at a time per DIR.
"""

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference.boxes import DEFAULT_BOX_PADDING, DETECTORS  # noqa: E402
from inference.media import frame_sizes, iter_frames, open_input  # noqa: E402
from inference.people import checked_request  # noqa: E402
from inference.smoothing import MAX_SIGMA  # noqa: E402
from inference.user_files import (PeopleFile, box_entries, keypoint_entries,  # noqa: E402
                                  keypoint_format)
from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       run_cli)
from utils.errors import MetaPoseError  # noqa: E402
from utils.input_files import require_file, shown_path  # noqa: E402
from utils.skeleton import JOINT_NAMES  # noqa: E402

PREDICTIONS_FORMAT = "metapose-predictions-v1"
MAX_BOX_PADDING = 100.0


def number_in(low, high, what):
    """An argparse type: a finite number in [low, high]."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected {what} in [{low:g}, {high:g}], got "
                                             f"{text!r}")
        return value
    return parse


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__[
        __doc__.index("Writes"):], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="best.pt / last.pt of a run, a converted or a published checkpoint")
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="experiment YAML (default: the config stored in the "
                                         "checkpoint; the paper's for published files)")
    parser.add_argument("--keypoints", help="JSON of 2D joints per frame (pixels)")
    parser.add_argument("--keypoint-format", choices=("coco", "h36m"),
                        help="joint order of --keypoints (default: the file's \"format\")")
    parser.add_argument("--kpt-thr", type=number_in(-1000.0, 1000.0, "a confidence threshold"),
                        default=0.0, metavar="T",
                        help="a 2D joint whose confidence is not above T is missing and imputed "
                             "(default 0: only confidence 0); joints outside the frame or given "
                             "as [0, 0] are always missing")
    parser.add_argument("--boxes", help="JSON of person boxes [x1, y1, x2, y2] per frame (pixels)")
    parser.add_argument("--box-padding", default=DEFAULT_BOX_PADDING,
                        type=number_in(1e-3, MAX_BOX_PADDING, "a padding factor"),
                        help="enlarge given/detected boxes by this factor after fitting the "
                             f"crop's 3:4 aspect (default {DEFAULT_BOX_PADDING}: a tight box "
                             "then frames a person like the H36M root box; 1 = the box itself)")
    parser.add_argument("--detector", choices=DETECTORS,
                        help="find people with torchvision's COCO detector")
    parser.add_argument("--detector-weights", default="default",
                        help="'default' (torchvision's, downloaded on first use), a state-dict "
                             "file, or 'random' (tests)")
    parser.add_argument("--detector-threshold", type=number_in(0.0, 1.0, "a score"),
                        default=0.5, help="minimum person score (default 0.5)")
    parser.add_argument("--hrnet", help="official COCO pose_hrnet file whose heatmap head gives "
                                        "the 2D joints (default: the config's pretrained file)")
    parser.add_argument("--action", help="joint_action models: an H36M action (e.g. Walking) or "
                                         "'all' (mean of the 15 actions' text features)")
    add_device_argument(parser)
    parser.add_argument("--flip-test", action="store_true",
                        help="average with the mirrored prediction, as the evaluation does")
    parser.add_argument("--smooth", type=number_in(0.0, MAX_SIGMA, "a number of frames"),
                        default=0.0, metavar="SIGMA",
                        help="videos: centred Gaussian filter of SIGMA frames over each "
                             f"person's track (0 = off, at most {MAX_SIGMA:g})")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="people per pass")
    parser.add_argument("--raw-3d", action="store_true",
                        help="also write the network's own 3D output (joints_3d_raw, not "
                             "shifted to the root)")
    parser.add_argument("--no-render", action="store_true", help="write predictions.json only")
    parser.add_argument("--no-ground", action="store_true",
                        help="pictures without the ground grid under the 3D skeletons")
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.boxes and args.detector:
        parser.error("--boxes and --detector exclude each other")
    return args


def output_name(source, key, taken=()):
    """<stem>_3d.png per image (<name>_3d.png when two images share a stem), <video>_3d.mp4."""
    name = os.path.basename(source.path if source.kind == "video" else key)
    stem = os.path.splitext(name)[0]
    if f"{stem}_3d.png" in taken:
        stem = name
    return f"{stem}_3d.{'mp4' if source.kind == 'video' else 'png'}"


def check_output_folder(out, source):
    """--out must not be the input folder: its pictures would be read as frames next time."""
    if source.kind == "folder" and os.path.isdir(out) and \
            os.path.samefile(out, source.path):
        raise MetaPoseError(
            f"--out '{shown_path(out)}' is the input folder '{shown_path(source.path)}': the "
            "pictures written there (<name>_3d.png) would be read as input frames by the next "
            "run. Pass another --out (e.g. a folder beside it).")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise MetaPoseError(f"--out '{shown_path(out)}' exists and is not a folder; pass a "
                            "folder (it is created when missing).")


def _where(key, boxes_file, keypoints_file):
    names = [f"--{flag} '{f.path}'" for flag, f in (("boxes", boxes_file),
                                                     ("keypoints", keypoints_file)) if f]
    return f"frame {key!r}" + (f" of {' / '.join(names)}" if names else "")


def frame_request(args, source, key, size, boxes_file, keypoints_file, fmt):
    """The checked FrameRequest (no image yet) of one frame from the user's files."""
    single = source.kind == "image"
    where = _where(key, boxes_file, keypoints_file)
    boxes = scores = keypoints = None
    if boxes_file is not None:
        boxes, scores = box_entries(boxes_file.people(key, single), where)
    if keypoints_file is not None:
        keypoints, own_boxes = keypoint_entries(keypoints_file.people(key, single), where)
        if own_boxes is not None:
            if boxes is not None:
                raise MetaPoseError(f"{where}: boxes come both from --boxes and from the "
                                    "keypoint file's \"box\" fields; give them in one place.")
            boxes = own_boxes
    return checked_request(size[0], size[1], boxes=boxes, keypoints=keypoints,
                           keypoint_format=fmt or "h36m", box_scores=scores, where=where,
                           kpt_thr=args.kpt_thr)


def check_user_files(args, source, boxes_file, keypoints_file, fmt):
    """Every frame's boxes and joints checked against its frame size, before the model is
    loaded: {frame key: FrameRequest without image} for the frames known now (every image; for
    a video, the frames the files name, whose keys must be frame indices)."""
    people_files = [f for f in (boxes_file, keypoints_file) if f is not None]
    if not people_files:
        return {}
    sizes = frame_sizes(source)
    if source.kind == "video":
        keys = set()
        for people_file in people_files:
            for key in people_file.frames:
                if key is not None and not (key.isdigit() and len(key) < 10):
                    raise MetaPoseError(f"{people_file.flag} file '{people_file.path}' names "
                                        f"frame {key!r}, but the frames of a video are named by "
                                        "their 0-based index (\"0\", \"1\", ...).")
                keys.add(key)
        requests = {int(key): frame_request(args, source, int(key), source.size, boxes_file,
                                            keypoints_file, fmt)
                    for key in sorted(keys, key=lambda k: int(k)) if key is not None}
        for people_file in people_files:
            people_file.used.clear()  # counted again while the frames are read
        return requests
    requests = {key: frame_request(args, source, key, size, boxes_file, keypoints_file, fmt)
                for key, size in sizes.items()}
    for people_file in people_files:
        people_file.check_all_used()
    return requests


def show_warning(message, *_, **__):
    """Warnings as 'warning: ...' lines, written around a progress bar being drawn (not glued
    to the end of its line)."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def progress(iterable, total, description, enabled):
    from tqdm import tqdm

    return tqdm(iterable, total=total or None, desc=description, unit="frame",
                disable=not enabled, dynamic_ncols=True)


def request_for(args, source, key, image, checked, boxes_file, keypoints_file, fmt):
    """The FrameRequest of a decoded frame: the one checked before, else (a video frame the
    files do not name, or no files) built now."""
    request = checked.get(key)
    if request is None:
        if boxes_file is not None or keypoints_file is not None:
            request = frame_request(args, source, key, image.shape[1::-1], boxes_file,
                                    keypoints_file, fmt)
        else:
            request = checked_request(image.shape[1], image.shape[0], kpt_thr=args.kpt_thr)
    else:
        for people_file in (boxes_file, keypoints_file):
            if people_file is not None:
                people_file.used.add(str(key) if not people_file.single else None)
    request.image = image
    return request


def predict_all(predictor, args, source, checked, boxes_file, keypoints_file, fmt):
    """[(key, width, height, [Person])] for every frame, people batched across frames."""
    records, pending = [], []

    def flush():
        results = predictor.predict_frames([request for _, request in pending])
        for (key, request), people in zip(pending, results):
            records.append((key, request.image.shape[1], request.image.shape[0], people))
        pending.clear()

    total = len(source.names) or source.frame_count
    for key, image in progress(iter_frames(source), total, "3D poses", source.kind != "image"):
        request = request_for(args, source, key, image, checked, boxes_file, keypoints_file, fmt)
        pending.append((key, request))
        if sum(len(r.boxes) if r.boxes is not None else 1 for _, r in pending) >= args.batch_size:
            flush()
    if pending:
        flush()
    for people_file in (boxes_file, keypoints_file):
        if people_file is not None:
            people_file.check_all_used()
    for key, _, _, people in records:
        for number, person in enumerate(people):
            if not np.isfinite(person.joints_3d_raw).all():
                raise MetaPoseError(f"the model produced non-finite 3D joints (NaN or Inf) for "
                                    f"frame {key!r}, person {number}: the checkpoint is damaged "
                                    "or diverged. Nothing was written.")
    return records


def frame_time(source, key):
    """Seconds from the start of a video (frame index / fps); None for images."""
    return round(key / source.fps, 6) if source.kind == "video" else None


def render(records, source, out, show_progress, ground):
    """A PNG per image or one MP4, drawn from the (possibly smoothed) records; returns the
    video's codec (None for images)."""
    import cv2

    from inference.pictures import FootageRenderer
    from inference.video_out import VideoOut

    renderer = FootageRenderer(max((len(people) for *_, people in records), default=1), ground)
    video = VideoOut(out.path(output_name(source, None)), source.fps) \
        if source.kind == "video" else None
    try:
        for (key, image), (_, _, _, people) in progress(zip(iter_frames(source), records),
                                                        len(records), "pictures", show_progress):
            drawn = [{"box": p.box, "joints_2d": p.joints_2d, "joints_3d": p.joints_3d,
                      "missing": p.joints_2d_missing,
                      "label": f"#{p.track_id}" if p.track_id is not None else str(number)}
                     for number, p in enumerate(people)]
            title = f"frame {key}  {frame_time(source, key):.2f} s" if video else str(key)
            picture = renderer.render(image, drawn, title)
            if video is not None:
                video.write(picture)
                continue
            ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            path = out.path(output_name(source, key, out.names))
            try:
                with open(path, "wb") as handle:
                    handle.write(data.tobytes())
            except OSError as error:
                reason = error.strerror or error
                raise MetaPoseError(f"cannot write '{shown_path(path)}' ({reason}); free space "
                                    "or pass another --out.") from None
    except BaseException:
        if video is not None:
            video.abort()
        raise
    if video is not None:
        video.close()
        if video.frames != len(records):
            raise MetaPoseError(f"video '{shown_path(source.path)}' gave {len(records)} frames "
                                f"the first time and {video.frames} the second; it is damaged or "
                                "changing.")
        return video.codec
    return None


def predictions_text(records, source, raw_3d):
    """predictions.json: a header, then one frame record per line."""
    header = {"format": PREDICTIONS_FORMAT, "input": os.path.basename(source.path.rstrip("/")),
              "kind": source.kind, "fps": round(source.fps, 6) if source.kind == "video" else None,
              "joint_names": list(JOINT_NAMES),
              "joints_3d": "metres, camera axes (x right, y down, z forward), root-relative "
                           "(joint 0 at 0, 0, 0)"}
    frames = [json.dumps({"frame": key, "time": frame_time(source, key), "width": int(w),
                          "height": int(h),
                          "people": [person.to_json(raw_3d) for person in people]},
                         allow_nan=False)
              for key, w, h, people in records]
    return (json.dumps(header)[:-1] + ', "frames": [\n' + ",\n".join(frames) + "\n]}\n")


def check_model_inputs(args, checkpoint_file, keypoints_file):
    """What the model needs from the user, checked before it is built: the action of a
    joint_action model, and a heatmap head when no 2D joints are given."""
    from inference.loading import plan_keypoint_head, resolve_action

    config = checkpoint_file.config
    if config.model.text_encoder.mode != "joint":  # a joint model warns about --action later
        resolve_action(args.action, config.model.text_encoder.mode)
    if keypoints_file is None:
        plan = plan_keypoint_head(config, args.hrnet)
        if not plan.available:
            raise MetaPoseError(
                "no 2D joints were given and this model has no HRNet heatmap head to estimate "
                f"them: {plan.reason}. Give the joints with --keypoints (COCO-17 or H36M-17 "
                "pixels from any 2D detector), or the official COCO pose_hrnet file with --hrnet.")
    elif args.hrnet is not None:
        require_file(args.hrnet, "HRNet file (--hrnet)")
    if args.detector and args.detector_weights not in ("default", "random"):
        require_file(args.detector_weights, "detector weights file (--detector-weights)",
                     "Pass a state-dict file of the detector, 'default' or 'random'.")


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    warnings.showwarning = show_warning
    source = open_input(args.input)
    check_output_folder(args.out, source)
    boxes_file = PeopleFile(args.boxes, "--boxes") if args.boxes else None
    keypoints_file = PeopleFile(args.keypoints, "--keypoints") if args.keypoints else None
    fmt = keypoint_format(keypoints_file, args.keypoint_format) if keypoints_file else None
    if args.smooth and source.kind != "video":
        kind = "a folder" if source.kind == "folder" else "an image"
        raise MetaPoseError(f"--smooth filters a video's frames over time; the input "
                            f"'{shown_path(args.input)}' is {kind}.")
    checked = check_user_files(args, source, boxes_file, keypoints_file, fmt)

    from inference.loading import build_trained_model, read_trained_checkpoint
    from inference.output_folder import OutputFolder
    from utils.cli import resolve_device

    resolve_device(args.device)
    checkpoint_file = read_trained_checkpoint(args.checkpoint, args.config, args.overrides)
    check_model_inputs(args, checkpoint_file, keypoints_file)
    with OutputFolder(args.out) as out:
        from inference.boxes import PersonDetector
        from inference.predictor import Predictor
        from inference.smoothing import smooth_people, with_track_ids

        predictor = Predictor(build_trained_model(checkpoint_file, args.device, args.hrnet),
                              action=args.action, flip_test=args.flip_test,
                              batch_size=args.batch_size, box_padding=args.box_padding,
                              kpt_thr=args.kpt_thr)
        if args.detector:
            predictor.detector = PersonDetector(args.detector, args.detector_weights,
                                                args.detector_threshold, device=predictor.device)
        records = predict_all(predictor, args, source, checked, boxes_file, keypoints_file, fmt)
        if source.kind == "video":
            people = [people for *_, people in records]
            people = smooth_people(people, args.smooth) if args.smooth else with_track_ids(people)
            records = [(key, w, h, p) for (key, w, h, _), p in zip(records, people)]
        codec = None
        if not args.no_render:
            codec = render(records, source, out, source.kind != "image", not args.no_ground)
        out.commit(predictions_text(records, source, args.raw_3d))
    count = sum(len(record[3]) for record in records)
    tracks = len({p.track_id for *_, people in records for p in people} - {None})
    pictures = f"1 MP4 ({codec})" if codec else f"{len(records)} PNG"
    tracked = f", {tracks} track{'' if tracks == 1 else 's'}" if source.kind == "video" else ""
    print(f"wrote {os.path.join(args.out, 'predictions.json')} ({len(records)} frames, "
          f"{count} people{tracked})" + ("" if args.no_render else f" and {pictures}"))
    if out.stale:
        print(f"removed what an interrupted run had left in {args.out}: {', '.join(out.stale)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
