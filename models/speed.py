"""Speed settings that leave the computation unchanged: channels-last HRNet, torch.compile."""

import torch


def uses_channels_last(config, device):
    """Channels-last pays off for convolutions on CUDA only (on CPU it is left off)."""
    return bool(config.speed.channels_last) and torch.device(device).type == "cuda"


def prepare_model_for_speed(model, config, device):
    """Applies `config.speed` to a built MetaPose in place and returns it.

    - channels_last: the frozen HRNet's weights go to channels-last memory format on CUDA (its
      inputs must then be channels-last too: see engine.prepare_batch);
    - compile: the pose network's blocks (enhancers, alignment, lifting) are wrapped with
      torch.compile; the encoders keep eager mode (the text encoder caches in Python).
    """
    if uses_channels_last(config, device):
        model.image_encoder.to(memory_format=torch.channels_last)
    if config.speed.compile:
        for name in ("spatial", "semantic", "alignment", "lifting"):
            setattr(model, name, torch.compile(getattr(model, name)))
    return model
