"""The input of tools/infer.py: an image, a folder of images or a video, checked by what it is
(a regular file or folder, a video whose header-declared frame size is within the limit) before
anything is decoded; and its frames, one at a time."""

import os
import warnings
from dataclasses import dataclass, field
from typing import List

import cv2
import numpy as np

from datasets.images import read_image
from utils.errors import MetaPoseError
from utils.input_files import file_problem, shown_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 25.0
# Largest video frame decoded: 8K UHD (7680 x 4320, 33 megapixels, 100 MB per RGB frame). The
# size the video's header declares is checked before any frame is decoded.
MAX_VIDEO_FRAME_PIXELS = 7680 * 4320
MAX_VIDEO_SIDE = 16384
_REMEDY = "Pass an image, a folder of images or a video with --input."


@dataclass
class InputSource:
    """What --input names. kind: "image", "folder" or "video"; names: the images' file names
    (relative to the folder) for images and folders; fps, frame_count (an estimate from the
    container) and size (width, height) from the header for videos."""

    path: str
    kind: str
    names: List[str] = field(default_factory=list)
    fps: float = DEFAULT_FPS
    frame_count: int = 0
    size: tuple = None

    @property
    def folder(self):
        """The folder that holds the input's images (or the video)."""
        return self.path if self.kind == "folder" else os.path.dirname(self.path) or "."


def _open_video(path):
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise MetaPoseError(f"video '{shown_path(path)}' cannot be opened (OpenCV found no "
                            "decoder for it, or it is damaged). Convert it to an H.264 MP4, or "
                            "extract its frames into a folder and pass that.")
    return capture


def _video_header(path, capture):
    """(width, height, fps, frame count) as the container declares them, checked against the
    frame size limit before any frame is decoded."""
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    if width < 1 or height < 1:
        raise MetaPoseError(f"video '{shown_path(path)}' declares no frame size ({width}x"
                            f"{height}); it is damaged or not a video. Re-encode it, or pass its "
                            "frames as a folder.")
    if width * height > MAX_VIDEO_FRAME_PIXELS or max(width, height) > MAX_VIDEO_SIDE:
        raise MetaPoseError(
            f"video '{shown_path(path)}' declares {width}x{height} frames ({width * height:,} "
            f"pixels), more than the {MAX_VIDEO_FRAME_PIXELS:,} (8K UHD, at most "
            f"{MAX_VIDEO_SIDE} on a side) that inference decodes. Scale it down first (e.g. "
            "ffmpeg -i in.mp4 -vf scale=1920:-2 out.mp4).")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(fps) if fps and np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
    return width, height, fps, max(count, 0)


def _folder_images(path):
    """The image file names of a folder, sorted; anything with an image extension that is not a
    regular file (a FIFO, a device, a folder, a dangling link) is an error, not skipped."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as error:
        raise MetaPoseError(f"input folder '{shown_path(path)}' cannot be listed "
                            f"({error.strerror or error}).") from None
    names = []
    for name in entries:
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        problem = file_problem(os.path.join(path, name))
        if problem is not None:
            raise MetaPoseError(f"input folder '{shown_path(path)}' holds '{name}', which "
                                f"{problem}; every file with an image extension is read as a "
                                "frame. Move it out of the folder (or rename it), and run again.")
        names.append(name)
    if not names:
        raise MetaPoseError(f"input folder '{shown_path(path)}' holds no images (files ending "
                            f"in {', '.join(IMAGE_EXTENSIONS)}).")
    return names


def open_input(path):
    """The InputSource of `path`, checked: a folder holds only regular image files; a video is
    a regular file whose declared frame size is within the limit and whose first frame decodes;
    an image decodes.

    Raises:
        MetaPoseError naming the path when it is missing, not a regular file or folder (a FIFO,
        a device, a loop of links), empty, or not an image / a video.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return InputSource(path, "folder", _folder_images(path))
    problem = file_problem(path)
    if problem is not None:
        raise MetaPoseError(f"input '{shown_path(path)}' {problem}. {_REMEDY}")
    if path.lower().endswith(VIDEO_EXTENSIONS):
        capture = _open_video(path)
        try:
            width, height, fps, count = _video_header(path, capture)
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok:
            raise MetaPoseError(f"video '{shown_path(path)}' opens but no frame can be decoded "
                                "from it (empty or damaged). Re-encode it, or pass its frames as "
                                "a folder.")
        if frame.shape[:2] != (height, width):
            raise MetaPoseError(f"video '{shown_path(path)}' declares {width}x{height} frames "
                                f"but its first frame is {frame.shape[1]}x{frame.shape[0]}: it "
                                "is damaged. Re-encode it.")
        return InputSource(path, "video", fps=fps, frame_count=count, size=(width, height))
    try:
        read_image(path)
    except MetaPoseError as error:
        if path.lower().endswith(IMAGE_EXTENSIONS):  # an image by its name: its own problem
            raise MetaPoseError(f"input {str(error).split('. ')[0]}. {_REMEDY}") from None
        raise MetaPoseError(f"input '{shown_path(path)}' is neither a readable image nor a video "
                            f"(by its extension: {', '.join(VIDEO_EXTENSIONS)}): "
                            f"{str(error).split('. ')[0]}.") from None
    return InputSource(path, "image", [os.path.basename(path)])


def image_size(path):
    """(width, height) of an image file as its header declares it, without decoding the
    pixels (PIL reads headers lazily); a full decode where PIL does not know the format."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's large-image warning: read_image decides
            with Image.open(path) as image:
                return image.size
    except Exception:  # noqa: BLE001 (any header PIL cannot read: decode the file instead)
        image = read_image(path)
        return image.shape[1], image.shape[0]


def frame_sizes(source):
    """{frame key: (width, height)} of every frame known before decoding: each image of an
    image or folder input; for a video the header's size under the key None (all frames)."""
    if source.kind == "video":
        return {None: source.size}
    return {name: image_size(os.path.join(source.folder, name)) for name in source.names}


def iter_frames(source):
    """Yields (frame key, (H, W, 3) uint8 RGB): the file name for images, the 0-based frame
    index for videos (each frame checked against the header's size)."""
    if source.kind == "video":
        capture = _open_video(source.path)
        try:
            index = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if source.size is not None and frame.shape[1::-1] != tuple(source.size):
                    raise MetaPoseError(
                        f"video '{shown_path(source.path)}': frame {index} is "
                        f"{frame.shape[1]}x{frame.shape[0]}, not the {source.size[0]}x"
                        f"{source.size[1]} its header declares. Re-encode it.")
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()
        return
    for name in source.names:
        try:
            image = read_image(os.path.join(source.folder, name))
        except MetaPoseError as error:  # drop the training-data hint of read_image
            raise MetaPoseError(f"{str(error).split('. ')[0]}. Replace or remove it, and run "
                                "again (nothing was written).") from None
        yield name, image
