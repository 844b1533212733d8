"""The published names of the pose network and where each lives in this project's MetaPose.

The authors' `train.py` saves the pose network under `pose_net.*` (docs/method.md §4;
`tests/data/published_checkpoint_layout.json` lists every name and shape). This project
keeps the same tensors, same shapes, under names that say what they are. `PUBLISHED_RENAMES`
is the whole map: an ordered list of (published pattern, our key) rules, each matched against
the whole name after `pose_net.`; the first rule that matches gives the key. Index groups
(block i, level l) carry over unchanged.

The other published entries are not the pose network's: `image_encoder.*` keeps the official
HRNet names here too, `text_encoder.*` and `learnable_prompts` belong to the text encoder
(models/text_encoder.py and the published-checkpoint converter).
"""

import re

from utils.errors import MetaPoseError

PUBLISHED_PREFIX = "pose_net."
OUR_PREFIX = "pose_net."

_LINEAR = r"\.(weight|bias)"  # the leaf of a Linear or LayerNorm
_BLOCK = r"(\d+)"

# (published name after `pose_net.`, our key after `pose_net.`), first match wins.
PUBLISHED_RENAMES = (
    # Modality tokens (docs/method.md §2.3)
    (r"coord_embed" + _LINEAR, r"tokens.point_embed.\1"),
    (r"Spatial_pos_embed", r"tokens.point_pos"),
    (r"text_proj" + _LINEAR, r"tokens.text_embed.\1"),
    (r"Spatial_txt_embed", r"tokens.text_pos"),
    (r"feat_embed\.(\d+)" + _LINEAR, r"tokens.level_embed.\1.\2"),
    (r"Spatial_img_embed", r"tokens.level_pos"),
    # Deformable attention inside either enhancer (docs/method.md §2.4)
    (r"SpatialEn\.(\d+)\.de_att\.(sampling_offsets|attention_weights)" + _LINEAR,
     r"spatial.blocks.\1.attn.\2.\3"),
    (r"SpatialEn\.(\d+)\.de_att\.embed_proj\.(\d+)" + _LINEAR,
     r"spatial.blocks.\1.attn.sample_proj.\2.\3"),
    (r"SemanticEn\.(\d+)\.de_att\.(sampling_offsets|attention_weights)" + _LINEAR,
     r"semantic.blocks.\1.attn.\2.\3"),
    (r"SemanticEn\.(\d+)\.de_att\.embed_proj\.(\d+)" + _LINEAR,
     r"semantic.blocks.\1.attn.sample_proj.\2.\3"),
    # Spatial-Driven enhancement blocks (docs/method.md §2.5)
    (r"SpatialEn\.(\d+)\.norm1" + _LINEAR, r"spatial.blocks.\1.norm_query.\2"),
    (r"SpatialEn\.(\d+)\.norm2" + _LINEAR, r"spatial.blocks.\1.norm_mlp.\2"),
    (r"SpatialEn\.(\d+)\.mlp\.(fc1|fc2)" + _LINEAR, r"spatial.blocks.\1.mlp.\2.\3"),
    # Semantic-Driven enhancement blocks and their shared query table (docs/method.md §2.6)
    (r"query_embed\.weight", r"semantic.query_pos"),
    (r"SemanticEn\.(\d+)\.norm1" + _LINEAR, r"semantic.blocks.\1.norm_query.\2"),
    (r"SemanticEn\.(\d+)\.offsets" + _LINEAR, r"semantic.blocks.\1.ref_step.\2"),
    (r"SemanticEn\.(\d+)\.embed_proj\.(\d+)" + _LINEAR, r"semantic.blocks.\1.resample.\2.\3"),
    (r"SemanticEn\.(\d+)\.norm2" + _LINEAR, r"semantic.blocks.\1.norm_sampled.\2"),
    (r"SemanticEn\.(\d+)\.norm3" + _LINEAR, r"semantic.blocks.\1.norm_mlp.\2"),
    (r"SemanticEn\.(\d+)\.mlp\.(fc1|fc2)" + _LINEAR, r"semantic.blocks.\1.mlp.\2.\3"),
    # Transformation alignment (docs/method.md §2.7)
    (r"dist_proj" + _LINEAR, r"alignment.gaussian.\1"),
    (r"fusion\.(\d+)" + _LINEAR, r"alignment.fusion.\1.\2"),
    (r"dis_cross\.norm" + _LINEAR, r"alignment.cross_attn.norm_query.\1"),
    (r"dis_cross\.text_norm" + _LINEAR, r"alignment.cross_attn.norm_prompt.\1"),
    (r"dis_cross\.(query|key|value)" + _LINEAR, r"alignment.cross_attn.\1.\2"),
    # Lifting (docs/method.md §2.8); the blocks keep their inner names
    (r"scale_pos_embed", r"lifting.level_pos"),
    (r"scale_blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)" + _LINEAR,
     r"lifting.level_blocks.\1.\2.\3"),
    (r"joint_pos_embed", r"lifting.joint_pos"),
    (r"joint_blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)" + _LINEAR,
     r"lifting.joint_blocks.\1.\2.\3"),
    (r"head\.0" + _LINEAR, r"lifting.norm.\1"),
    (r"head\.1" + _LINEAR, r"lifting.head.\1"),
)

_COMPILED = tuple((re.compile(pattern), replacement) for pattern, replacement in PUBLISHED_RENAMES)


def published_pose_net_key(name):
    """Our MetaPose state-dict key of the published pose-network tensor `name`.

    name: e.g. "pose_net.SemanticEn.2.embed_proj.1.weight" (a leading DDP "module." is
    accepted). Returns e.g. "pose_net.semantic.blocks.2.resample.1.weight". Raises
    MetaPoseError for a name that is not a published pose-network tensor.
    """
    full = name
    if name.startswith("module."):
        name = name[len("module."):]
    if name.startswith(PUBLISHED_PREFIX):
        rest = name[len(PUBLISHED_PREFIX):]
        for pattern, replacement in _COMPILED:
            match = pattern.fullmatch(rest)
            if match:
                return OUR_PREFIX + match.expand(replacement)
    raise MetaPoseError(
        f"{full!r} is not a tensor of the published MetaPose pose network (expected a "
        "'pose_net.' name such as pose_net.coord_embed.weight or pose_net.SpatialEn.0.norm1."
        "weight, as in tests/data/published_checkpoint_layout.json): the checkpoint is "
        "not in the published layout, or was written by a different version of that code.")
