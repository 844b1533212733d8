"""Shared pytest fixtures (keep each one small and distinctly named)."""

import pytest


@pytest.fixture
def tiny_h36m_dir(tmp_path):
    """A folder with h36m_train.pkl (6 frames), h36m_validation.pkl (5) and full-frame JPEGs."""
    from tests.tiny_h36m import write_dataset

    write_dataset(str(tmp_path), train_frames=6, val_frames=5, full_frames=True)
    return tmp_path
