"""The bundled extractor: present wherever workbench is installed, Edge TPU-ready, documented."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import FLOWERS, shared_file
from workbench.cli import app
from workbench.extract.runtime import load_model
from workbench.models import DEFAULT_EXTRACTOR, bundled_model
from workbench.report.inspection import inspect_model

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "models" / "README.md"


def test_bundled_extractor_is_a_full_integer_224_to_1280_model() -> None:
    path = bundled_model()
    assert path.name == DEFAULT_EXTRACTOR and path.is_file()
    model = load_model(path)
    assert model.input.shape == (1, 224, 224, 3) and model.input.dtype == np.uint8
    assert (model.input.scale, model.input.zero_point) == (1.0, 0)  # raw pixels
    assert model.output.shape == (1, 1280) and model.output.dtype == np.uint8
    inspection = inspect_model(path)
    assert inspection.status == "maps", inspection.summary
    assert inspection.warnings == []


def test_readme_states_the_shipped_files_checksum() -> None:
    digest = hashlib.sha256(bundled_model().read_bytes()).hexdigest()
    assert digest in README.read_text()


def test_extractor_defaults_to_the_bundled_model(tmp_path: Path, colors: Path) -> None:
    out = tmp_path / "m.tflite"
    result = runner.invoke(app, ["imprint", str(colors), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Path(report["extractor"]).name == DEFAULT_EXTRACTOR
    assert report["top_k_accuracy"][0] == 1.0


@pytest.mark.shared
def test_bundled_extractor_on_flowers_beats_coral_mobilenet_v1(tmp_path: Path) -> None:
    flowers = shared_file(FLOWERS)
    imprint = runner.invoke(app, ["imprint", str(flowers), "-o", str(tmp_path / "i.tflite"),
                                  "--json"])  # fmt: skip
    assert imprint.exit_code == 0, imprint.output
    imprinted = json.loads(imprint.stdout)
    assert imprinted["top_k_accuracy"][0] >= 0.85  # Coral's MobileNet v1: 0.79
    assert imprinted["agreement"] >= 0.99
    backprop = runner.invoke(app, ["backprop", str(flowers), "-o", str(tmp_path / "b.tflite"),
                                   "--json"])  # fmt: skip
    assert backprop.exit_code == 0, backprop.output
    trained = json.loads(backprop.stdout)
    assert trained["top_k_accuracy"][0] >= 0.90  # Coral's MobileNet v1: 0.87
    assert trained["agreement"] >= 0.99
