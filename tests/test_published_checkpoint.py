"""Checkpoints of the published train.py: a random file in the published layout (names and shapes
from tests/data/published_checkpoint_layout.json, DDP prefixes, epoch/lr/optimizer, OpenAI CLIP
text keys, a few CLIP visual tensors) loads through `train.py --eval` (the published README's seed
command) and through tools/convert_published_checkpoint.py, every tensor where it belongs; broken
files end in one message naming the problem."""

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

import train
from models import build_model
from models.hrnet import HRNet
from models.published_checkpoint import (CheckpointInfo, _encoder_mismatch,
                                         is_published_checkpoint, published_name,
                                         published_pose_net_name)
from models.published_layout import published_pose_net_key
from tests.placeholder_prompts import placeholder_content, write_prompts_file
from tools import convert_published_checkpoint
from utils.checkpoint import (file_sha256, load_checkpoint, load_model_state, load_model_weights,
                              save_checkpoint)
from utils.cli import run_cli
from utils.config import load_config
from utils.errors import MetaPoseError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = os.path.join(REPO, "tests", "data", "published_checkpoint_layout.json")
PAPER = os.path.join(REPO, "experiments", "human36m", "human36m.yaml")
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
# A few tensors of CLIP's image tower (the real file has 152): dropped on conversion.
VISUAL = {"conv1.weight": (768, 3, 32, 32), "class_embedding": (768,), "proj": (768, 512),
          "transformer.resblocks.0.ln_1.weight": (768,)}
SEED_COMMAND = ["--config", PAPER, "--image_encoder", "hrnet_32", "--text_encoder", "ViT-B/32",
                "--eval"]  # the published README's, after `torch.distributed.launch ... train.py`


def random_like(name, shape, generator, dtype=torch.float32):
    if dtype == torch.int64:  # batch-norm counters
        return torch.randint(0, 1000, shape, generator=generator)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=generator) + 0.5
    return torch.randn(shape, generator=generator) * 0.05


def published_file_content(model_entries, seed=0):
    """{"epoch", "lr", "optimizer", "model"} as the published train.py saves it; model_entries:
    {published name: (shape, dtype)}; every key gets DDP's "module." prefix."""
    generator = torch.Generator().manual_seed(seed)
    model = {"module." + name: random_like(name, shape, generator, dtype)
             for name, (shape, dtype) in model_entries.items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3),
                               "exp_avg_sq": torch.zeros(3)}},
                 "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                   "weight_decay": 0.1, "amsgrad": False,
                                   "params": list(range(348))}]}
    return {"epoch": 42, "lr": 6e-4, "optimizer": optimizer, "model": model}


def paper_entries(hrnet_state):
    """Published names and shapes of the paper configuration: pose_net, prompts and the CLIP text
    tower from the layout JSON, the official HRNet keys, a few CLIP visual tensors."""
    with open(LAYOUT, encoding="utf-8") as handle:
        layout = json.load(handle)
    entries = {name: (tuple(shape), torch.float32)
               for name, shape in layout["pose_net_and_prompts"].items()}
    entries.update({name: (tuple(shape), torch.float32)
                    for name, (shape, _) in layout["text_encoder_text_tower"].items()})
    entries.update({"text_encoder.visual." + name: (shape, torch.float32)
                    for name, shape in VISUAL.items()})
    entries.update({"image_encoder." + key: (tuple(value.shape), value.dtype)
                    for key, value in hrnet_state.items()})
    assert len(layout["text_encoder_text_tower"]) == 150 and len(hrnet_state) == 1752
    return entries


def entries_of_model(model):
    """Published names and shapes for any configuration (inverse of the conversion), plus the
    entries the published file has beside them."""
    entries = {published_name(key): (tuple(value.shape), value.dtype)
               for key, value in model.state_dict().items()}
    entries["text_encoder.logit_scale"] = ((), torch.float32)
    entries["text_encoder.visual.proj"] = ((8, 8), torch.float32)
    return entries


def expected_key(name):
    """Where the test expects each published tensor (written from docs/method.md §4, not the converter)."""
    if name == "learnable_prompts":
        return "text_encoder.prompts"
    if name.startswith("text_encoder."):
        return "text_encoder.clip." + name[len("text_encoder."):]
    if name.startswith("pose_net."):
        return published_pose_net_key(name)
    return name


