"""The `speed.*` settings applied to a built model: channels-last HRNet, cuDNN autotuning,
torch.compile (`speed.amp` is read by the engine, `speed.cpu_threads` by utils/cpu_threads.py).
None of them changes the model; the fast paths that compute the same numbers as the plain ones
(batched deformable sampling, truncated and cached text, a frozen HRNet's batch norms folded
into its convolutions) are no setting: the model always runs them (models/reference_paths.py
runs the plain ones for tests and benchmarks)."""

import torch

# The parts of MetaPose that `speed.compile` compiles: the image encoder and the pose network.
# The text encoder stays eager (its feature cache is Python logic around the transformer).
COMPILED_MODULES = ("image_encoder", "pose_net")


def uses_channels_last(config, device):
    """Channels-last pays off for convolutions on CUDA only (on CPU it is left off)."""
    return bool(config.speed.channels_last) and torch.device(device).type == "cuda"


def _to_channels_last(module, args):
    """Forward pre-hook: the images enter a channels-last encoder in channels-last layout
    (a no-op when the caller already made them so, as datasets.transforms.prepare_batch does)."""
    images = args[0]
    if images.dim() == 4 and not images.is_contiguous(memory_format=torch.channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    return (images,) + tuple(args[1:])


def to_channels_last(encoder):
    """Puts a convolutional encoder's weights in channels-last format and makes it convert its
    input likewise (on any device; `prepare_model_for_speed` does it on CUDA). Returns it."""
    encoder.to(memory_format=torch.channels_last)
    encoder.register_forward_pre_hook(_to_channels_last)
    return encoder


def prepare_model_for_speed(model, config, device):
    """Applies `config.speed` to a built MetaPose on `device` in place and returns it.

    - channels_last (CUDA): the HRNet's weights go to channels-last memory format and a
      forward pre-hook converts its input, so every caller (training, flip-test evaluation,
      inference tools) feeds it channels-last images; its maps come out channels-last.
    - cudnn_benchmark (CUDA): cuDNN times its convolution algorithms for each new input shape
      and keeps the fastest (a process-wide setting; shapes are fixed here, so it pays once).
    - compile: `COMPILED_MODULES` are compiled in place (`nn.Module.compile`), which keeps
      module names and state_dict keys unchanged, so checkpoints load either way and DDP can
      wrap the model as usual. A frozen HRNet compiles its batch-norm-folded trunk, the code
      it runs (models/hrnet_folding.py).
    """
    device = torch.device(device)
    speed = config.speed
    if uses_channels_last(config, device):
        to_channels_last(model.image_encoder)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(speed.get("cudnn_benchmark", True))
    if speed.compile:
        for name in COMPILED_MODULES:
            getattr(model, name).compile()
    return model
