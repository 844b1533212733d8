"""Coordinate conversions shared by the data and the model."""

import torch

from utils.errors import MetaPoseError
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH


# How crop pixels become grid_sample coordinates (docs/method.md §2.3 and 2.9), and the align_corners
# flag every grid_sample of the network then uses:
#   published     gx = x / 96 - 1, gy = y / 128 - 1 with align_corners=True (the authors' code:
#                 -1/+1 are the centres of the border pixels of each map, so the same crop point
#                 lands up to ~0.6 feature pixels away from where it is, and x -> 191 - x is not
#                 g -> -g);
#   pixel_centre  gx = (x + 0.5) / 96 - 1, gy = (y + 0.5) / 128 - 1 with align_corners=False
#                 (-1/+1 are the outer edges of the crop on every level; the mirror is exact).
GRID_CONVENTIONS = ("published", "pixel_centre")


def check_grid_convention(convention):
    """Raises MetaPoseError unless `convention` is one of GRID_CONVENTIONS."""
    if convention not in GRID_CONVENTIONS:
        raise MetaPoseError(f"model.grid_convention is {convention!r}; use one of "
                            f"{', '.join(GRID_CONVENTIONS)} (docs/method.md §2.9).")


def grid_align_corners(convention):
    """The `align_corners` of every grid_sample under `convention` (True for published)."""
    check_grid_convention(convention)
    return convention == "published"


def crop_pixels_to_grid(keypoints_crop, convention="pixel_centre"):
    """Crop pixels (..., 2) (x in [0,192), y in [0,256), pixel centres at integers) to the
    normalised (x, y) coordinates that grid_sample reads with `grid_align_corners(convention)`;
    one grid point is the same crop point on every feature level whatever its resolution.
    With pixel_centre, mirroring x -> 191 - x in pixels is exactly g -> -g, so flips commute
    with feature sampling; with published it is not (the published defect, docs/method.md §2.9).
    """
    check_grid_convention(convention)
    shift = 0.5 if convention == "pixel_centre" else 0.0
    # Python scalars, not a tensor of the sizes: building one on a GPU waits for the device.
    x = (keypoints_crop[..., 0] + shift) / CROP_WIDTH * 2.0 - 1.0
    y = (keypoints_crop[..., 1] + shift) / CROP_HEIGHT * 2.0 - 1.0
    return torch.stack([x, y], dim=-1)


def root_relative(joints_3d):
    """(..., 17, 3) joints minus the pelvis (joint 0), so joint 0 becomes exactly zero."""
    return joints_3d - joints_3d[..., :1, :]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_NORMALISATION_CACHE = {}


def _mean_std(device):
    """(1, 3, 1, 1) float32 mean and std on `device`, made once per device: copying a new
    tensor from the host to a GPU waits for the device (one sync per batch otherwise)."""
    if device not in _NORMALISATION_CACHE:
        with torch.inference_mode(False):  # usable later with autograd even if first made
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
            _NORMALISATION_CACHE[device] = (mean.to(device), std.to(device))
    return _NORMALISATION_CACHE[device]


def normalize_images(images_uint8):
    """(B, 3, H, W) uint8 RGB on any device -> float32 normalised with the ImageNet mean/std."""
    mean, std = _mean_std(images_uint8.device)
    return (images_uint8.float() / 255.0 - mean) / std
