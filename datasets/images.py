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
        MetaPoseError naming the file when it is missing or cannot be decoded.
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise MetaPoseError(
                f"image '{path}' does not exist. Check data.root and data.image_dir, or set "
                "data.skip_bad_images=true to drop frames whose image is missing.")
        raise MetaPoseError(
            f"image '{path}' cannot be decoded (corrupt or not an image). Replace it, or set "
            "data.skip_bad_images=true to drop such frames.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
