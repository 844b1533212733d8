"""H36M camera geometry: projection with optional distortion, person box, screen coordinates.

Conventions (docs/method.md §1.1):
    * camera coordinates: x right, y down, z forward (into the scene); H36M stores millimetres,
      the label pickles store `joints_3d` in metres. A world point X maps to the camera frame as
      R @ (X - T), with T the camera centre in world millimetres (the H36M-Toolbox convention).
    * pixels: integer coordinates are pixel centres, a W-wide frame spans [-0.5, W - 0.5].
    * normalised screen coordinates: u = x / w * 2 - 1, v = y / w * 2 - h / w (w, h: frame size).
    * crop pixels: the 192 x 256 crop of `crop_affine` (shared with the loader, datasets/images.py).
"""

import numpy as np

from datasets.images import crop_affine, crop_from_full_frame, full_frame_to_crop

__all__ = [
    "H36M_FRAME_SIZES", "BOX_HALF_WIDTH_MM", "BOX_TOP_MM", "BOX_BOTTOM_MM",
    "world_to_camera", "project", "box_from_root", "pixels_to_screen", "screen_to_pixels",
    "crop_affine", "full_frame_to_crop", "crop_from_full_frame", "apply_affine",
]

# (width, height) of each H36M camera's video, camera index 0..3 (54138969, 55011271,
# 58860488, 60457274); two cameras film 1000 x 1002, two 1000 x 1000.
H36M_FRAME_SIZES = {0: (1000, 1002), 1: (1000, 1000), 2: (1000, 1000), 3: (1000, 1002)}

# The person box of docs/method.md §1.1: a 2000 x 2000 mm square in the root joint's depth plane,
# root x +- 1000 mm and root y from -900 mm (above the root; y points down) to +1100 mm.
BOX_HALF_WIDTH_MM = 1000.0
BOX_TOP_MM = -900.0
BOX_BOTTOM_MM = 1100.0


def world_to_camera(points_world, R, T):
    """(..., 3) world points -> (..., 3) camera coordinates R @ (X - T) (same unit as T)."""
    points_world = np.asarray(points_world, dtype=np.float64)
    return (points_world - np.reshape(T, 3)) @ np.asarray(R, dtype=np.float64).T


def project(points_cam, fx, fy, cx, cy, k=None, p=None):
    """Projects camera-frame points to full-frame pixels.

    Args:
        points_cam: (..., 3) camera coordinates (any unit; z > 0 in front of the camera).
        fx, fy, cx, cy: pinhole intrinsics in pixels.
        k: radial distortion (k1, k2, k3) or None; p: tangential distortion (p1, p2) or None.
            With both None (or zero) this is the pinhole model x = X / Z * fx + cx. Otherwise the
            H36M model on the normalised point (a, b) = (X / Z, Y / Z), r2 = a^2 + b^2:
            radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3, tangential = p1 b + p2 a,
            (a, b) <- (a, b) * (radial + tangential) + (p2, p1) * r2.
    Returns:
        (..., 2) float64 pixel coordinates (x, y), pixel centres at integers.
    """
    points_cam = np.asarray(points_cam, dtype=np.float64)
    normalised = points_cam[..., :2] / points_cam[..., 2:3]
    if k is not None or p is not None:
        k = np.zeros(3) if k is None else np.reshape(np.asarray(k, dtype=np.float64), 3)
        p = np.zeros(2) if p is None else np.reshape(np.asarray(p, dtype=np.float64), 2)
        r2 = np.sum(normalised ** 2, axis=-1, keepdims=True)
        radial = 1.0 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
        tangential = p[0] * normalised[..., 1:2] + p[1] * normalised[..., 0:1]
        normalised = normalised * (radial + tangential) + np.array([p[1], p[0]]) * r2
    return normalised * np.array([fx, fy], dtype=np.float64) + np.array([cx, cy], dtype=np.float64)


def box_from_root(root_cam_mm, fx, fy, cx, cy):
    """The person box of docs/method.md §1.1 from the root (pelvis) joint, pinhole projection.

    Args:
        root_cam_mm: (..., 3) root joint(s) in camera coordinates, millimetres.
        fx, fy, cx, cy: intrinsics in pixels.
    Returns:
        center (..., 2) (x, y) pixels, scale (..., 2) (box width / 200, box height / 200),
        box (..., 4) (x1, y1, x2, y2) pixels; all float64.
    """
    root = np.asarray(root_cam_mm, dtype=np.float64)
    x, y, z = root[..., 0], root[..., 1], root[..., 2]
    x1 = (x - BOX_HALF_WIDTH_MM) / z * fx + cx
    x2 = (x + BOX_HALF_WIDTH_MM) / z * fx + cx
    y1 = (y + BOX_TOP_MM) / z * fy + cy
    y2 = (y + BOX_BOTTOM_MM) / z * fy + cy
    box = np.stack([x1, y1, x2, y2], axis=-1)
    center = np.stack([(x1 + x2) / 2.0, (y1 + y2) / 2.0], axis=-1)
    scale = np.stack([(x2 - x1) / 200.0, (y2 - y1) / 200.0], axis=-1)
    return center, scale, box


def pixels_to_screen(points_px, width, height):
    """(..., 2) full-frame pixels -> normalised screen coordinates (u, v), both divided by w."""
    points_px = np.asarray(points_px, dtype=np.float64)
    u = points_px[..., 0] / width * 2.0 - 1.0
    v = points_px[..., 1] / width * 2.0 - height / width
    return np.stack([u, v], axis=-1)


def screen_to_pixels(points_screen, width, height):
    """Inverse of `pixels_to_screen`: (..., 2) (u, v) -> full-frame pixels (x, y)."""
    points_screen = np.asarray(points_screen, dtype=np.float64)
    x = (points_screen[..., 0] + 1.0) * width / 2.0
    y = (points_screen[..., 1] + height / width) * width / 2.0
    return np.stack([x, y], axis=-1)


def apply_affine(points, matrix):
    """(..., 2) points through a (2, 3) affine matrix: matrix @ (x, y, 1)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]
