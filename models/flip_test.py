"""Flip-test prediction (docs/method.md §3): the mean of the prediction and the mirrored prediction of the
mirrored input. Evaluation, inference and the benchmarks all call this one function."""

import torch

from datasets.transforms import model_inputs
from utils.flip import flip_images, flip_joints_3d, flip_keypoints_2d, flip_keypoints_crop
from utils.precision import autocast_context


def predict(model, inputs, flip_test, amp="none"):
    """(B, 17, 3) metres; with `flip_test`, the mean of the prediction and the mirrored
    prediction of the mirrored input (both halves in one forward pass)."""
    images, keypoints_2d, keypoints_crop, actions = model_inputs(inputs)
    with autocast_context(images.device, amp):
        if not flip_test:
            return model(images, keypoints_2d, keypoints_crop, actions).float()
        both = model(torch.cat([images, flip_images(images)]),
                     torch.cat([keypoints_2d, flip_keypoints_2d(keypoints_2d)]),
                     torch.cat([keypoints_crop, flip_keypoints_crop(keypoints_crop)]),
                     torch.cat([actions, actions])).float()
    plain, mirrored = both.chunk(2)
    return (plain + flip_joints_3d(mirrored)) / 2
