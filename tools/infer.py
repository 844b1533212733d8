"""3D poses of the people in an image, a folder of images or a video, with a trained MetaPose.

Usage:
    python tools/infer.py --checkpoint FILE --input PATH --out DIR [--config FILE]
        [--keypoints JSON [--keypoint-format coco|h36m]] [--boxes JSON] [--box-padding F]
        [--detector NAME [--detector-weights default|random|FILE] [--detector-threshold T]]
        [--hrnet FILE] [--action NAME|all] [--device cpu|cuda|cuda:N] [--flip-test]
        [--smooth SIGMA] [--batch-size N] [--no-render] [KEY=VALUE ...]

Writes DIR/predictions.json: a list with one record per input frame,
    {"frame": file name (images) or 0-based index (videos), "width": W, "height": H,
     "people": [{"box": [x1, y1, x2, y2], "score": box confidence or null,
                 "joints_2d": 17 x [x, y], "joints_2d_scores": 17 confidences or null,
                 "joints_2d_source": "user" | "hrnet",
                 "joints_3d": 17 x [X, Y, Z]}]}
joints in H36M order; joints_2d and box in pixels of the input frame; joints_3d in metres,
camera axes (x right, y down, z forward), relative to the root as the model predicts it. Also
DIR/<name>_3d.png per image (the frame with its 2D skeletons beside the 3D ones) or
DIR/<video>_3d.mp4 for a video. Without --keypoints the 2D joints come from the HRNet's COCO
heatmap head; without --boxes, --keypoints and --detector each frame is one person's box. All
outputs appear together at the end: a failure leaves DIR as it was.
"""

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference.boxes import DEFAULT_BOX_PADDING, DETECTORS  # noqa: E402
from inference.media import OutputStage, VideoOut, iter_frames, open_input  # noqa: E402
from inference.smoothing import smooth_people  # noqa: E402
from inference.user_files import (PeopleFile, box_entries, keypoint_entries,  # noqa: E402
                                  keypoint_format)
from utils.atomic_files import name_output_flag  # noqa: E402
from utils.cli import (add_device_argument, add_overrides_argument, positive_int,  # noqa: E402
                       run_cli)
from utils.errors import MetaPoseError  # noqa: E402


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
    parser.add_argument("--boxes", help="JSON of person boxes [x1, y1, x2, y2] per frame (pixels)")
    parser.add_argument("--box-padding", type=float, default=DEFAULT_BOX_PADDING,
                        help="enlarge given/detected boxes by this factor after fitting the "
                             f"crop's 3:4 aspect (default {DEFAULT_BOX_PADDING}: a tight box "
                             "then frames a person like the H36M root box; 1 = the box itself)")
    parser.add_argument("--detector", choices=DETECTORS,
                        help="find people with torchvision's COCO detector")
    parser.add_argument("--detector-weights", default="default",
                        help="'default' (torchvision's, downloaded on first use), a state-dict "
                             "file, or 'random' (tests)")
    parser.add_argument("--detector-threshold", type=float, default=0.5,
                        help="minimum person score (default 0.5)")
    parser.add_argument("--hrnet", help="official COCO pose_hrnet file whose heatmap head gives "
                                        "the 2D joints (default: the config's pretrained file)")
    parser.add_argument("--action", help="joint_action models: an H36M action (e.g. Walking) or "
                                         "'all' (mean of the 15 actions' text features)")
    add_device_argument(parser)
    parser.add_argument("--flip-test", action="store_true",
                        help="average with the mirrored prediction, as the evaluation does")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="SIGMA",
                        help="videos: centred Gaussian filter of SIGMA frames over each "
                             "person's track (0 = off)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="people per pass")
    parser.add_argument("--no-render", action="store_true", help="write predictions.json only")
    add_overrides_argument(parser)
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.boxes and args.detector:
        parser.error("--boxes and --detector exclude each other")
    if not args.box_padding > 0:
        parser.error(f"--box-padding must be positive, got {args.box_padding}")
    if args.smooth < 0:
        parser.error(f"--smooth must be >= 0, got {args.smooth}")
    return args


def output_name(source, key, taken=()):
    """<stem>_3d.png per image (<name>_3d.png when two images share a stem), <video>_3d.mp4."""
    name = os.path.basename(source.path if source.kind == "video" else key)
    stem = os.path.splitext(name)[0]
    if f"{stem}_3d.png" in taken:
        stem = name
    return f"{stem}_3d.{'mp4' if source.kind == 'video' else 'png'}"