def quiet_build(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(config, weights_from_checkpoint=True)


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper model (W32, ViT-B/32), a random published file for it, and a folder with a tiny
    synthetic validation set at 256x192 and short placeholder prompts."""
    root = tmp_path_factory.mktemp("published")
    model = quiet_build(load_config(PAPER))
    hrnet_state = model.image_encoder.state_dict()
    content = published_file_content(paper_entries(hrnet_state))
    path = str(root / "best_epoch_hrnet_32.bin")
    torch.save(content, path)  # what the published code does (not atomically)
    short = placeholder_content(template="{joint} {description}")  # short: fast on a CPU
    short["descriptions"] = {name: "filler" for name in short["descriptions"]}
    prompts = write_prompts_file(root / "short_prompts.yaml", short)
    overrides = [f"data.root={root / 'data'}", "data.synthetic.enabled=true",
                 "data.synthetic.train_frames=2", "data.synthetic.val_frames=3",
                 "data.num_workers=0", "eval.batch_size=3", "eval.num_visualize=0",
                 f"model.text_encoder.prompts={prompts}"]
    return {"root": root, "model": model, "content": content, "path": path,
            "overrides": overrides}


def assert_every_tensor_arrived(state, content):
    """Each published tensor is in `state` under its expected key with equal values, apart from
    the dropped ones; `state` holds nothing else."""
    seen = set()
    for name, value in content["model"].items():
        name = name[len("module."):]
        if name.startswith("text_encoder.visual.") or name == "text_encoder.logit_scale":
            continue
        key = expected_key(name)
        assert key not in seen and torch.equal(state[key], value.to(state[key].dtype)), name
        seen.add(key)
    assert seen == set(state)


def test_published_file_converts_onto_the_paper_model(paper):
    content, model = paper["content"], paper["model"]
    assert is_published_checkpoint(content)
    state, info = load_model_state(load_checkpoint(paper["path"]), paper["path"])
    assert (info.published, info.epoch, info.lr) == (True, 42, 6e-4)
    assert (info.image_encoder, info.text_encoder, info.prompt_tokens) == \
        ("hrnet_32", "ViT-B/32", 10)
    assert info.used == {"HRNet": 1752, "CLIP text": 149, "prompts": 1, "pose-network": 348}
    assert info.dropped == {"the 'epoch' entry": 1, "the 'lr' entry": 1,
                            "the 'optimizer' entry": 1, "CLIP image tower": len(VISUAL),
                            "CLIP logit scale": 1}
    assert "dropped" in info.summary() and "CLIP image tower (4)" in info.summary()
    load_model_weights(model, state, paper["path"], info)
    assert_every_tensor_arrived(model.state_dict(), content)
    assert sum(p.numel() for p in model.trainable_parameters()) == 14_999_309
    # Without the DDP prefix, and as a bare state dict, the file is the same checkpoint.
    bare = {key[len("module."):]: value for key, value in content["model"].items()}
    for variant in (bare, {**content, "model": bare}):
        assert is_published_checkpoint(variant)
        assert set(load_model_state(variant, "x")[0]) == set(state)
    # This project's own checkpoints are not mistaken for published ones.
    assert not is_published_checkpoint({"model": model.state_dict()})
    assert not is_published_checkpoint(model.state_dict())


def test_seed_command_evaluates_the_published_file_and_its_conversion(paper, monkeypatch,
                                                                        capsys):
    root = paper["root"]
    (root / "repo" / "checkpoint").mkdir(parents=True)
    os.symlink(paper["path"], root / "repo" / "checkpoint" / "best_epoch_hrnet_32.bin")
    monkeypatch.setattr(train, "REPO_ROOT", str(root / "repo"))  # the default --eval path
    logs = str(root / "logs")
    assert train.main(SEED_COMMAND + ["--logdir", logs, "--run-name", "published",
                                      *paper["overrides"]]) == 0
    with open(os.path.join(logs, "published", "eval.json"), encoding="utf-8") as handle:
        published = json.load(handle)
    log = open(os.path.join(logs, "published", "log.txt"), encoding="utf-8").read()
    assert "published checkpoint (hrnet_32, CLIP ViT-B/32, 10 prompts per joint, epoch 42)" in log
    assert published["frames"] == 3 and published["epoch"] == 42 and published["p1"] > 0

    out = str(root / "converted.pt")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert_published_checkpoint.main, ["--checkpoint", paper["path"], "--out", out])
    assert exit_info.value.code == 0 and "wrote" in capsys.readouterr().out
    converted = load_checkpoint(out)
    assert converted["format"] == "metapose-weights-v1" and converted["epoch"] == 42
    assert converted["source"]["sha256"] == file_sha256(paper["path"])
    # the source is named by its file name: no folder of the converting machine is recorded
    assert converted["source"]["file"] == os.path.basename(paper["path"])
    assert "path" not in converted["source"]
    assert str(paper["root"]) not in repr({k: v for k, v in converted.items() if k != "model"})
    assert (converted["image_encoder"], converted["text_encoder"]) == ("hrnet_32", "ViT-B/32")
    assert not is_published_checkpoint(converted)
    assert_every_tensor_arrived(converted["model"], paper["content"])

    assert train.main(SEED_COMMAND + ["--checkpoint", out, "--logdir", logs, "--run-name",
                                      "converted", *paper["overrides"]]) == 0
    with open(os.path.join(logs, "converted", "eval.json"), encoding="utf-8") as handle:
        again = json.load(handle)
    assert (again["p1"], again["p2"], again["frames"]) == \
        (published["p1"], published["p2"], published["frames"])


def test_other_encoder_widths_name_the_flags_to_pass(paper):
    """A W48 file (HRNet-W48 trunk, W48-wide level projections) against the W32 model; a CLIP
    ViT-L/14-wide text tower; another prompt count."""
    content, model = paper["content"], paper["model"]
    w48 = {key: value for key, value in content["model"].items()
           if not key.startswith("module.image_encoder.")}
    w48.update({"module.image_encoder." + key: value
                for key, value in HRNet(48).state_dict().items()})
    for level in range(4):
        w48[f"module.pose_net.feat_embed.{level}.weight"] = torch.zeros(128, 48 * 2 ** level)
    state, info = load_model_state({**content, "model": w48}, "w48.bin")
    assert info.image_encoder == "hrnet_48"
    with pytest.raises(MetaPoseError, match=r"'w48\.bin' is a published checkpoint of hrnet_48 "
                                            r"\(level widths 48/96/192/384\).*HRNet width 32; "
                                            r"pass model\.image_encoder\.type=hrnet_48"):
        load_model_weights(model, state, "w48.bin", info)

    wide_text = {**model.state_dict(), "text_encoder.clip.positional_embedding":
                 torch.zeros(77, 768)}
    info = CheckpointInfo(published=True, hrnet_width=32, text_width=768,
                          text_encoder="ViT-L/14", image_encoder="hrnet_32")
    error = _encoder_mismatch(model.state_dict(), info, "l14.bin")
    assert "CLIP ViT-L/14 text tower (width 768)" in str(error)
    assert "pass model.text_encoder.type=ViT-L/14" in str(error)
    assert _encoder_mismatch(wide_text, info, "l14.bin") is None

    fewer = {**content["model"], "module.learnable_prompts": torch.zeros(17 * 4, 512)}
    state, info = load_model_state({**content, "model": fewer}, "p4.bin")
    with pytest.raises(MetaPoseError, match="4 prompt tokens per joint.*prompt_tokens=4"):
        load_model_weights(model, state, "p4.bin", info)


# --------------------------------------------------------------- tiny files: errors, fine-tuning

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("published_tiny")
    from datasets.synthetic import generate_synthetic

    generate_synthetic(str(root / "data"), 16, 5, seed=0, verbose=False)
    config = load_config(TINY, [f"data.root={root / 'data'}"])
    model = quiet_build(config)
    return {"root": root, "config": config, "entries": entries_of_model(model),
            "args": ["--config", TINY, "--logdir", str(root / "logs"), f"data.root={root / 'data'}",
                     "train.epochs=1"]}


def write_tiny_file(tiny, name, change=None):
    content = published_file_content(tiny["entries"], seed=1)
    if change:
        change(content["model"])
    path = str(tiny["root"] / name)
    torch.save(content, path)
    return path, content


def run_main(main, args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    return exit_info.value.code, capsys.readouterr()


def test_fine_tuning_from_a_published_file_keeps_its_frozen_prompts(tiny, capsys):
    path, content = write_tiny_file(tiny, "tiny.bin")
    assert train.main(tiny["args"] + ["--checkpoint", path, "--run-name", "finetune"]) == 0
    run = tiny["root"] / "logs" / "finetune"
    log = (run / "log.txt").read_text(encoding="utf-8")
    assert "weights only: a fresh optimizer" in log and "converted in memory" in log
    last = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert last["epoch"] == 1
    torch.testing.assert_close(last["model"]["text_encoder.prompts"],
                               content["model"]["module.learnable_prompts"], rtol=0, atol=0)
    name = "module.pose_net.head.1.weight"
    assert not torch.equal(last["model"][published_pose_net_key(name[7:])], content["model"][name])


def test_visualize_tool_draws_a_published_file(tiny, capsys):
    from tools import visualize

    path, _ = write_tiny_file(tiny, "tiny_visualize.bin")
    out = tiny["root"] / "published.png"
    code, output = run_main(visualize.main, ["--config", TINY, "--checkpoint", path, "--out",
                                             str(out), "--num", "2", "--device", "cpu",
                                             f"data.root={tiny['root'] / 'data'}"], capsys)
    assert code == 0 and out.stat().st_size > 0, output.err


def test_infer_tool_runs_a_published_file(tiny, capsys):
    from tools import infer

    path, _ = write_tiny_file(tiny, "tiny_infer.bin")
    image_dir = tiny["root"] / "data" / "images"
    sequence = sorted(image_dir.iterdir())[0]
    out = tiny["root"] / "infer"
    code, output = run_main(infer.main, ["--config", TINY, "--checkpoint", path, "--input",
                                         str(sorted(sequence.iterdir())[0]), "--out", str(out),
                                         "--action", "Eating", "--no-render"], capsys)
    assert code == 0, output.err
    (record,) = json.loads((out / "predictions.json").read_text())["frames"]
    assert np.isfinite(record["people"][0]["joints_3d"]).all()


def _extra(model):
    model["module.pose_net.head.2.weight"] = torch.zeros(3, 3)


def _missing(model):
    del model["module.pose_net.head.1.weight"]


def _foreign(model):
    model["module.teacher.weight"] = torch.zeros(3)


@pytest.mark.parametrize("change, message", [
    (_extra, r"holds 'pose_net\.head\.2\.weight', which is not a tensor of the published"),
    (_missing, r"lacks 'pose_net\.head\.1\.weight' \(this model's 'pose_net\.lifting\.head\."
               r"weight'\)"),
    (_foreign, r"holds 'teacher\.weight', which is not a tensor of the published"),
], ids=["extra pose_net tensor", "missing pose_net tensor", "foreign tensor"])
def test_broken_published_files_fail_naming_the_tensor(tiny, capsys, change, message):
    path, _ = write_tiny_file(tiny, "broken.bin", change)
    out = str(tiny["root"] / "broken_converted.pt")
    for main, args in ((convert_published_checkpoint.main,
                        ["--checkpoint", path, "--out", out, "--config", TINY]),
                       (train.main, tiny["args"] + ["--eval", "--checkpoint", path,
                                                    "--run-name", "broken"])):
        code, output = run_main(main, args, capsys)
        assert code == 2 and output.err.startswith("error: ") and output.err.count("\n") == 1
        assert path in output.err
        assert re.search(message, output.err), output.err
    assert not os.path.exists(out)


def test_tool_refuses_files_that_are_not_published_checkpoints(tiny, capsys):
    ours = str(tiny["root"] / "ours.pt")
    save_checkpoint({"model": quiet_build(tiny["config"]).state_dict()}, ours)
    code, output = run_main(convert_published_checkpoint.main,
                            ["--checkpoint", ours, "--out", str(tiny["root"] / "x.pt")], capsys)
    assert code == 2 and "is not a checkpoint of the published train.py" in output.err
    assert "needs no conversion" in output.err
    junk = tiny["root"] / "junk.bin"
    junk.write_bytes(b"no checkpoint at all")
    code, output = run_main(convert_published_checkpoint.main,
                            ["--checkpoint", str(junk), "--out", str(tiny["root"] / "x.pt")],
                            capsys)
    assert code == 2 and "is not a PyTorch checkpoint" in output.err
    # A tiny published file against the paper configuration: the width it has, the flag to pass.
    path, _ = write_tiny_file(tiny, "tiny_for_paper.bin")
    code, output = run_main(convert_published_checkpoint.main,
                            ["--checkpoint", path, "--out", str(tiny["root"] / "x.pt")], capsys)
    assert code == 2 and "HRNet width 4" in output.err
    assert "pass model.image_encoder.width=4" in output.err


def test_every_published_pose_net_name_round_trips():
    with open(LAYOUT, encoding="utf-8") as handle:
        names = [name for name in json.load(handle)["pose_net_and_prompts"]
                 if name.startswith("pose_net.")]
    assert len(names) == 348
    for name in names:
        assert published_pose_net_name(published_pose_net_key(name)) == name
    assert published_name("text_encoder.prompts") == "learnable_prompts"
    assert published_name("text_encoder.clip.ln_final.bias") == "text_encoder.ln_final.bias"
    assert published_pose_net_name("pose_net.no.such.key") is None
