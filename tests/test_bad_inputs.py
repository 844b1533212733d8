"""Every kind of bad input, end to end through `python train.py`: exit status 2, one `error:`
paragraph on stderr naming the file/key at fault, no traceback (and nothing run from untrusted
files). One tiny dataset and one trained checkpoint serve all cases. train.py reads the
checkpoint file and the labels before it builds the model, so most cases stop within the start-up
time of the interpreter; only the image cases, the weight mismatch and the missing CLIP file
build a (tiny) model."""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from tests.launch import child_env, free_port
from datasets.safe_pickle import load_pickle_safely

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "tests", "tiny.yaml")
PAPER = os.path.join(REPO, "experiments", "human36m", "human36m.yaml")
TRAIN_FRAMES, VAL_FRAMES = 16, 5


class _RunsCode:
    """Unpickling it runs `touch <marker>` (what a malicious file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class World:
    """Files shared by the cases: a tiny synthetic set, a trained checkpoint, broken copies."""

    def __init__(self, root):
        self.root = root
        self.data = self.path("data")
        self.logs = self.path("logs")
        self.marker = self.path("MARKER")

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def base_args(self, run_name, *extra):
        return ["--config", TINY, "--logdir", self.logs, "--run-name", run_name,
                f"data.root={self.data}", *extra]  # later overrides win

    @property
    def checkpoint(self):
        return self.path("logs", "trained", "checkpoints", "last.pt")

    def val_entries(self):
        return load_pickle_safely(os.path.join(self.data, "h36m_validation.pkl"))

    def val_image(self, index, image_dir=None):
        name = self.val_entries()[index]["image"]
        return os.path.join(image_dir or os.path.join(self.data, "images"), name)

    def label_dir(self, name, entries, split="train"):
        """A data root holding only `entries` as its `split` label file."""
        folder = self.path("labels", name)
        os.makedirs(folder, exist_ok=True)
        file_name = "h36m_train.pkl" if split == "train" else "h36m_validation.pkl"
        with open(os.path.join(folder, file_name), "wb") as handle:
            pickle.dump(entries, handle, protocol=4)
        return folder

    def image_dir(self, name, damage):
        """A copy of the image folder with `damage(path_of)` applied."""
        folder = self.path("images", name)
        shutil.copytree(os.path.join(self.data, "images"), folder)
        damage(lambda index: self.val_image(index, folder))
        return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from datasets.synthetic import generate_synthetic

    space = World(str(tmp_path_factory.mktemp("bad_inputs")))
    generate_synthetic(space.data, TRAIN_FRAMES, VAL_FRAMES, seed=0, verbose=False)
    # One epoch of two steps, in this process (a subprocess would only add its start-up time).
    status = train.main(space.base_args("trained", "train.epochs=1", "train.batch_size=8",
                                        "eval.num_visualize=0"))
    assert status == 0 and os.path.isfile(space.checkpoint)
    return space


def _train_py(args, processes=1, env=None):
    if processes == 1:
        command = [sys.executable, os.path.join(REPO, "train.py")] + args
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={free_port()}", os.path.join(REPO, "train.py")] + args
    return subprocess.run(command, cwd=REPO, env=child_env(**(env or {})), capture_output=True,
                          text=True, timeout=300)


def _first_line(stderr):
    return stderr.strip().splitlines()[0] if stderr.strip() else ""


# ---------------------------------------------------------------------------------------------
# The cases. Each builds its command line from the world (creating the broken file it needs)
# and lists the words its message must hold.


def _yaml(world, name, text):
    path = world.path(name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _entries_with(world, change):
    entries = load_pickle_safely(os.path.join(world.data, "h36m_train.pkl"))
    change(entries)
    return entries


def _set(index, key, value):
    def change(entries):
        entries[index][key] = value
    return change


def _nan_joint(entries):
    entries[3]["joints_3d"] = np.array(entries[3]["joints_3d"], dtype=np.float64)
    entries[3]["joints_3d"][5, 2] = np.nan


def _pop(index, key):
    def change(entries):
        entries[index].pop(key)
    return change


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _truncated_checkpoint(world):
    with open(world.checkpoint, "rb") as handle:
        return _write(world.path("truncated.pt"), handle.read()[:5000])


def _state_dict_only(world):
    path = world.path("weights_only.pt")
    torch.save(torch.load(world.checkpoint, weights_only=True)["model"], path)
    return path


def _malicious_checkpoint(world):
    path = world.path("malicious.pt")
    torch.save({"model": _RunsCode(world.marker)}, path)
    return path


def _changed_checkpoint(name, change):
    """A maker of a copy of the trained checkpoint with `change(checkpoint_dict)` applied."""
    def make(world):
        checkpoint = torch.load(world.checkpoint, weights_only=True)
        change(checkpoint)
        path = world.path(name)
        torch.save(checkpoint, path)
        return path
    return make


def _drop_last_optimizer_parameter(checkpoint):
    checkpoint["optimizer"]["param_groups"][0]["params"].pop()


def _nan_weight(checkpoint):
    key = sorted(checkpoint["model"])[-1]
    checkpoint["model"][key].view(-1)[0] = float("nan")


def _garbage_labels(world):
    folder = world.path("labels", "garbage")
    os.makedirs(folder)
    _write(os.path.join(folder, "h36m_train.pkl"), b"\x80\x04these bytes are no pickle")
    return folder


def _missing_last_val_image(path_of):
    os.remove(path_of(VAL_FRAMES - 1))


def _garbage_last_val_image(path_of):
    _write(path_of(VAL_FRAMES - 1), b"this is not a JPEG\n")


def _huge_last_val_image(path_of):
    """The JPEG of the last frame with a header that declares 60000x60000 pixels."""
    with open(path_of(VAL_FRAMES - 1), "rb") as handle:
        data = bytearray(handle.read())
    frame = data.find(b"\xff\xc0")
    data[frame + 5:frame + 9] = (60000).to_bytes(2, "big") * 2
    _write(path_of(VAL_FRAMES - 1), bytes(data))


def _cut_last_val_image(path_of):
    with open(path_of(VAL_FRAMES - 1), "rb") as handle:
        data = handle.read()
    _write(path_of(VAL_FRAMES - 1), data[:len(data) // 2])


def _evaluate(world, name, *extra):
    return world.base_args(name, "--eval", "--checkpoint", world.checkpoint, *extra)


CASES = {
    # -- configuration and command line (nothing is built) --
    "missing config file": (
        lambda w: ["--config", w.path("nowhere.yaml"), "--logdir", w.logs],
        ["nowhere.yaml", "does not exist"]),
    "YAML syntax error": (
        lambda w: ["--config", _yaml(w, "syntax.yaml", "train:\n  epochs: 3\n lr: 0.1\n"),
                   "--logdir", w.logs],
        ["syntax.yaml", "not valid YAML at line 3"]),
    "unknown key": (
        lambda w: ["--config", _yaml(w, "typo.yaml", f"_base_: {TINY}\ntrain:\n  epoch: 3\n"),
                   "--logdir", w.logs],
        ["typo.yaml", "unknown config key 'train.epoch'", "Did you mean 'train.epochs'?"]),
    "wrong value type": (
        lambda w: w.base_args("type", "train.batch_size=big"),
        ["'train.batch_size'", "'big'", "must be an integer"]),
    "unknown image encoder (config)": (
        lambda w: w.base_args("enc", "model.image_encoder.type=hrnet_64"),
        ["'model.image_encoder.type'", "'hrnet_64'", "'hrnet_32', 'hrnet_48'"]),
    "unknown image encoder (--image-encoder)": (
        lambda w: w.base_args("enc", "--image-encoder", "hrnet_64"),
        ["--image-encoder", "'hrnet_64'", "hrnet_32", "hrnet_48"]),
    "unknown text encoder (--text-encoder)": (
        lambda w: w.base_args("enc", "--text-encoder", "ViT-H/14"),
        ["--text-encoder", "'ViT-H/14'", "ViT-B/32", "ViT-L/14"]),
    "batch size 0": (
        lambda w: w.base_args("range", "train.batch_size=0"),
        ["'train.batch_size'", "is 0, out of range", ">= 1"]),
    "learning rate NaN": (
        lambda w: w.base_args("range", "train.lr=.nan"),
        ["'train.lr'", "is nan, out of range", "> 0"]),
    "image size 0": (
        lambda w: w.base_args("range", "data.image_size=[0,0]"),
        ["'data.image_size'", "[0, 0]", ">= 8 (each entry)"]),
    "embed_dim not divisible by the heads": (
        lambda w: w.base_args("range", "model.embed_dim=36"),
        ["'model.embed_dim'", "36", "not divisible by 8", "'model.lift_heads'"]),
    "_base_ that is not a path": (
        lambda w: ["--config", _yaml(w, "base3.yaml", "_base_: 3\n"), "--logdir", w.logs],
        ["base3.yaml", "'_base_'", "is 3 (int)", "path of the YAML file"]),
    "stale RANK without WORLD_SIZE": (
        lambda w: w.base_args("rank"),
        ["RANK=1 is set but WORLD_SIZE is not", "unset RANK"], {"RANK": "1"}),
    "unwritable log directory": (
        lambda w: ["--config", TINY, "--logdir",
                   os.path.join(_write(w.path("file.txt"), b"a file"), "sub")],
        ["file.txt", "--logdir", "writable"]),
    # -- pretrained weights (the model is built, no data is read) --
    "missing HRNet weights (paper config)": (
        lambda w: ["--config", PAPER, "--logdir", w.logs, "--image-encoder", "hrnet_48",
                   f"data.root={w.data}"],
        ["model.image_encoder.pretrained", "data/pretrained/coco/pose_hrnet_w48_256x192.pth"]),
    "missing CLIP weights": (
        lambda w: w.base_args("clip", "model.text_encoder.pretrained="
                                      + w.path("pretrained", "clip", "ViT-B-32.pt")),
        ["model.text_encoder.pretrained", "data/pretrained/clip/ViT-B-32.pt"]),
    # -- checkpoints (read before any data) --
    "truncated checkpoint (--eval)": (
        lambda w: w.base_args("ck", "--eval", "--checkpoint", _truncated_checkpoint(w)),
        ["truncated.pt", "truncated"]),
    "malicious checkpoint (--eval)": (
        lambda w: w.base_args("ck", "--eval", "--checkpoint", _malicious_checkpoint(w)),
        ["malicious.pt", "system", "refused for safety", "nothing in it was run"]),
    "checkpoint of another encoder width": (
        lambda w: _evaluate(w, "width", "model.image_encoder.width=8"),
        ["last.pt", "'image_encoder.", "(4, 256, 3, 3) in the file", "(8, 256, 3, 3) in the model",
         "model.image_encoder.width (4 in the checkpoint, 8 from command-line override "
         "'model.image_encoder.width=8')"]),
    "truncated checkpoint (--resume)": (
        lambda w: w.base_args("resume1", "--resume", _truncated_checkpoint(w)),
        ["truncated.pt", "truncated"]),
    "foreign checkpoint (--resume)": (
        lambda w: w.base_args("resume0", "--resume",
                              _write(w.path("notes.pt"), b"these are not weights\n")),
        ["notes.pt", "not a PyTorch checkpoint"]),
    "not a training checkpoint (--resume)": (
        lambda w: w.base_args("resume2", "--resume", _state_dict_only(w)),
        ["weights_only.pt", "not a MetaPose training checkpoint", "--checkpoint"]),
    "checkpoint without optimizer state (--resume)": (
        lambda w: w.base_args("resume4", "--resume", _changed_checkpoint(
            "no_optimizer.pt", lambda c: c.pop("optimizer"))(w)),
        ["no_optimizer.pt", "cannot be resumed", "'optimizer'", "is missing"]),
    "checkpoint with a text epoch (--resume)": (
        lambda w: w.base_args("resume5", "--resume", _changed_checkpoint(
            "text_epoch.pt", lambda c: c.update(epoch="1"))(w)),
        ["text_epoch.pt", "'epoch' is '1' (str)", "an integer >= 0"]),
    "checkpoint with a damaged RNG state (--resume)": (
        lambda w: w.base_args("resume6", "--resume", _changed_checkpoint(
            "bad_rng.pt", lambda c: c["rng_states"][0].pop("numpy"))(w)),
        ["bad_rng.pt", "'rng_states[0]' cannot be restored"]),
    "optimizer state of other parameters (--resume)": (
        lambda w: w.base_args("resume7", "--resume", _changed_checkpoint(
            "other_optimizer.pt", _drop_last_optimizer_parameter)(w)),
        ["other_optimizer.pt", "trainable parameters in group 0", "this model has"]),
    "checkpoint with NaN weights (--eval)": (
        lambda w: w.base_args("nan", "--eval", "--checkpoint", _changed_checkpoint(
            "nan_weights.pt", _nan_weight)(w)),
        ["nan_weights.pt", "non-finite weights (NaN or Inf), first in '"]),
    "nothing to resume (--resume)": (
        lambda w: w.base_args("resume3", "--resume"),
        ["found nothing to resume", "last.pt"]),
    # -- label files (the model is built, then the training labels are read) --
    "missing label pickle": (
        lambda w: w.base_args("labels", f"data.root={w.path('no_data')}",
                              "data.synthetic.enabled=false"),
        ["no_data", "h36m_train.pkl", "does not exist", "tools/make_synthetic.py"]),
    "unreadable label pickle": (
        lambda w: w.base_args("labels", "data.root=" + _garbage_labels(w)),
        ["garbage", "h36m_train.pkl", "cannot be loaded", "not a valid pickle"]),
    "label pickle with a missing key": (
        lambda w: w.base_args("labels", "data.root=" + w.label_dir(
            "no_key", _entries_with(w, _pop(2, "joints_2d_cpn")))),
        ["no_key", "entry 2", "'joints_2d_cpn' is missing"]),
    "label pickle with a wrong shape": (
        lambda w: w.base_args("labels", "data.root=" + w.label_dir(
            "shape", _entries_with(w, _set(1, "center", np.zeros(3))))),
        ["shape", "entry 1", "'center'", "(3,)"]),
    "label pickle with a wrong joint count": (
        lambda w: w.base_args("labels", "data.root=" + w.label_dir(
            "joints", _entries_with(w, _set(4, "joints_3d", np.zeros((16, 3)))))),
        ["joints", "entry 4", "'joints_3d'", "(16, 3)", "17 H36M joints"]),
    "label pickle with NaN": (
        lambda w: w.base_args("labels", "data.root=" + w.label_dir(
            "nan", _entries_with(w, _nan_joint))),
        ["nan", "entry 3", "'joints_3d'", "non-finite", "(5, 2)"]),
    "malicious label pickle": (
        lambda w: w.base_args("labels", "data.root=" + w.label_dir(
            "malicious", [_RunsCode(w.marker)])),
        ["malicious", "h36m_train.pkl", "system", "nothing in it was run"]),
    "empty validation set": (
        lambda w: _evaluate(w, "empty", "data.root=" + w.label_dir("empty", [], "validation")),
        ["empty", "h36m_validation.pkl", "no frames"]),
    # -- images (read while evaluating / training) --
    "missing image (in a DataLoader worker)": (
        lambda w: _evaluate(w, "img", "data.num_workers=2", "data.image_dir="
                            + w.image_dir("missing_w", _missing_last_val_image)),
        ["does not exist", "data.image_dir"]),
    "corrupt JPEG": (
        lambda w: _evaluate(w, "img", "data.image_dir="
                            + w.image_dir("garbage", _garbage_last_val_image)),
        ["cannot be decoded", "data.skip_bad_images"]),
    "truncated JPEG": (
        lambda w: _evaluate(w, "img", "data.image_dir="
                            + w.image_dir("cut", _cut_last_val_image)),
        ["truncated JPEG", "data.skip_bad_images"]),
    "JPEG declaring 60000x60000 pixels": (
        lambda w: _evaluate(w, "img", "data.image_dir="
                            + w.image_dir("huge", _huge_last_val_image)),
        ["declares 60000x60000 pixels in its JPEG header", "data.skip_bad_images"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_error(world, name):
    make_args, words, *env = CASES[name]
    args = make_args(world)
    runs = sorted(os.listdir(world.logs))
    result = _train_py(args, env=env[0] if env else None)
    shown = f"{name}: exit {result.returncode}\n{result.stderr[-3000:]}"
    assert sorted(os.listdir(world.logs)) == runs, shown  # a failed start leaves no directory
    assert result.returncode == 2, shown
    assert result.stderr.startswith("error: "), shown
    assert result.stderr.count("\n") == 1, shown  # one paragraph, one line
    assert "Traceback" not in result.stderr + result.stdout, shown
    for word in words:
        assert word in result.stderr, (word, shown)
    assert not os.path.exists(world.marker)  # nothing from an untrusted file ran
    print(f"{name}: {_first_line(result.stderr)[:160]}")


# ---------------------------------------------------------------------------------------------
# Several processes: every rank stops, the message of the failing rank is shown, nobody hangs.


def _no_rank_traceback(stderr):
    """torchrun prints its own traceback (ChildFailedError) when a rank fails; the ranks, which
    run this repository's code, must print none."""
    return f'File "{REPO}/' not in stderr.replace(REPO + "/.venv/", "<venv>/")


