"""Inputs and outputs of tools/infer.py: an image, a folder of images or a video in; PNG figures,
an MP4 and predictions.json out, staged so that a failure leaves nothing half-written."""

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from typing import List

import cv2
import numpy as np

from datasets.images import read_image
from utils.atomic_files import atomic_write_text, fsync_folder, make_temporary_folder
from utils.errors import MetaPoseError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 25.0


@dataclass
class InputSource:
    """What --input names. kind: "image", "folder" or "video"; names: the images' file names
    (relative to the folder) for images and folders; fps and frame_count (an estimate from the
    container) for videos."""

    path: str
    kind: str
    names: List[str] = field(default_factory=list)
    fps: float = DEFAULT_FPS
    frame_count: int = 0


def _open_video(path):
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise MetaPoseError(f"video '{path}' cannot be opened (OpenCV found no decoder for it, "
                            "or it is damaged). Convert it to an H.264 MP4, or extract its "
                            "frames into a folder and pass that.")
    return capture


def open_input(path):
    """The InputSource of `path`, checked: it exists; a folder holds images; a video opens and
    has a first frame; an image decodes.

    Raises:
        MetaPoseError naming the path when it is missing, empty or not an image / a video.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MetaPoseError(f"input '{path}' does not exist; pass an image, a folder of images "
                            "or a video with --input.")
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(path, name)))
        if not names:
            raise MetaPoseError(f"input folder '{path}' holds no images (files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}).")
        return InputSource(path, "folder", names)
    if path.lower().endswith(VIDEO_EXTENSIONS):
        capture = _open_video(path)
        try:
            ok, _ = capture.read()
            fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            capture.release()
        if not ok:
            raise MetaPoseError(f"video '{path}' opens but no frame can be decoded from it (empty "
                                "or damaged). Re-encode it, or pass its frames as a folder.")
        return InputSource(path, "video", fps=fps if fps and np.isfinite(fps) and fps > 0
                           else DEFAULT_FPS, frame_count=max(count, 0))
    try:
        read_image(path)
    except MetaPoseError as error:
        raise MetaPoseError(f"input '{path}' is neither a readable image nor a video (by its "
                            f"extension: {', '.join(VIDEO_EXTENSIONS)}): "
                            f"{str(error).split('. ')[0]}.") from None
    return InputSource(path, "image", [os.path.basename(path)])


def iter_frames(source):
    """Yields (frame key, (H, W, 3) uint8 RGB): the file name for images, the 0-based frame
    index for videos."""
    if source.kind == "video":
        capture = _open_video(source.path)
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()
        return
    folder = source.path if source.kind == "folder" else os.path.dirname(source.path)
    for name in source.names:
        try:
            image = read_image(os.path.join(folder, name))
        except MetaPoseError as error:  # drop the training-data hint of read_image
            raise MetaPoseError(f"{str(error).split('. ')[0]}. Replace or remove it, and run "
                                "again (nothing was written).") from None
        yield name, image


class OutputStage:
    """Output files collected in a hidden folder inside `out_dir` and moved into place only by
    `commit` (predictions.json last, atomically); leaving the `with` block with an exception
    removes them all, so a failed run adds nothing to `out_dir`."""

    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            self.folder = make_temporary_folder(self.out_dir, ".infer-")
        except OSError as error:
            raise MetaPoseError(f"cannot write into the output folder '{self.out_dir}' "
                                f"({error.strerror or error}); pass a writable --out.") from None
        self.names = []

    def path(self, name):
        """Where to write the output file `name` (a plain file name) until commit."""
        self.names.append(name)
        return os.path.join(self.folder, name)

    def commit(self, predictions_text):
        for name in self.names:
            if os.path.exists(os.path.join(self.folder, name)):
                os.replace(os.path.join(self.folder, name), os.path.join(self.out_dir, name))
        atomic_write_text(os.path.join(self.out_dir, "predictions.json"), predictions_text)
        fsync_folder(self.out_dir)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False


class VideoOut:
    """An MP4 (mp4v) of RGB frames, opened on the first frame (its size fixes the video's)."""

    def __init__(self, path, fps):
        self.path, self.fps, self.writer, self.size, self.frames = path, float(fps), None, None, 0

    def write(self, frame_rgb):
        height, width = frame_rgb.shape[:2]
        if self.writer is None:
            self.size = (width, height)
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          self.size)
            if not self.writer.isOpened():
                raise MetaPoseError(f"OpenCV cannot write the MP4 video '{self.path}' (no mp4v "
                                    "encoder in this OpenCV build?); use --no-render to write "
                                    "predictions.json alone.")
        if (width, height) != self.size:
            frame_rgb = cv2.resize(frame_rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self):
        if self.writer is not None:
            with contextlib.suppress(cv2.error):
                self.writer.release()
            self.writer = None
