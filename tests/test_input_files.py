"""utils/input_files.py: every kind of path that is not a regular file is named as what it is,
and nothing blocks on a FIFO or reads a device."""

import os

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
