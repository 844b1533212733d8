"""Figures of a frame: the crop with its 2D joints beside the predicted and ground-truth 3D poses."""

import os

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede any pyplot import

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils.skeleton import CROP_HEIGHT, CROP_WIDTH, LEFT_JOINTS, PARENTS, RIGHT_JOINTS  # noqa: E402

LEFT_COLOUR = "tab:blue"
RIGHT_COLOUR = "tab:red"
CENTRE_COLOUR = "tab:gray"
GT_COLOUR = "black"

# A white rim keeps the 2D skeleton visible on busy images.
_OUTLINE = [patheffects.withStroke(linewidth=3.5, foreground="white")]

# Panel sizes in inches: the crop keeps its 3:4 aspect, the 3D view is square.
_IMAGE_WIDTH, _PLOT_WIDTH, _ROW_HEIGHT = 2.7, 3.6, 3.6


def _joint_colour(joint):
    if joint in LEFT_JOINTS:
        return LEFT_COLOUR
    if joint in RIGHT_JOINTS:
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def _numpy(array):
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _image_hwc(image):
    """uint8 (H, W, 3) from a numpy/torch image in (H, W, 3) or (3, H, W) layout."""
    image = _numpy(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {image.shape}")
    return np.ascontiguousarray(image.astype(np.uint8))


def crop_to_image_pixels(keypoints_crop, height, width):
    """(17, 2) crop pixels of the 192x256 frame -> pixels of an image of size (height, width).

    Both frames put pixel centres at integers, so the map goes through the pixel edges:
    x' = (x + 0.5) * width / 192 - 0.5 (and likewise for y with 256).
    """
    keypoints = _numpy(keypoints_crop).astype(np.float64)
    scale = np.array([width / CROP_WIDTH, height / CROP_HEIGHT])
    return (keypoints + 0.5) * scale - 0.5


def _draw_image_panel(ax, image, keypoints_crop):
    height, width = image.shape[:2]
    _draw_image_with_skeletons(ax, image, [crop_to_image_pixels(keypoints_crop, height, width)])


def _draw_image_with_skeletons(ax, image, skeletons):
    """The image with each (17, 2) skeleton of `skeletons` (pixels of that image) drawn on it."""
    height, width = image.shape[:2]
    ax.imshow(image)
    for points in skeletons:
        points = _numpy(points).astype(np.float64)
        for joint, parent in enumerate(PARENTS):
            if parent < 0:
                continue
            ax.plot(points[[parent, joint], 0], points[[parent, joint], 1],
                    color=_joint_colour(joint), linewidth=2, path_effects=_OUTLINE)
        ax.scatter(points[:, 0], points[:, 1], s=12,
                   c=[_joint_colour(j) for j in range(len(points))],
                   edgecolors="white", linewidths=0.5, zorder=3)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()


def _plot_coordinates(joints):
    """Camera frame (X right, Y down, Z forward) -> plot axes (X, Z depth, -Y up)."""
    return np.stack([joints[:, 0], joints[:, 2], -joints[:, 1]], axis=1)


def _draw_pose_panel(ax, pred_3d, gt_3d):
    pred = _plot_coordinates(_numpy(pred_3d).astype(np.float64))
    gt = _plot_coordinates(_numpy(gt_3d).astype(np.float64))
    _draw_poses_3d(ax, [pred], gt)
    error_mm = float(np.linalg.norm(pred - gt, axis=1).mean() * 1000.0)
    ax.set_title(f"MPJPE {error_mm:.1f} mm", fontsize=8)


def _draw_poses_3d(ax, poses, gt=None):
    """(17, 3) poses in plot coordinates (and an optional dashed ground truth) in one cube."""
    for joint, parent in enumerate(PARENTS):
        if parent < 0:
            continue
        pair = [parent, joint]
        if gt is not None:
            ax.plot(gt[pair, 0], gt[pair, 1], gt[pair, 2], color=GT_COLOUR, linewidth=1.2,
                    linestyle="--")
        for pose in poses:
            ax.plot(pose[pair, 0], pose[pair, 1], pose[pair, 2], color=_joint_colour(joint),
                    linewidth=2)
    # Equal aspect: one cube around every pose.
    both = np.concatenate(list(poses) + ([gt] if gt is not None else []))
    centre = (both.max(axis=0) + both.min(axis=0)) / 2
    radius = max(float((both.max(axis=0) - both.min(axis=0)).max()) / 2, 1e-3) * 1.1
    ax.set_xlim(centre[0] - radius, centre[0] + radius)
    ax.set_ylim(centre[1] - radius, centre[1] + radius)
    ax.set_zlim(centre[2] - radius, centre[2] + radius)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("X (m)", fontsize=7, labelpad=-6)
    ax.set_ylabel("Z depth (m)", fontsize=7, labelpad=-6)
    ax.set_zlabel("-Y up (m)", fontsize=7, labelpad=-6)
    ax.tick_params(labelsize=6, pad=-2)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(4))
    ax.view_init(elev=15, azim=-70)
    handles = [Line2D([], [], color=LEFT_COLOUR, linewidth=2, label="prediction, left"),
               Line2D([], [], color=RIGHT_COLOUR, linewidth=2, label="prediction, right")]
    if gt is not None:
        handles.append(Line2D([], [], color=GT_COLOUR, linewidth=1.2, linestyle="--",
                              label="ground truth"))
    ax.legend(handles=handles, loc="upper left", fontsize=6, frameon=False)


