"""The published pose-network names map one to one onto this MetaPose's pose_net state dict, with
equal shapes, for HRNet-W32/W48 and CLIP ViT-B/32 / ViT-L/14 (the layout file lists W32 + ViT-B/32;
the other widths change only the input widths of the level projections and of text_proj)."""

import json
import os
import re
import warnings

import pytest

from models import build_model
from models.published_layout import published_pose_net_key
from utils.config import load_config
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = os.path.join(REPO, "tests", "data", "published_checkpoint_layout.json")
PAPER = os.path.join(REPO, "experiments", "human36m", "human36m.yaml")


def _published_pose_net(hrnet_width=32, text_dim=512):
    """{published pose_net name: shape} for other encoder widths (the JSON is W32 + ViT-B/32)."""
    with open(LAYOUT) as handle:
        entries = json.load(handle)["pose_net_and_prompts"]
    shapes = {}
    for name, shape in entries.items():
        if not name.startswith("pose_net."):
            continue
        shape = list(shape)
        level = re.search(r"(feat_embed|embed_proj)\.(\d)\.weight$", name)
        if level:
            shape[-1] = hrnet_width * 2 ** int(level.group(2))
        if name == "pose_net.text_proj.weight":
            shape[-1] = text_dim
        shapes[name] = shape
    return shapes


def _pose_net_state(overrides):
    # The image encoder's pretrained file does not exist here: weights_from_checkpoint must not
    # look for it. The text encoder is random (its warning is expected).
    config = load_config(PAPER, ["model.text_encoder.pretrained=null"] + overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config, weights_from_checkpoint=True)
    return {key: list(value.shape) for key, value in model.state_dict().items()
            if key.startswith("pose_net.")}


@pytest.mark.parametrize("overrides, hrnet_width, text_dim", [
    ([], 32, 512),
    (["model.image_encoder.type=hrnet_48"], 48, 512),
    (["model.text_encoder.type=ViT-L/14"], 32, 768),
], ids=["W32-ViT-B32", "W48", "ViT-L14"])
def test_every_published_name_maps_one_to_one(overrides, hrnet_width, text_dim):
    published = _published_pose_net(hrnet_width, text_dim)
    ours = _pose_net_state(overrides)
    mapped = {}
    for name, shape in published.items():
        key = published_pose_net_key(name)
        assert key not in mapped, f"{name} and {mapped.get(key)} both map to {key}"
        mapped[key] = name
        assert key in ours, f"{name} -> {key}, which the model does not have"
        assert ours[key] == shape, (name, key, shape, ours[key])
    assert set(ours) == set(mapped), sorted(set(ours) - set(mapped))
    assert len(mapped) == 348


def test_ddp_prefix_is_accepted():
    assert (published_pose_net_key("module.pose_net.SemanticEn.3.embed_proj.2.bias")
            == "pose_net.semantic.blocks.3.resample.2.bias")
    assert published_pose_net_key("pose_net.head.1.weight") == "pose_net.lifting.head.weight"


@pytest.mark.parametrize("name", ["pose_net.coord_embed.scale", "pose_net.SpatialEn.0.norm3.weight",
                                  "learnable_prompts", "image_encoder.conv1.weight",
                                  "pose_net.dis_cross.proj.weight", "pose_net.head.2.weight"])
def test_unknown_names_are_named_in_the_error(name):
    with pytest.raises(MetaPoseError, match=re.escape(repr(name))):
        published_pose_net_key(name)
