"""JPEG reading and the person crop of DESIGN 1.1: full frame -> 192x256 crop pixels.

Pixel convention everywhere (full frames and crops): integer coordinates are pixel centres, so
pixel (0, 0) covers [-0.5, 0.5]^2 and a W-wide image spans [-0.5, W - 0.5]. The crop maps the
box `center` to the centre of the crop, ((192 - 1) / 2, (256 - 1) / 2), and `scale[0] * 200`
full-frame pixels onto the 192 crop pixels; mirroring the crop is exactly x -> 191 - x.
"""

import os

import cv2
import numpy as np

from utils.errors import MetaPoseError
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

# OpenCV's own thread pool only oversubscribes the CPUs when DataLoader workers decode in
# parallel; one thread per worker is fastest.
cv2.setNumThreads(1)


def read_image(path):
    """(H, W, 3) uint8 RGB pixels of the JPEG (or PNG) at `path`.

    Raises:
        MetaPoseError naming the file when it is missing, unreadable, a truncated JPEG or cannot
        be decoded. (The bytes are read here and decoded from memory, so that OpenCV and libjpeg
        print nothing to stderr for such files.)
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        if not os.path.exists(path):
            raise MetaPoseError(
                f"image '{path}' does not exist. Check data.root and data.image_dir, or set "
                "data.skip_bad_images=true to drop frames whose image is missing.") from None
        raise MetaPoseError(f"image '{path}' cannot be read ({error.strerror or error}). Check "
                            "the file, or set data.skip_bad_images=true to drop such frames.") \
            from None
    if _truncated_jpeg(data):
        raise MetaPoseError(
            f"image '{path}' is a truncated JPEG: its {data.size} bytes end before the JPEG end "
            "marker (an interrupted copy or extraction?). Replace it, or set "
            "data.skip_bad_images=true to drop such frames.")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        reason = "an empty file" if not data.size else "corrupt or not an image"
        raise MetaPoseError(
            f"image '{path}' cannot be decoded ({reason}). Replace it, or set "
            "data.skip_bad_images=true to drop such frames.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _truncated_jpeg(data):
    """Whether `data` (uint8 file bytes) starts like a JPEG but has no end-of-image marker
    (FF D9) in its last kilobyte. Entropy-coded JPEG data never holds FF D9, so a cut file lacks
    it; writers that pad after the marker (zeros, newlines) still pass."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    return data[-1024:].tobytes().rfind(b"\xff\xd9") < 0


def crop_affine(center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """(2, 3) float64 affine matrix from full-frame pixels to crop pixels (no rotation).

    Args:
        center: (x, y) box centre in full-frame pixels.
        scale: (w/200, h/200) box size; only the width sets the zoom (aspect preserved).
        out_w, out_h: crop size in pixels (192 x 256).
    Returns:
        M with crop = M @ (x, y, 1): `center` -> ((out_w-1)/2, (out_h-1)/2) and a zoom of
        out_w / (scale[0] * 200) crop pixels per full-frame pixel.
    """
    zoom = out_w / (float(scale[0]) * 200.0)
    return np.array([
        [zoom, 0.0, (out_w - 1) / 2.0 - zoom * float(center[0])],
        [0.0, zoom, (out_h - 1) / 2.0 - zoom * float(center[1])],
    ])


def full_frame_to_crop(points, center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """(..., 2) full-frame pixels -> crop pixels with the same map as `crop_from_full_frame`."""
    matrix = crop_affine(center, scale, out_w, out_h)
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_from_full_frame(image, center, scale, out_w=CROP_WIDTH, out_h=CROP_HEIGHT):
    """The (out_h, out_w, C) person crop of a full frame, bilinear, black outside the frame.

    Args:
        image: (H, W, C) uint8 full frame.
        center, scale: the label's box (see `crop_affine`).
    """
    matrix = crop_affine(center, scale, out_w, out_h)
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def resize_image(image, size_hw):
    """Resizes (H, W, C) to `size_hw` = (height, width): area averaging when shrinking."""
    height, width = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
