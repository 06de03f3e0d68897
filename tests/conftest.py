"""Shared fixtures: tiny real models, synthetic image folders, and the CLI's JSON output.

Helpers that tests call directly (model and image builders, ../shared paths, CLI runners)
live in tests/builders.py; this file only holds fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.builders import CORAL as CORAL  # re-exported: test_metadata imports it from here
from tests.builders import (
    CliJson,
    invoke,
    make_dataset,
    make_flowers,
    run_cli,
    tiny_extractor,
    write_model,
)
from tests.builders import shared_file as shared_file  # re-exported, as CORAL


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the tests' embedding cache out of the user's cache folder."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["WORKBENCH_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def cli() -> CliJson:
    """`cli("imprint", data, "-e", model)`: the command's `--json` output, once it exited 0.

    `--json` is added when missing. The command runs in this process (typer's runner);
    `fresh=True` runs it in a new interpreter, as a user does (in `cwd`, if given). A failed
    run fails the test with its exit code and both streams; for commands expected to fail,
    use `tests.builders.invoke` / `run_cli` and `assert_error`.
    """

    def run(*args: object, fresh: bool = False, cwd: Path | None = None) -> Any:
        argv = [str(a) for a in args]
        if "--json" not in argv:
            argv.append("--json")
        outcome = run_cli(*argv, cwd=cwd) if fresh else invoke(*argv)
        assert outcome.code == 0, outcome.describe()
        return outcome.json()

    return run


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


@pytest.fixture
def docs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> Path:
    """A fresh current folder with `flowers/` and `more_flowers/`, for the docs' examples.

    flowers/ has daisy, roses and tulips, 8 images each; more_flowers/ has 8 sunflowers, as
    the README says (one class folder: the model's other classes come from the base).

    The examples use the bundled extractor; here the tiny uint8 one stands in for it, so they
    run in a second (the bundled EfficientNet-Lite0 itself is tested in test_models.py).
    """
    make_flowers(tmp_path / "flowers")
    make_flowers(tmp_path / "more_flowers", classes=("sunflowers",), seed=1)
    monkeypatch.setattr("workbench.models.bundled_model", lambda *name: models["uint8"])
    monkeypatch.chdir(tmp_path)
    return tmp_path
