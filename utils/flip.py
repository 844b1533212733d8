"""Horizontal flips of a batch (docs/method.md §1.3): image, 2D joints, crop joints and 3D joints together.

All functions are pure, work on torch tensors of any leading batch shape, and are their own
inverse (flipping twice returns the input exactly).
"""

import torch

from utils.skeleton import CROP_WIDTH, FLIP_PERMUTATION

_PERMUTATION_CACHE = {}


def _permutation(device):
    if device not in _PERMUTATION_CACHE:
        _PERMUTATION_CACHE[device] = torch.tensor(FLIP_PERMUTATION, device=device)
    return _PERMUTATION_CACHE[device]


def flip_keypoints_2d(keypoints):
    """(..., 17, 2) normalised screen coordinates: u -> -u, then swap left/right joints."""
    flipped = keypoints.clone()
    flipped[..., 0] = -flipped[..., 0]
    return flipped.index_select(-2, _permutation(keypoints.device))


def flip_keypoints_crop(keypoints, crop_width=CROP_WIDTH):
    """(..., 17, 2) crop pixels (pixel centres at integers): x -> (crop_width - 1) - x, swap joints."""
    flipped = keypoints.clone()
    flipped[..., 0] = (crop_width - 1) - flipped[..., 0]
    return flipped.index_select(-2, _permutation(keypoints.device))


def flip_joints_3d(joints):
    """(..., 17, 3) camera-frame metres: X -> -X, then swap left/right joints."""
    flipped = joints.clone()
    flipped[..., 0] = -flipped[..., 0]
    return flipped.index_select(-2, _permutation(joints.device))


def flip_images(images):
    """(..., C, H, W) images mirrored along the width axis."""
    return images.flip(-1)


def flip_where(mask, tensor, flip_fn):
    """Applies `flip_fn` to the samples of `tensor` (batch first) where the bool `mask` (B,) is set.

    The selection always runs, also when no sample flips: looking at the mask first would make
    the host wait for the device.
    """
    shape = (-1,) + (1,) * (tensor.dim() - 1)
    return torch.where(mask.view(shape), flip_fn(tensor), tensor)
