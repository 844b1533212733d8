"""Stage 1 of the synthetic demo (docs/method.md §1.5): the demo's small HRNet trained as a COCO-17
2D keypoint heatmap network on the synthetic training crops, so that the demo, like the paper,
freezes a trunk that has learnt to see people rather than a random one.

The trunk and its heatmap head `final_layer` are written in the official pose_hrnet key layout,
so the file is what `model.image_encoder.pretrained` names (models/hrnet.py loads the trunk and
ignores the head; tools/infer.py's HRNet-head 2D path reads the head). A stamp beside the file
(datasets/content_stamp.py) records the synthetic set and the settings it was trained with:
`trunk_problem` tells whether the file is missing or stale, `ensure_trunk` trains it then.

Targets follow the official recipe: one Gaussian per joint at the HRNet output resolution (a
quarter of data.image_size; heatmap pixel k lies at input pixel 4k), mean squared error, joints
outside the heatmap left out of the loss.
"""

import copy
import logging
import os
import time

import numpy as np
import torch

from datasets import SYNTHETIC_STAMP, build_dataset
from datasets.coco_joints_file import coco_file_path, read_coco_file
from datasets.content_stamp import read_stamp, stamp_problem, write_stamp
from inference.heatmaps import decode_heatmaps
from models.hrnet import (COCO_JOINTS, HRNET_TYPES, KEYPOINT_HEAD_PREFIX, HRNet,
                          build_keypoint_head)
from utils.atomic_files import atomic_write
from utils.errors import MetaPoseError
from utils.geometry import normalize_images
from utils.skeleton import CROP_HEIGHT, CROP_WIDTH

logger = logging.getLogger(__name__)

# Raised whenever the training below changes what it writes.
TRUNK_VERSION = 1
# PCK thresholds of the reported 2D accuracy, in pixels of the encoder's input (data.image_size).
PCK_THRESHOLDS_PX = (2.0, 4.0)


def stamp_path(trunk_path):
    """The stamp file of the trunk file `trunk_path`."""
    return os.path.splitext(trunk_path)[0] + "_stamp.json"


def trunk_settings(config):
    """What the stage-1 trunk of `config` depends on: the synthetic set's stamp, the HRNet
    width, the input size and data.synthetic.trunk."""
    settings = config.data.synthetic.trunk
    return {"trunk_version": TRUNK_VERSION,
            "synthetic": read_stamp(os.path.join(config.data.root, SYNTHETIC_STAMP)),
            "width": _width(config), "image_size": list(config.data.image_size),
            "epochs": int(settings.epochs), "batch_size": int(settings.batch_size),
            "lr": float(settings.lr), "sigma": float(settings.sigma),
            "seed": int(config.data.synthetic.seed)}


def _width(config):
    image = config.model.image_encoder
    return int(image.width) if image.width is not None else HRNET_TYPES[image.type]


def _trunk_path(config):
    path = config.model.image_encoder.pretrained
    if path is None:
        raise MetaPoseError(
            "data.synthetic.trunk.enabled is true but model.image_encoder.pretrained is null: "
            "stage 1 writes its trunk to the file that key names. Set it (e.g. "
            "model.image_encoder.pretrained=data/synthetic/trunk_w8_64x48.pth) or set "
            "data.synthetic.trunk.enabled=false.")
    return os.fspath(path)


def trunk_problem(config):
    """None when model.image_encoder.pretrained holds the stage-1 trunk that `config` asks for;
    otherwise why it must be trained (again)."""
    path = _trunk_path(config)
    if not os.path.isfile(path):
        return f"'{path}' does not exist"
    return stamp_problem(stamp_path(path), trunk_settings(config), notes=("accuracy",))


# -- data -------------------------------------------------------------------------------------


def _stage1_config(config):
    """`config` as stage 1 reads the data: real images, no flips (whatever the run ablates)."""
    config = copy.deepcopy(config)
    config.data.blank_images = False
    config.train.flip_prob = 0.0
    return config


