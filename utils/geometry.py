"""Coordinate conversions shared by the data and the model."""

import torch

from utils.skeleton import CROP_HEIGHT, CROP_WIDTH


def crop_pixels_to_grid(keypoints_crop):
    """Crop pixels (..., 2) (x in [0,192), y in [0,256), pixel centres at integers) to the
    normalised grid coordinates of `grid_sample(align_corners=False)`: -1 and +1 are the outer
    edges of the crop, whatever the resolution of the feature map. Mirroring x -> 191 - x in
    pixels is exactly g -> -g here, so flips commute with feature sampling.
    """
    # Python scalars, not a tensor of the sizes: building one on a GPU waits for the device.
    x = (keypoints_crop[..., 0] + 0.5) / CROP_WIDTH * 2.0 - 1.0
    y = (keypoints_crop[..., 1] + 0.5) / CROP_HEIGHT * 2.0 - 1.0
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
