"""Acceptance on real data: flower_photos with Coral's MobileNet v1 extractor (../shared).

Skipped where ../shared is absent; users do not have it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from typer.testing import CliRunner

from tests.builders import CORAL, CORAL_EXTRACTOR, FLOWERS, no_edgetpu_runtime, shared_file
from workbench.cli import app
from workbench.data.images import Preprocessing, load_input

pytestmark = pytest.mark.shared
runner = CliRunner()


@pytest.fixture(scope="module")
def flowers_imprint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    shared_file(FLOWERS)
    extractor = shared_file(CORAL_EXTRACTOR)
    out = tmp_path_factory.mktemp("flowers") / "flowers.tflite"
    result = runner.invoke(
        app, ["imprint", str(FLOWERS), "--extractor", str(extractor), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_imprint_at_defaults_beats_coral(flowers_imprint: tuple[Path, dict]) -> None:
    _, report = flowers_imprint
    assert report["settings"] == {
        "test_ratio": 0.25, "max_per_class": 200, "seed": 0, "whiten": True,
    }  # fmt: skip
    assert report["num_images"] == 780
    assert report["top_k_accuracy"][0] >= 0.80  # Coral's own pipeline: 0.79
    assert report["agreement"] >= 0.98  # the floor issue 11 sets for every cap


def test_bare_interpreter_gives_the_same_top1_as_classify(
    flowers_imprint: tuple[Path, dict],
) -> None:
    model, report = flowers_imprint
    images = [Path(p) for files in report["split"]["test"].values() for p in files[:8]]
    result = runner.invoke(app, ["classify", str(model), *map(str, images), "--json"])
    assert result.exit_code == 0, result.output
    classified = [item["top"][0]["id"] for item in json.loads(result.stdout)["results"]]

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    prep = Preprocessing(224, 224, "uint8")
    bare = []
    for image in images:
        interpreter.set_tensor(inp["index"], load_input(image, prep))
        interpreter.invoke()
        bare.append(int(np.argmax(interpreter.get_tensor(outp["index"])[0])))
    assert bare == classified


def test_no_whiten_is_coral_imprinting_and_still_at_least_coral(tmp_path: Path) -> None:
    extractor = shared_file(CORAL_EXTRACTOR)
    result = runner.invoke(
        app,
        ["imprint", str(shared_file(FLOWERS)), "-e", str(extractor), "-o",
         str(tmp_path / "plain.tflite"), "--no-whiten", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["top_k_accuracy"][0] >= 0.79 and report["agreement"] >= 0.98


@no_edgetpu_runtime
def test_edgetpu_extractor_without_an_edgetpu_is_refused(tmp_path: Path) -> None:
    extractor = shared_file(CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite")
    result = runner.invoke(
        app, ["imprint", str(shared_file(FLOWERS)), "-e", str(extractor), "-o", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "CPU build" in result.stderr


def test_backprop_at_defaults_beats_coral(tmp_path: Path) -> None:
    shared_file(FLOWERS)
    extractor = shared_file(CORAL_EXTRACTOR)
    out = tmp_path / "flowers_backprop.tflite"
    result = runner.invoke(
        app, ["backprop", str(FLOWERS), "--extractor", str(extractor), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["epochs"] == 100 and report["head"]["num_train"] == 1000
    assert report["head"]["reg_choice"]["held_out_images"] == 1000  # all of them, 3 folds
    assert report["top_k_accuracy"][0] >= 0.89  # Coral-style backprop: 0.87
    assert report["agreement"] >= 0.98  # the floor issue 11 sets for every cap