def _draw_sample_into(fig, cell_image, cell_pose, sample):
    ax_image = fig.add_subplot(cell_image)
    _draw_image_panel(ax_image, _image_hwc(sample["image"]), sample["keypoints_crop"])
    if sample.get("title"):
        ax_image.set_title(str(sample["title"]), fontsize=8)
    ax_pose = fig.add_subplot(cell_pose, projection="3d")
    _draw_pose_panel(ax_pose, sample["pred_3d"], sample["gt_3d"])


def new_figure(width, height):
    """A matplotlib Figure of `width` x `height` inches on its own Agg canvas."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas; no pyplot state is touched
    return fig


def draw_sample(image_uint8, keypoints_crop, pred_3d, gt_3d, title=None):
    """One frame as a figure: the crop with its 2D skeleton, and the 3D poses beside it.

    Args:
        image_uint8: (H, W, 3) uint8 RGB (a (3, H, W) array or tensor is accepted too).
        keypoints_crop: (17, 2) joints in crop pixels of the 192x256 frame; rescaled to (H, W).
        pred_3d: (17, 3) predicted root-relative joints, camera frame, metres.
        gt_3d: (17, 3) ground-truth root-relative joints, camera frame, metres.
        title: optional text above the image.
    Returns:
        matplotlib Figure (Agg canvas): left joints blue, right red, ground truth dashed black;
        the 3D axes show X, Z (depth) and -Y so that up is up, with equal aspect.
    """
    fig = new_figure(_IMAGE_WIDTH + _PLOT_WIDTH, _ROW_HEIGHT)
    grid = GridSpec(1, 2, figure=fig, width_ratios=[_IMAGE_WIDTH, _PLOT_WIDTH], wspace=0.05,
                    left=0.02, right=0.98, top=0.92, bottom=0.04)
    _draw_sample_into(fig, grid[0, 0], grid[0, 1], {
        "image": image_uint8, "keypoints_crop": keypoints_crop, "pred_3d": pred_3d,
        "gt_3d": gt_3d, "title": title})
    return fig


def figure_to_array(fig):
    """Renders a figure to uint8 (H, W, 3) RGB (for TensorBoard `add_image(..., dataformats="HWC")`)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())[..., :3]


def draw_samples_grid(samples, columns=2):
    """Several frames in one figure, `columns` per row (each an image panel and a 3D panel).

    Args:
        samples: list of dicts with keys image, keypoints_crop, pred_3d, gt_3d and optional
            title, as the arguments of `draw_sample`.
        columns: samples per row.
    Returns:
        matplotlib Figure (Agg canvas).
    """
    if not samples:
        raise ValueError("draw_samples_grid needs at least one sample")
    columns = max(1, min(columns, len(samples)))
    rows = (len(samples) + columns - 1) // columns
    fig = new_figure((_IMAGE_WIDTH + _PLOT_WIDTH) * columns, _ROW_HEIGHT * rows)
    grid = GridSpec(rows, 2 * columns, figure=fig,
                    width_ratios=[_IMAGE_WIDTH, _PLOT_WIDTH] * columns,
                    wspace=0.05, hspace=0.15, left=0.02, right=0.98, top=0.95, bottom=0.03)
    for number, sample in enumerate(samples):
        row, column = divmod(number, columns)
        _draw_sample_into(fig, grid[row, 2 * column], grid[row, 2 * column + 1], sample)
    return fig


def save_samples_png(path, samples, columns=2, dpi=100):
    """Draws several frames in one grid (`draw_samples_grid`) and writes it as a PNG.

    Args:
        path: output file; missing parent folders are created.
        samples, columns: as `draw_samples_grid`'s.
        dpi: resolution of the PNG.
    Returns:
        path.
    """
    if not samples:
        raise ValueError("save_samples_png needs at least one sample")
    fig = draw_samples_grid(samples, columns)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
