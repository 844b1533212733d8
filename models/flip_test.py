"""Flip-test prediction (docs/method.md §3): the mean of the prediction and the mirrored prediction of the
mirrored input. Evaluation, inference and the benchmarks all call this one function."""

import torch

from datasets.transforms import model_inputs
from utils.flip import flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop
from utils.geometry import normalize_images
from utils.precision import autocast_context


def _normalized(images):
    """uint8 images ImageNet-normalised; float images (already normalised) as they are."""
    return normalize_images(images) if images.dtype == torch.uint8 else images


def predict(model, inputs, flip_test, amp="none"):
    """(B, 17, 3) metres; with `flip_test`, the mean of the prediction and the mirrored
    prediction of the mirrored input (both halves in one forward pass).

    inputs["images"] may be uint8 (datasets.transforms.prepare_batch with normalize=False: the
    mirrored half is built from the uint8 images, then both are normalised at once) or
    normalised floats."""
    images, keypoints_2d, keypoints_crop, actions = model_inputs(inputs)
    with autocast_context(images.device, amp):
        if not flip_test:
            return model(_normalized(images), keypoints_2d, keypoints_crop, actions).float()
        both = model(_normalized(torch.cat([images, flip_images(images)])),
                     torch.cat([keypoints_2d, flip_keypoints_2d(keypoints_2d)]),
                     torch.cat([keypoints_crop, flip_keypoints_crop(keypoints_crop)]),
                     torch.cat([actions, actions])).float()
    plain, mirrored = both.chunk(2)
    return (plain + flip_joints_3d(mirrored)) / 2