def test_more_processes_than_validation_frames(world):
    two = world.label_dir("two_frames", world.val_entries()[:2], "validation")
    result = _train_py(_evaluate(world, "three", f"data.root={two}",
                                 f"data.image_dir={os.path.join(world.data, 'images')}"),
                       processes=3)
    assert result.returncode != 0
    # Every rank meets the problem; torchrun stops the others as soon as the first one exits, so
    # how many get to print it varies.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors, result.stderr[-3000:]
    for line in errors:
        assert "3 processes but only 2 validation frames" in line, result.stderr[-3000:]
    assert _no_rank_traceback(result.stderr), result.stderr[-3000:]


def test_failure_on_one_rank_stops_the_run(world):
    """The last validation image is missing: only rank 1 (which evaluates the second half of
    the frames) meets it. Rank 1 prints why; rank 0, waiting for it in the final reduction,
    says that another process stopped, instead of hanging or printing a traceback."""
    images = world.image_dir("missing_rank1", _missing_last_val_image)
    result = _train_py(_evaluate(world, "rank1", f"data.image_dir={images}"), processes=2)
    assert result.returncode != 0
    missing = world.val_image(VAL_FRAMES - 1, images)
    assert f"error: [rank 1] image '{missing}' does not exist" in result.stderr, \
        result.stderr[-3000:]
    assert "[rank 0]" not in result.stderr or \
        "error: [rank 0] process 0 of 2 stopped because another process" in result.stderr
    assert _no_rank_traceback(result.stderr), result.stderr[-3000:]
