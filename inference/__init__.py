"""Inference on users' images and videos (docs/method.md §5): `Predictor` is the one entry point."""

from inference.people import FrameRequest, Person
from inference.predictor import Predictor

__all__ = ["FrameRequest", "Person", "Predictor"]
