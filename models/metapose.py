"""MetaPose (docs/method.md §2): the frozen image and text encoders around the pose network, and
`build_model(config)`."""

import torch
from torch import nn

from models.hrnet import build_image_encoder
from models.pose_network import PoseNetwork
from models.text_encoder import build_text_encoder


class MetaPose(nn.Module):
    """Single-frame 3D pose from 2D joints, the image crop and per-joint text.

    Submodules: `image_encoder` (HRNet, 4 feature levels, official key layout), `text_encoder`
    (prompted CLIP text) and `pose_net` (everything else, models/pose_network.py). With
    `freeze_image_encoder` the HRNet runs without autograd and its maps enter the pose network as
    constants. `root_shift` (model.root_shift) subtracts the predicted root from the output; the
    published network returns the raw output.
    """

    def __init__(self, image_encoder, text_encoder, pose_net, freeze_image_encoder=True,
                 root_shift=False):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.pose_net = pose_net
        self.freeze_image_encoder = bool(freeze_image_encoder)
        self.root_shift = bool(root_shift)
        if self.freeze_image_encoder:
            self.image_encoder.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_image_encoder:
            self.image_encoder.eval()  # batch-norm statistics of a frozen encoder never move
        return self

    def trainable_parameters(self):
        """Parameters with requires_grad: the pose network (+ trained prompts, + HRNet if not
        frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def pose_parameters(self):
        """The pose network's parameters (prompts and encoders excluded)."""
        return list(self.pose_net.parameters())

    def encode_images(self, images):
        """images (B, 3, H, W) normalised RGB -> list of 4 maps (B, C_l, H_l, W_l)."""
        if not self.freeze_image_encoder:
            return list(self.image_encoder(images))
        with torch.no_grad():
            maps = self.image_encoder(images)
        return [feature.detach() for feature in maps]

    def forward(self, images, keypoints_2d, keypoints_2d_crop, actions, return_aux=False):
        """
        Args:
            images: (B, 3, H, W) float RGB normalised with the ImageNet mean/std (256x192 in the
                paper; any size works: the maps are sampled in crop-relative grid coordinates).
            keypoints_2d: (B, 17, 2) 2D joints in normalised screen coordinates (H36M order).
            keypoints_2d_crop: (B, 17, 2) the same joints in crop pixels (x in [0, 192),
                y in [0, 256), pixel centres at integers).
            actions: (B,) LongTensor of H36M action ids 2..16 (unused by the joint text mode).
            return_aux: also return {"kl": scalar tensor} (the alignment KL term).
        Returns:
            (B, 17, 3) joints in metres relative to the root (camera frame): as published the
            raw output, trained towards root-relative targets (joint 0 near 0); with root_shift,
            joint 0 is exactly 0. Or (pose, {"kl": kl}) with return_aux.
        """
        maps = self.encode_images(images)
        # The text encoder encodes each distinct action once and gathers per sample
        # (and, without gradients, serves every action from its cache).
        text_features = self.text_encoder(actions)  # (B, P, Dt)
        pose, kl = self.pose_net(maps, keypoints_2d, keypoints_2d_crop, text_features)
        if self.root_shift:
            pose = pose - pose[:, :1]
        if return_aux:
            return pose, {"kl": kl}
        return pose


def build_model(config, weights_from_checkpoint=False):
    """MetaPose from `config.model.*` (see utils/defaults.yaml). The model always runs its fast
    paths (batched deformable sampling, truncated and cached text); `config.speed` is applied to
    the built model by `models.speed.prepare_model_for_speed`.

    Missing pretrained files raise MetaPoseError; `null` paths give random initialisation (with
    a warning). `weights_from_checkpoint=True`: every weight will be loaded from a checkpoint
    right after (evaluating or fine-tuning a trained model), so the image encoder's pretrained
    file is not read, nothing warns about random initialisation, and a random HRNet's batch
    norm is not calibrated.
    """
    model_cfg = config.model
    image_cfg, text_cfg = model_cfg.image_encoder, model_cfg.text_encoder
    image_encoder = build_image_encoder(image_cfg.type, image_cfg.pretrained,
                                        frozen=image_cfg.frozen, width=image_cfg.width,
                                        weights_from_checkpoint=weights_from_checkpoint)
    text_encoder = build_text_encoder(text_cfg.type, text_cfg.pretrained, text_cfg.mode,
                                      text_cfg.prompt_tokens, width=text_cfg.width,
                                      layers=text_cfg.layers,
                                      layout=text_cfg.layout,
                                      train_prompts=text_cfg.train_prompts,
                                      prompts=text_cfg.prompts,
                                      weights_from_checkpoint=weights_from_checkpoint)
    pose_net = PoseNetwork(
        image_encoder.level_channels, text_encoder.output_dim,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        deform_heads=model_cfg.deform_heads,
        deform_points=model_cfg.deform_points,
        mlp_ratio=model_cfg.mlp_ratio,
        lift_heads=model_cfg.lift_heads,
        drop_rate=model_cfg.drop_rate,
        drop_path=tuple(model_cfg.drop_path),
        grid_convention=model_cfg.grid_convention,
        eval_noise=model_cfg.alignment.eval_noise,
        per_channel=model_cfg.alignment.per_channel,
    )
    return MetaPose(image_encoder, text_encoder, pose_net, freeze_image_encoder=image_cfg.frozen,
                    root_shift=model_cfg.root_shift)