def load_crops(config, split):
    """(uint8 images (N, 3, H, W), float32 COCO joints (N, 17, 2) in 192x256 crop pixels) of
    every frame of `split`, read through the training pipeline (same crop, same resize)."""
    dataset = build_dataset(_stage1_config(config), split)
    coco = read_coco_file(dataset.source)
    images = np.empty((len(dataset), 3, *dataset.image_size), dtype=np.uint8)
    joints = np.empty((len(dataset), COCO_JOINTS, 2), dtype=np.float32)
    for index in range(len(dataset)):
        sample = dataset[index]
        frame = dataset.frames[int(sample["index"])]
        name = bytes(dataset.labels["image"][frame])
        if name not in coco:
            raise MetaPoseError(
                f"COCO joints file '{coco_file_path(dataset.source)}' has no joints for the image "
                f"'{name.decode('utf-8', 'replace')}' of '{dataset.source}': it belongs to "
                "another synthetic set. Delete the set's folder and run again to write both.")
        images[index] = sample["image"].numpy()
        joints[index] = coco[name]
    return torch.from_numpy(images), torch.from_numpy(joints)


def heatmap_shape(image_size):
    """(H, W) of the HRNet output for an input of `image_size` (H, W): a quarter, rounded up."""
    return tuple(-(-int(side) // 4) for side in image_size)


def crop_to_heatmap(joints_crop, shape):
    """(..., 2) 192x256 crop pixels -> heatmap pixels of a (H, W) heatmap (inverse of
    inference/heatmaps.py's heatmap_to_crop)."""
    height, width = shape
    return joints_crop / joints_crop.new_tensor([CROP_WIDTH / width, CROP_HEIGHT / height])


def gaussian_targets(joints_heatmap, shape, sigma):
    """(B, 17, H, W) Gaussian heatmaps (peak 1 at each joint) and (B, 17) weights: 0 for a
    joint more than 3 sigma outside the heatmap (as the official targets leave such joints)."""
    height, width = shape
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    x = joints_heatmap[..., 0, None, None]
    y = joints_heatmap[..., 1, None, None]
    targets = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2.0 * sigma ** 2))
    margin = 3.0 * sigma
    inside = ((joints_heatmap[..., 0] > -margin) & (joints_heatmap[..., 0] < width - 1 + margin)
              & (joints_heatmap[..., 1] > -margin) & (joints_heatmap[..., 1] < height - 1 + margin))
    return targets, inside.float()


# -- model ------------------------------------------------------------------------------------


class HeatmapNetwork(torch.nn.Module):
    """The HRNet trunk and the official 1x1 heatmap head on its fused highest-resolution map."""

    def __init__(self, width, seed=0):
        super().__init__()
        self.trunk = HRNet(width)
        self.final_layer = build_keypoint_head(width, seed=seed).requires_grad_(True)

    def forward(self, images):
        return self.final_layer(self.trunk(images)[0])

    def official_state_dict(self):
        """The flat pose_hrnet layout: the trunk's keys and `final_layer.weight/bias`."""
        state = {key: value.detach().clone() for key, value in self.trunk.state_dict().items()}
        for key, value in self.final_layer.state_dict().items():
            state[KEYPOINT_HEAD_PREFIX + key] = value.detach().clone()
        return state


def _batches(count, batch_size, generator=None):
    order = torch.randperm(count, generator=generator) if generator is not None \
        else torch.arange(count)
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]


@torch.no_grad()
def evaluate_2d(network, images, joints_crop, image_size, batch_size=128):
    """2D accuracy of `network` on the crops: {"pck_<t>px": fraction of joints within t input
    pixels, "mean_error_px": mean distance in input pixels, "joints": joints counted}; joints
    outside the crop are not counted. Input pixels: those of data.image_size (the encoder's
    input), where one heatmap pixel is 4 of them."""
    network.eval()
    shape = heatmap_shape(image_size)
    errors = []
    for index in _batches(len(images), batch_size):
        heatmaps = network(normalize_images(images[index]))
        predicted, _ = decode_heatmaps(heatmaps)
        target = crop_to_heatmap(joints_crop[index].double(), shape)
        # heatmap pixels -> input pixels: heatmap pixel k lies at input pixel 4k
        errors.append((predicted - target).norm(dim=-1) * 4.0)
    errors = torch.cat(errors)
    inside = ((joints_crop[..., 0] >= 0) & (joints_crop[..., 0] <= CROP_WIDTH - 1)
              & (joints_crop[..., 1] >= 0) & (joints_crop[..., 1] <= CROP_HEIGHT - 1))
    counted = errors[inside]
    result = {f"pck_{threshold:g}px": float((counted <= threshold).double().mean())
              for threshold in PCK_THRESHOLDS_PX}
    result["mean_error_px"] = float(counted.mean())
    result["joints"] = int(counted.numel())
    return result


