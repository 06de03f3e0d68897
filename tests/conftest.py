"""Shared fixtures: tiny real models and synthetic image folders, plus ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builders import make_dataset, tiny_extractor, write_model

SHARED = Path(
    os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
CORAL = SHARED / "coral"
FLOWERS = SHARED / "datasets" / "flower_photos"
CORAL_EXTRACTOR = CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the tests' embedding cache out of the user's cache folder."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["WORKBENCH_CACHE_DIR"] = str(path)
    return path


def shared_file(path: Path) -> Path:
    """The path, or skip the test when ../shared (not shipped to users) is absent."""
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only on development machines)")
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny extractors of every supported type, written once per test session."""
    root = tmp_path_factory.mktemp("models")
    built = {}
    for dtype in ("uint8", "int8", "float32"):
        built[dtype] = write_model(root / f"tiny_{dtype}.tflite", tiny_extractor(dtype))
        built[f"{dtype}_2d"] = write_model(
            root / f"tiny_{dtype}_2d.tflite", tiny_extractor(dtype, output_shape="2d")
        )
    return built


@pytest.fixture(scope="session")
def colors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three well-separated colour classes, 12 PNG images each."""
    return make_dataset(tmp_path_factory.mktemp("colors"), per_class=12)


@pytest.fixture(scope="session")
def five_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Colours and stripes, 16 JPEG images each: closer classes, still learnable."""
    return make_dataset(
        tmp_path_factory.mktemp("five"),
        classes=("red", "green", "blue", "hstripes", "vstripes"),
        per_class=16,
        fmt="jpg",
    )
