"""utils/input_files.py: every kind of path that is not a regular file is named as what it is,
and nothing blocks on a FIFO or reads a device."""

import os
import signal

import pytest

from utils.errors import MetaPoseError
from utils.input_files import InputFileError, file_problem, read_regular_file, require_file


def test_a_regular_file_is_read(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"\x00\x01")
    assert file_problem(path) is None
    require_file(path, "test file")
    assert read_regular_file(path, "test file") == b"\x00\x01"


def test_every_other_kind_is_named(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path: "is a folder, not a file",
        fifo: "is a FIFO (named pipe), not a regular file",
        "/dev/zero": "is a device, not a regular file",
        dangling: "is a symbolic link to a file that does not exist",
        loop: "is a loop of symbolic links",
        tmp_path / ("x" * 5000): "has a name too long for the file system",
        tmp_path / "missing" / "below": "does not exist",
    }
    for path, problem in cases.items():
        assert file_problem(path) == problem, path
        with pytest.raises(InputFileError) as caught:
            read_regular_file(path, "test file", "Do something.")
        assert caught.value.problem == problem
        assert str(caught.value).endswith(f"{problem}. Do something.")
        with pytest.raises(MetaPoseError, match="Do something"):
            require_file(path, "test file", "Do something.")


def test_a_long_name_is_shortened_in_the_message(tmp_path):
    with pytest.raises(InputFileError) as caught:
        require_file(tmp_path / ("y" * 10_000_000), "label image")
    assert len(str(caught.value)) < 400
    assert "characters)" in str(caught.value)


def test_a_size_limit_refuses_before_reading(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"z" * 1000)
    with pytest.raises(InputFileError, match="holds 1,000 bytes, more than the 999"):
        read_regular_file(path, "test file", max_bytes=999)


# ---------------------------------------------------------------------------------------------
# Every input file of the project says what a path that is not a regular file is


def _load_checkpoint(path):
    from utils.checkpoint import load_checkpoint
    load_checkpoint(path)


def _load_labels(path):
    from datasets.labels import load_labels
    load_labels(path)


def _label_file_of_a_dataset(path):
    from datasets import build_dataset
    from utils.config import load_config
    root, name = os.path.split(os.fspath(path))
    build_dataset(load_config(None, [f"data.root={root}", f"data.train_file={name}",
                                     "data.synthetic.enabled=true"]), "train")


def _train_py(path):
    from tools.import_prompts import read_module
    read_module(path)


def _hrnet_file(path):
    from models.hrnet import build_image_encoder
    build_image_encoder("hrnet_32", path, width=4)


def _clip_file(path):
    from models.text_encoder import build_text_encoder
    build_text_encoder("ViT-B/32", path, "joint", 2, width=32, layers=1)


ROLES = {"checkpoint": _load_checkpoint, "label file": _load_labels,
         "label file of a dataset": _label_file_of_a_dataset, "--train-py": _train_py,
         "HRNet checkpoint": _hrnet_file, "CLIP weights": _clip_file}


@pytest.fixture
def not_regular_files(tmp_path):
    """{path: the phrase that names it} for a folder, a FIFO, a device and a loop of links."""
    fifo = tmp_path / "pipe.pkl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.pkl"
    loop.symlink_to(loop)
    folder = tmp_path / "folder.pkl"
    folder.mkdir()
    return {folder: "is a folder, not a file",
            fifo: "is a FIFO (named pipe), not a regular file",
            "/dev/zero": "is a device, not a regular file",
            loop: "is a loop of symbolic links"}


def _no_hang(seconds):
    """Turns a block (a FIFO opened for reading waits for a writer) into an error."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


@pytest.mark.parametrize("role", list(ROLES))
def test_every_input_file_names_what_a_non_regular_path_is(role, not_regular_files):
    for path, problem in not_regular_files.items():
        _no_hang(20)
        try:
            with pytest.raises(MetaPoseError) as caught:
                ROLES[role](path)
        finally:
            signal.alarm(0)
        message = str(caught.value)
        assert f"'{path}'" in message and f" {problem}. " in message, message
        assert "does not exist" not in message, message


def test_bytes_that_are_not_utf8_are_spelled_out_in_messages(tmp_path):
    from utils.input_files import printable, shown_path
    assert printable("run\udcff") == "run\\xff" and printable("a\ud800b") == "a\\ud800b"
    assert shown_path(b"caf\xff.yaml") == "caf\\xff.yaml"
    with pytest.raises(InputFileError) as caught:
        require_file(os.fsdecode(bytes(tmp_path) + b"/x\xff.yaml"), "config file")
    str(caught.value).encode("utf-8")  # the message itself can be written anywhere
    assert "x\\xff.yaml' does not exist" in str(caught.value)


def test_label_and_detection_files_are_checked_by_kind(tmp_path):
    """The 3DHP label reader and the H36M preparation's CPN reader name a folder as a folder."""
    from datasets.mpi_inf_3dhp_labels import load_3dhp_labels
    from tools.prepare_h36m import load_cpn

    with pytest.raises(MetaPoseError, match="label file .* is a folder, not a file"):
        load_3dhp_labels(str(tmp_path))
    with pytest.raises(MetaPoseError, match="CPN detection file .* is a folder, not a file"):
        load_cpn(str(tmp_path))


def test_eval_names_a_dangling_checkpoint_link_as_such(tmp_path):
    """--eval --checkpoint LINK whose target is gone says so, not "does not exist"."""
    import train

    link = tmp_path / "best.pt"
    link.symlink_to(tmp_path / "gone.pt")
    args = train.parse_args(["--config", "experiments/tests/tiny.yaml", "--eval",
                             "--checkpoint", str(link)])
    config = train.resolve_config(args)
    with pytest.raises(MetaPoseError, match="is a symbolic link to a file that does not exist"):
        train.eval_checkpoint_path(args, config)