def train_heatmaps(images, joints_crop, image_size, width, epochs, batch_size, lr, sigma, seed,
                   log=None):
    """Trains a HeatmapNetwork from the official random initialisation with Adam (learning rate
    `lr`, cosine-decayed to zero) on MSE to Gaussian targets; returns the network.

    log(epoch, loss, seconds) is called after every epoch when given."""
    torch.manual_seed(seed)
    network = HeatmapNetwork(width, seed=seed)
    shape = heatmap_shape(image_size)
    targets, weights = gaussian_targets(crop_to_heatmap(joints_crop, shape), shape, sigma)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    steps = epochs * len(_batches(len(images), batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        network.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for index in _batches(len(images), batch_size, generator):
            heatmaps = network(normalize_images(images[index]))
            weight = weights[index][..., None, None]
            loss = ((heatmaps - targets[index]) ** 2 * weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        if log is not None:
            log(epoch + 1, total / count, time.perf_counter() - start)
    return network.eval()


# -- the whole of stage 1 ---------------------------------------------------------------------


def write_trunk(path, network):
    """Saves `network` in the official pose_hrnet layout (final_layer included), atomically."""
    state = network.official_state_dict()
    atomic_write(path, lambda stream: torch.save(state, stream))


def pretrain_trunk(config, out_path=None):
    """Stage 1: trains the trunk of `config` on its synthetic training crops, measures its 2D
    accuracy on the validation crops, writes the file (default model.image_encoder.pretrained)
    and its stamp. Returns the accuracy dict."""
    path = os.fspath(out_path) if out_path is not None else _trunk_path(config)
    settings = config.data.synthetic.trunk
    image_size = tuple(config.data.image_size)
    width = _width(config)
    start = time.perf_counter()
    train_images, train_joints = load_crops(config, "train")
    val_images, val_joints = load_crops(config, "validation")
    logger.info("stage 1: training the HRNet trunk (width %d, %dx%d input) as a COCO-17 heatmap "
                "network on %d synthetic crops for %d epochs", width, image_size[0],
                image_size[1], len(train_images), settings.epochs)

    def log(epoch, loss, seconds):
        logger.info("stage 1: epoch %d/%d  heatmap MSE %.3g  (%.1f s)", epoch, settings.epochs,
                    loss, seconds)

    network = train_heatmaps(train_images, train_joints, image_size, width, settings.epochs,
                             settings.batch_size, settings.lr, settings.sigma,
                             config.data.synthetic.seed, log)
    accuracy = evaluate_2d(network, val_images, val_joints, image_size)
    write_trunk(path, network)
    stamp = trunk_settings(config)
    stamp["accuracy"] = accuracy
    write_stamp(stamp_path(path), stamp)
    logger.info("stage 1: 2D accuracy on %d validation crops (%d joints inside the crop), in "
                "pixels of the %dx%d input: PCK@%gpx %.1f %%, PCK@%gpx %.1f %%, mean error "
                "%.2f px; wrote '%s' in %.0f s", len(val_images), accuracy["joints"],
                image_size[0], image_size[1], PCK_THRESHOLDS_PX[0],
                100 * accuracy[f"pck_{PCK_THRESHOLDS_PX[0]:g}px"], PCK_THRESHOLDS_PX[1],
                100 * accuracy[f"pck_{PCK_THRESHOLDS_PX[1]:g}px"], accuracy["mean_error_px"],
                path, time.perf_counter() - start)
    return accuracy


def ensure_trunk(config):
    """Runs stage 1 when data.synthetic.trunk is enabled and the trunk file is missing or
    stale (`trunk_problem`); logs the accuracy recorded with a current file. Call it after the
    synthetic set exists (build_dataset writes it)."""
    if not config.data.synthetic.trunk.enabled:
        return None
    reason = trunk_problem(config)
    if reason is None:
        recorded = read_stamp(stamp_path(_trunk_path(config))).get("accuracy") or {}
        logger.info("stage 1: using the current trunk '%s' (validation 2D: %s)",
                    _trunk_path(config), ", ".join(f"{key} {value:.3g}"
                                                  for key, value in recorded.items()))
        return recorded
    logger.info("stage 1: training the trunk because %s", reason)
    return pretrain_trunk(config)
