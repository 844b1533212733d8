"""Coordinate conversions shared by the data and the model."""

import torch

from utils.skeleton import CROP_HEIGHT, CROP_WIDTH


def crop_pixels_to_grid(keypoints_crop):
    """Crop pixels (..., 2) (x in [0,192), y in [0,256), pixel centres at integers) to the
    normalised grid coordinates of `grid_sample(align_corners=False)`: -1 and +1 are the outer
    edges of the crop, whatever the resolution of the feature map. Mirroring x -> 191 - x in
    pixels is exactly g -> -g here, so flips commute with feature sampling.
    """
    size = keypoints_crop.new_tensor([CROP_WIDTH, CROP_HEIGHT])
    return (keypoints_crop + 0.5) / size * 2.0 - 1.0


def root_relative(joints_3d):
    """(..., 17, 3) joints minus the pelvis (joint 0), so joint 0 becomes exactly zero."""
    return joints_3d - joints_3d[..., :1, :]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images_uint8):
    """(B, 3, H, W) uint8 RGB on any device -> float32 normalised with the ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std
