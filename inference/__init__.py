"""Inference on users' images and videos (docs/method.md §5): `Predictor` is the one entry point."""

from inference.predictor import FrameRequest, Person, Predictor

__all__ = ["FrameRequest", "Person", "Predictor"]
