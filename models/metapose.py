"""The MetaPose network (DESIGN 2): encoders, modality tokens, the two enhancers, alignment and
lifting, and `build_model(config)`."""

import torch
from torch import nn

from models.alignment import TransformationAlignment
from models.enhancers import LevelSampler, SemanticEnhancer, SpatialEnhancer
from models.hrnet import build_image_encoder
from models.lifting import LiftingTransformer
from models.text_encoder import build_text_encoder
from utils.geometry import crop_pixels_to_grid
from utils.skeleton import NUM_JOINTS


class MetaPose(nn.Module):
    """Single-frame 3D pose from 2D joints, the image crop and per-joint text.

    Submodules: `image_encoder` (HRNet, 4 feature levels), `text_encoder` (prompted CLIP text),
    the token embeddings, `level_sampler`, `spatial` and `semantic` enhancers, `alignment`,
    `lifting`. With `freeze_image_encoder` the HRNet runs without autograd and its maps enter the
    pose network as constants.
    """

    def __init__(self, image_encoder, text_encoder, embed_dim=128, depth=4, deform_heads=4,
                 deform_points=4, mlp_ratio=2.0, lift_heads=8, align_heads=4, drop_rate=0.0,
                 drop_path=(0.1, 0.2), enhancer_drop_path=0.1, joints=NUM_JOINTS,
                 freeze_image_encoder=True, fast_sampling=True, sample_then_project=True):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.freeze_image_encoder = bool(freeze_image_encoder)
        level_channels = list(image_encoder.level_channels)
        levels = len(level_channels)

        # Modality tokens (DESIGN 2.3).
        self.point_embed = nn.Linear(2, embed_dim)
        self.joint_pos = nn.Parameter(torch.zeros(joints, embed_dim))
        self.text_embed = nn.Linear(text_encoder.output_dim, embed_dim)
        self.text_pos = nn.Parameter(torch.zeros(joints, embed_dim))
        self.level_sampler = LevelSampler(level_channels, embed_dim)
        self.level_embed = nn.Parameter(torch.zeros(levels, joints, embed_dim))

        enhancer_args = dict(depth=depth, heads=deform_heads, points=deform_points,
                             mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=enhancer_drop_path,
                             fast=fast_sampling, sample_then_project=sample_then_project)
        self.spatial = SpatialEnhancer(embed_dim, level_channels, **enhancer_args)
        self.semantic = SemanticEnhancer(embed_dim, level_channels, joints=joints, **enhancer_args)
        self.alignment = TransformationAlignment(embed_dim, heads=align_heads, drop=drop_rate)
        self.lifting = LiftingTransformer(embed_dim, levels=levels + 1, joints=joints, depth=depth,
                                          heads=lift_heads, mlp_ratio=mlp_ratio, drop=drop_rate,
                                          drop_path=drop_path)
        self._init_token_weights()
        if self.freeze_image_encoder:
            self.image_encoder.requires_grad_(False)

    def _init_token_weights(self):
        for linear in [self.point_embed, self.text_embed, *self.level_sampler.proj]:
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        for position in (self.joint_pos, self.text_pos, self.level_embed):
            nn.init.trunc_normal_(position, std=0.02)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_image_encoder:
            self.image_encoder.eval()  # batch-norm statistics of a frozen encoder never move
        return self

    def encoder_modules(self):
        return (self.image_encoder, self.text_encoder)

    def trainable_parameters(self):
        """Parameters with requires_grad: pose network + prompts (+ HRNet if not frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def pose_parameters(self):
        """The parameters of everything except the image and text encoders (prompts excluded)."""
        encoder_ids = {id(p) for module in self.encoder_modules() for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

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
            (B, 17, 3) root-relative joints in metres (camera frame; joint 0 is exactly 0),
            or (pose, {"kl": kl}) with return_aux.
        """
        maps = self.encode_images(images)
        # The text encoder encodes each distinct action once and gathers per sample
        # (and, without gradients, serves every action from its cache).
        text_features = self.text_encoder(actions)  # (B, P, Dt)

        batch, joints = keypoints_2d.shape[:2]
        levels = len(maps)
        point_tokens = self.point_embed(keypoints_2d) + self.joint_pos  # (B, P, D)
        text_tokens = self.text_embed(text_features.to(point_tokens.dtype)) + self.text_pos
        reference = crop_pixels_to_grid(keypoints_2d_crop)  # (B, P, 2) grid coordinates
        reference = reference.unsqueeze(1).expand(batch, levels, joints, 2)
        # Maps are sampled in the precision of the points: under autocast grid_sample promotes a
        # bf16 map to float32 at every call (and keeps each copy for the backward pass); one cast
        # here gives the same numbers once. A no-op without autocast.
        maps = [feature.to(reference.dtype) for feature in maps]
        level_tokens = self.level_sampler(maps, reference) + self.level_embed  # (B, L, P, D)

        x_p = self.spatial(level_tokens, point_tokens, reference, maps)  # (B, L+1, P, D)
        x_t = self.semantic(level_tokens, text_tokens, reference, maps, self.level_sampler)
        fused, kl = self.alignment(x_p, x_t)
        pose = self.lifting(fused)  # (B, P, 3)
        pose = pose - pose[:, :1]
        if return_aux:
            return pose, {"kl": kl}
        return pose


def build_model(config):
    """MetaPose from `config.model.*` (see utils/defaults.yaml) and `config.speed.truncate_text`
    / `cache_text` / `fast_sampling` / `sample_then_project` (ways of computing the same thing).
    Missing pretrained files raise MetaPoseError; `null` paths give random initialisation (with
    a warning)."""
    model_cfg = config.model
    image_cfg, text_cfg = model_cfg.image_encoder, model_cfg.text_encoder
    speed = config.get("speed", {})
    image_encoder = build_image_encoder(image_cfg.type, image_cfg.pretrained,
                                        frozen=image_cfg.frozen, width=image_cfg.width)
    text_encoder = build_text_encoder(text_cfg.type, text_cfg.pretrained, text_cfg.mode,
                                      text_cfg.prompt_tokens, width=text_cfg.width,
                                      layers=text_cfg.layers,
                                      truncate=speed.get("truncate_text", True),
                                      cache=speed.get("cache_text", True),
                                      layout=text_cfg.layout,
                                      train_prompts=text_cfg.train_prompts,
                                      prompts=text_cfg.prompts)
    return MetaPose(
        image_encoder, text_encoder,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        deform_heads=model_cfg.deform_heads,
        deform_points=model_cfg.deform_points,
        mlp_ratio=model_cfg.mlp_ratio,
        lift_heads=model_cfg.lift_heads,
        drop_rate=model_cfg.drop_rate,
        drop_path=tuple(model_cfg.drop_path),
        enhancer_drop_path=model_cfg.enhancer_drop_path,
        freeze_image_encoder=image_cfg.frozen,
        fast_sampling=speed.get("fast_sampling", True),
        sample_then_project=speed.get("sample_then_project", True),
    )
