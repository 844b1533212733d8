"""Shared pytest fixtures (keep each one small and distinctly named)."""

import os

# One compute thread per process: on small shared CPUs, OpenMP threads of several processes
# (pytest, DataLoader workers, torchrun ranks) spin against each other and a step can run 20x
# slower. Subprocesses started by tests inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one single-threaded test process per core the suite may use,
    at most 4, because each worker holds its own paper-size models (about 2 GB at peak). The
    cores are counted as training counts them (affinity and cgroup quota)."""
    from utils.cpu_threads import usable_cores

    return min(usable_cores(), 4)


@pytest.fixture
def tiny_h36m_dir(tmp_path):
    """A folder with h36m_train.pkl (6 frames), h36m_validation.pkl (5) and full-frame JPEGs."""
    from tests.tiny_h36m import write_dataset

    write_dataset(str(tmp_path), train_frames=6, val_frames=5, full_frames=True)
    return tmp_path
