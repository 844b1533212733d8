"""Decoding HRNet's COCO heatmaps into crop pixels.

The heatmap head (`models.hrnet.build_keypoint_head`) maps the level-0 feature map, a quarter
of the encoder's input size, to 17 COCO heatmaps. Convention of the official HRNet code (its
training targets and its decoding): heatmap coordinate k lies at input pixel `stride * k`.
The encoder's input is the 192x256 crop resized to data.image_size, so the stride measured in
crop pixels is 192 / heatmap width (4 for the paper's 256x192 input).
"""

import torch

from utils.skeleton import CROP_HEIGHT, CROP_WIDTH


def decode_heatmaps(heatmaps):
    """Argmax with the usual quarter-pixel refinement towards the higher neighbour.

    Args:
        heatmaps: (B, J, H, W) float.
    Returns:
        coords (B, J, 2) float64 (x, y) in heatmap pixels and maxima (B, J) float64 (the peak
        values, HRNet's per-joint confidence). The refinement moves x (and y) by +-0.25 towards
        the larger of the two horizontal (vertical) neighbours of the peak, where both exist.
    """
    heatmaps = heatmaps.detach().double()
    batch, joints, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, joints, height * width)
    maxima, index = flat.max(dim=-1)
    xi = (index % width).reshape(-1)
    yi = torch.div(index, width, rounding_mode="floor").reshape(-1)
    rows = heatmaps.reshape(batch * joints, height, width)
    item = torch.arange(batch * joints, device=heatmaps.device)

    def neighbour_step(coordinate, size, before, after):
        inside = (coordinate > 0) & (coordinate < size - 1)
        step = torch.sign(after - before) * 0.25
        return torch.where(inside, step, torch.zeros_like(step))

    left = rows[item, yi, (xi - 1).clamp(min=0)]
    right = rows[item, yi, (xi + 1).clamp(max=width - 1)]
    up = rows[item, (yi - 1).clamp(min=0), xi]
    down = rows[item, (yi + 1).clamp(max=height - 1), xi]
    x = xi.double() + neighbour_step(xi, width, left, right)
    y = yi.double() + neighbour_step(yi, height, up, down)
    return torch.stack([x, y], dim=-1).reshape(batch, joints, 2), maxima


def heatmap_to_crop(coords, heatmap_size):
    """(..., 2) heatmap pixels of a (H, W) heatmap -> 192x256 crop pixels (x * 192/W, y * 256/H)."""
    height, width = heatmap_size
    scale = coords.new_tensor([CROP_WIDTH / width, CROP_HEIGHT / height])
    return coords * scale
