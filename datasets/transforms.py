"""Batch transforms on the device: uint8 images to normalised floats, and horizontal flips that
change the image and every target together (docs/method.md §1.3)."""

import torch

from utils.flip import (flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop,
                        flip_where)
from utils.geometry import normalize_images


def prepare_batch(batch, device, channels_last=False, normalize=True):
    """Moves a collated batch to `device`, normalises the images and applies the per-sample flips.

    Args:
        batch: dict from the DataLoader: image uint8 (B,3,H,W), keypoints_2d (B,17,2) normalised
            screen, keypoints_2d_crop (B,17,2) crop pixels, joints_3d (B,17,3) metres, action
            (B,), flip bool (B,) (optional: without it nothing flips).
        normalize: False leaves the images uint8 (models/flip_test.predict normalises them
            after building the mirrored half, a quarter of the bytes of float images).
    Returns:
        dict with images float (B,3,H,W) ImageNet-normalised (uint8 with normalize=False),
        keypoints_2d, keypoints_2d_crop, joints_3d and actions, where the samples marked `flip`
        are mirrored consistently (image, both 2D joint sets and the 3D target; docs/method.md
        §1.3).
    """
    # Asynchronous copies (the DataLoader pins its batches when training on CUDA): nothing here
    # waits for the device (not even for the flip marks), so the host can queue the step while
    # the previous one still runs.
    non_blocking = device.type == "cuda"

    def move(tensor):
        return tensor.to(device, non_blocking=non_blocking)

    images = move(batch["image"])
    if channels_last and device.type == "cuda":
        # uint8 (a quarter of the float bytes); the normalised images inherit the layout.
        images = images.contiguous(memory_format=torch.channels_last)
    out = {
        "images": images,
        "keypoints_2d": move(batch["keypoints_2d"]),
        "keypoints_2d_crop": move(batch["keypoints_2d_crop"]),
        "joints_3d": move(batch["joints_3d"]),
        "actions": move(batch["action"]),
    }
    flip = batch.get("flip")
    # Images flip as uint8: mirroring commutes with the per-channel normalisation.
    if flip is not None:
        mask = move(flip).bool()
        out["images"] = flip_where(mask, out["images"], flip_images)
        out["keypoints_2d"] = flip_where(mask, out["keypoints_2d"], flip_keypoints_2d)
        out["keypoints_2d_crop"] = flip_where(mask, out["keypoints_2d_crop"], flip_keypoints_crop)
        out["joints_3d"] = flip_where(mask, out["joints_3d"], flip_joints_3d)
    if normalize:
        out["images"] = normalize_images(out["images"])
    return out


def with_batch_flip(batch, flip):
    """The collated `batch` with every sample's `flip` mark set to `flip` (a bool): the
    published whole-batch flip (train.flip_mode=batch); without marks when `flip` is False
    (nothing to select). A new dict; the batch is not changed."""
    if not flip:
        return {name: value for name, value in batch.items() if name != "flip"}
    return {**batch, "flip": torch.ones(batch["action"].shape[0], dtype=torch.bool)}


def model_inputs(inputs):
    """The positional arguments of MetaPose.forward from a prepared batch."""
    return inputs["images"], inputs["keypoints_2d"], inputs["keypoints_2d_crop"], inputs["actions"]
