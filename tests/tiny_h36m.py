"""Tiny H36M-format labels and images for the data tests (independent of datasets/synthetic.py).

Images are rendered from an analytic pattern of full-frame coordinates, so a crop can be rendered
directly (evaluating the pattern at the pre-image of each crop pixel) without the loader's crop
function: comparing the two checks the crop geometry and its pixel convention.
"""

import os
import pickle

import cv2
import numpy as np

FRAME_W, FRAME_H = 320, 300  # small full frames (not the crop's 4:3 portrait shape)
FX = FY = 370.0
CX, CY = 161.0, 148.5
CROP_W, CROP_H = 192, 256


def project(points, fx=FX, fy=FY, cx=CX, cy=CY):
    """(..., 3) camera metres -> (..., 2) pixels, pinhole."""
    return points[..., :2] / points[..., 2:3] * np.array([fx, fy]) + np.array([cx, cy])


def to_screen(pixels, width=FRAME_W, height=FRAME_H):
    u = pixels[..., 0] / width * 2 - 1
    v = pixels[..., 1] / width * 2 - height / width
    return np.stack([u, v], axis=-1)


def box(root):
    """center, scale of the box of docs/method.md §1.1 (2 m square around the root, metres in)."""
    x1 = (root[0] - 1.0) / root[2] * FX + CX
    x2 = (root[0] + 1.0) / root[2] * FX + CX
    y1 = (root[1] - 0.9) / root[2] * FY + CY
    y2 = (root[1] + 1.1) / root[2] * FY + CY
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), np.array([(x2 - x1) / 200, (y2 - y1) / 200])


def toolbox_zoom(scale):
    """Crop pixels per full-frame pixel of the H36M-Toolbox crop: the box's first and last pixel
    centres (S = scale * 200 pixels apart by S - 1) land on crop pixels 0 and 191."""
    return (CROP_W - 1) / (scale[0] * 200.0 - 1)


def to_crop(pixels, center, scale):
    """Full-frame pixels -> crop pixels, written independently of datasets/images.py."""
    return (pixels - center) * toolbox_zoom(scale) + np.array([(CROP_W - 1) / 2, (CROP_H - 1) / 2])


def pattern(x, y):
    """(..., 3) uint8-range float RGB of a smooth pattern at full-frame pixel coordinates."""
    red = 128 + 60 * np.sin(2 * np.pi * x / 23.0) + 40 * np.cos(2 * np.pi * y / 31.0)
    green = 128 + 60 * np.cos(2 * np.pi * (x + y) / 41.0)
    blue = 128 + 50 * np.sin(2 * np.pi * y / 19.0) + 30 * np.sin(2 * np.pi * x / 53.0)
    return np.stack([red, green, blue], axis=-1)


def render_full(width=FRAME_W, height=FRAME_H):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.clip(np.round(pattern(xs, ys)), 0, 255).astype(np.uint8)


def render_crop(center, scale, shift=0.0):
    """The crop evaluated directly at the full-frame pre-image of each crop pixel centre."""
    zoom = toolbox_zoom(scale)
    ys, xs = np.mgrid[0:CROP_H, 0:CROP_W].astype(np.float64)
    full_x = (xs + shift - (CROP_W - 1) / 2) / zoom + center[0]
    full_y = (ys - (CROP_H - 1) / 2) / zoom + center[1]
    image = pattern(full_x, full_y)
    inside = (full_x > -0.5) & (full_x < FRAME_W - 0.5) & (full_y > -0.5) & (full_y < FRAME_H - 0.5)
    image[~inside] = 0
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_jpeg(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    assert ok, path


def image_name(subject, action, subaction, camera, frame):
    folder = f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera + 1:02d}"
    return f"{folder}/{folder}_{frame:06d}.jpg"


def make_entries(count, seed=0, subjects=(1, 5, 6, 7, 8)):
    """`count` label dicts in the format of docs/method.md §1.1 with consistent projections."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(count):
        root = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), rng.uniform(4.0, 6.0)])
        joints = root + rng.uniform(-0.7, 0.7, size=(17, 3)) * np.array([1.0, 1.0, 0.3])
        joints[0] = root
        pixels = project(joints)
        center, scale = box(root)
        crop = to_crop(pixels, center, scale)
        noisy = pixels + rng.normal(0, 2.0, size=pixels.shape)
        subject = subjects[index % len(subjects)]
        action, subaction, camera = 2 + index % 15, 1 + index % 2, index % 4
        entries.append({
            "image": image_name(subject, action, subaction, camera, index + 1),
            "joints_3d": joints,
            "joints_2d_gt": to_screen(pixels),
            "joints_2d_cpn": to_screen(noisy),
            "joints_2d_gt_crop": crop,
            "joints_2d_cpn_crop": to_crop(noisy, center, scale),
            "joints_vis": np.ones((17, 3)),
            "subject": subject, "action": action, "subaction": subaction,
            "camera_id": camera, "image_id": index + 1, "video_id": index // 4,
            "camera": {"R": np.eye(3), "T": np.zeros((3, 1)), "fx": FX, "fy": FY, "cx": CX,
                       "cy": CY, "k": np.zeros((3, 1)), "p": np.zeros((2, 1))},
            "center": center, "scale": scale,
            "box": np.concatenate([center - scale * 100, center + scale * 100]),
            "source": "h36m", "nposes": count,
        })
    return entries


def write_pickle(path, entries):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(entries, handle, protocol=pickle.HIGHEST_PROTOCOL)


def write_dataset(root, train_frames=6, val_frames=5, full_frames=True, seed=0):
    """Writes h36m_train.pkl, h36m_validation.pkl and images/ (full frames or crops) to `root`."""
    splits = {"h36m_train.pkl": make_entries(train_frames, seed, (1, 5, 6, 7, 8)),
              "h36m_validation.pkl": make_entries(val_frames, seed + 1, (9, 11))}
    full = render_full()
    for name, entries in splits.items():
        write_pickle(os.path.join(root, name), entries)
        for entry in entries:
            image = full if full_frames else render_crop(entry["center"], entry["scale"])
            write_jpeg(os.path.join(root, "images", entry["image"]), image)
    return splits
