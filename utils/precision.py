"""Mixed precision: the autocast context the training and evaluation steps run under."""

import contextlib

import torch


def autocast_context(device, amp):
    """bf16/fp16 autocast on CUDA; nothing on the CPU or with amp == "none"."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
