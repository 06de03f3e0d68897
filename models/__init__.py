"""Models shipped with workbench (installed as `workbench.models`); see README.md here."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_EXTRACTOR = "efficientnet_lite0_extractor.tflite"


def bundled_model(name: str = DEFAULT_EXTRACTOR) -> Path:
    """Path of a model file shipped in this package, wherever workbench is installed."""
    return Path(str(resources.files(__name__).joinpath(name)))
