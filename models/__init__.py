"""MetaPose models: `build_model(config)` builds the full network (models/metapose.py)."""

from models.metapose import MetaPose, build_model

__all__ = ["MetaPose", "build_model"]