def frame_request(predictor, args, source, key, image, boxes_file, keypoints_file, fmt):
    """The validated FrameRequest of one frame from the user's files."""
    single = source.kind == "image"
    names = [f"--{flag} '{f.path}'" for flag, f in (("boxes", boxes_file),
                                                     ("keypoints", keypoints_file)) if f]
    where = f"frame {key!r}" + (f" of {' / '.join(names)}" if names else "")
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
    return predictor.request(image, boxes=boxes, keypoints=keypoints, keypoint_format=fmt or
                             "h36m", box_scores=scores, where=where)


def progress(iterable, total, description, enabled):
    from tqdm import tqdm

    return tqdm(iterable, total=total or None, desc=description, unit="frame",
                disable=not enabled, dynamic_ncols=True)


def predict_all(predictor, args, source, boxes_file, keypoints_file, fmt):
    """[(key, width, height, [Person])] for every frame, people batched across frames."""
    records, pending = [], []

    def flush():
        results = predictor.predict_frames([request for _, request in pending])
        for (key, request), people in zip(pending, results):
            records.append((key, request.image.shape[1], request.image.shape[0], people))
        pending.clear()

    total = len(source.names) or source.frame_count
    for key, image in progress(iter_frames(source), total, "3D poses", source.kind != "image"):
        pending.append((key, frame_request(predictor, args, source, key, image, boxes_file,
                                           keypoints_file, fmt)))
        if sum(len(r.boxes) if r.boxes is not None else 1 for _, r in pending) >= args.batch_size:
            flush()
    if pending:
        flush()
    for people_file in (boxes_file, keypoints_file):
        if people_file is not None:
            people_file.check_all_used()
    return records


def render(records, source, stage, show_progress):
    """PNG per image or one MP4, drawn from the (possibly smoothed) records."""
    from utils.visualization import draw_frame, figure_to_array

    video = VideoOut(stage.path(output_name(source, None)), source.fps) \
        if source.kind == "video" else None
    try:
        for (key, image), (_, _, _, people) in progress(zip(iter_frames(source), records),
                                                        len(records), "figures", show_progress):
            figure = draw_frame(image, [p.joints_2d for p in people],
                                [p.joints_3d for p in people], title=str(key))
            if video is not None:
                video.write(figure_to_array(figure))
            else:
                name = output_name(source, key, stage.names)
                figure.savefig(stage.path(name), dpi=100, format="png")
    finally:
        if video is not None:
            video.close()
    if video is not None and video.frames != len(records):
        raise MetaPoseError(f"video '{source.path}' gave {len(records)} frames the first time "
                            f"and {video.frames} the second; it is damaged or changing.")


def main(argv=None):
    args = parse_args(argv)
    name_output_flag("--out", args.out)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    source = open_input(args.input)
    boxes_file = PeopleFile(args.boxes, "--boxes") if args.boxes else None
    keypoints_file = PeopleFile(args.keypoints, "--keypoints") if args.keypoints else None
    fmt = keypoint_format(keypoints_file, args.keypoint_format) if keypoints_file else None
    if args.smooth and source.kind != "video":
        kind = "a folder" if source.kind == "folder" else "an image"
        raise MetaPoseError(f"--smooth filters a video's frames over time; the input "
                            f"'{args.input}' is {kind}.")

    from inference.boxes import PersonDetector
    from inference.loading import resolve_action
    from inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(
        args.checkpoint, config=args.config, overrides=args.overrides, device=args.device,
        hrnet=args.hrnet, action=args.action, flip_test=args.flip_test,
        batch_size=args.batch_size, box_padding=args.box_padding)
    if predictor.default_action is None:  # a joint_action model without --action: say so now
        resolve_action(None, predictor.text_mode)
    if args.detector:
        predictor.detector = PersonDetector(args.detector, args.detector_weights,
                                            args.detector_threshold, device=predictor.device)
    with OutputStage(args.out) as stage:
        records = predict_all(predictor, args, source, boxes_file, keypoints_file, fmt)
        if args.smooth:
            smoothed = smooth_people([people for *_, people in records], args.smooth)
            records = [(key, w, h, people) for (key, w, h, _), people in zip(records, smoothed)]
        if not args.no_render:
            render(records, source, stage, source.kind != "image")
        payload = [{"frame": key, "width": int(w), "height": int(h),
                    "people": [person.to_json() for person in people]}
                   for key, w, h, people in records]
        stage.commit("[\n" + ",\n".join(json.dumps(record) for record in payload) + "\n]\n")
    people = sum(len(record[3]) for record in records)
    pictures = "1 MP4" if source.kind == "video" else f"{len(records)} PNG"
    print(f"wrote {os.path.join(args.out, 'predictions.json')} ({len(records)} frames, "
          f"{people} people)" + ("" if args.no_render else f" and {pictures}"))
    return 0


if __name__ == "__main__":
    run_cli(main)
