"""utils/atomic_files.py: an atomic write replaces a regular file or creates one, and never
replaces something that is not a regular file (a FIFO, a device, a folder) at the output path."""

import os
import stat

import pytest

from utils.atomic_files import atomic_write_text
from utils.errors import MetaPoseError


def test_a_regular_file_is_replaced(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    atomic_write_text(tmp_path / "fresh.txt", "made")
    assert (tmp_path / "fresh.txt").read_text() == "made"


def test_a_fifo_at_the_output_path_is_left_alone(tmp_path):
    target = tmp_path / "prompts.yaml"
    os.mkfifo(target)
    with pytest.raises(MetaPoseError, match="is a FIFO .*not replace it") as caught:
        atomic_write_text(target, "text")
    assert "Traceback" not in str(caught.value)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["prompts.yaml"]  # no temporary left behind


def test_a_folder_or_a_link_to_a_fifo_is_left_alone(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(MetaPoseError, match="is a folder"):
        atomic_write_text(folder, "text")
    assert folder.is_dir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.json"
    link.symlink_to(fifo)
    with pytest.raises(MetaPoseError, match="FIFO"):
        atomic_write_text(link, "text")
    assert link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)


def test_a_file_where_a_folder_is_needed_is_named(tmp_path):
    """An output below a regular file: the message names that file as the cause (the OS only
    says 'File exists' or 'Not a directory')."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(MetaPoseError) as caught:
        atomic_write_text(blocker / "deeper" / "p.yaml", "text")
    message = str(caught.value)
    assert f"'{blocker}' is a file, not a folder" in message, message
    assert "File exists" not in message and "Not a directory" not in message
    assert blocker.read_text() == "x"


def test_the_output_folder_of_infer_names_a_file_in_the_way(tmp_path):
    from inference.output_folder import OutputFolder

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(MetaPoseError) as caught:
        with OutputFolder(blocker / "out"):
            pass
    assert f"'{blocker}' is a file, not a folder" in str(caught.value), str(caught.value)
