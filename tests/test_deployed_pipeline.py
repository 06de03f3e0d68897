"""The accuracy in a report is the accuracy deployed: a plain pipeline agrees to the image.

The plain pipeline is what pycoral's examples and most scripts do with a retrained model:
Pillow decodes the file in full, converts it to RGB, resizes it bilinearly to the input size,
and the interpreter runs the exported model as it is. workbench's report (training and
`evaluate`) and `classify` must give exactly its results: the same top-1 on every held-out
image and the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.builders import FLOWERS, assert_ok, class_image, invoke, shared_file
from workbench.extract.runtime import Interpreter


def plain_scores(model: Path, files: list[Path]) -> np.ndarray:
    """The exported model's scores through the plain pipeline (no workbench code)."""
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    given, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    _, height, width, _ = given["shape"]
    rows = []
    for path in files:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
        if given["dtype"] == np.int8:
            pixels = (pixels.astype(np.int16) - 128).astype(np.int8)
        interpreter.set_tensor(given["index"], pixels[np.newaxis].astype(given["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(output["index"])[0].astype(np.float64)
        scale, zero = output["quantization"]
        rows.append((raw - zero) * scale if scale else raw)
    return np.asarray(rows)


def held_out(report: dict) -> tuple[list[Path], np.ndarray]:
    """The report's held-out files and their class ids in the model."""
    files, truth = [], []
    for name, paths in report["split"]["test"].items():
        files += [Path(p) for p in paths]
        truth += [report["classes"].index(name)] * len(paths)
    return files, np.asarray(truth)


def check_report_and_classify(model: Path, report: dict) -> None:
    files, truth = held_out(report)
    scores = plain_scores(model, files)
    correct = int(np.sum(scores.argmax(axis=1) == truth))
    assert correct == round(report["top_k_accuracy"][0] * report["num_images"])
    assert report["num_images"] == len(files)
    classified = invoke("classify", model, *files[:5], "--top-k", len(report["classes"]), "--json")
    assert_ok(classified)
    for result, expected in zip(json.loads(classified.stdout)["results"], scores[:5], strict=True):
        got = {entry["id"]: entry["score"] for entry in result["top"]}
        np.testing.assert_allclose([got[i] for i in range(len(expected))], expected, atol=1e-7)


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 16 JPEGs of 500x666 pixels: large enough for a reduced-size decode to
    differ from a full one."""
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(4)
    for style in ("red", "green", "hstripes"):
        (root / style).mkdir()
        for i in range(16):
            small = class_image(style, rng, size=48, noise=40.0)
            small.resize((500, 666), Image.BICUBIC).save(root / style / f"{i:02d}.jpg", quality=85)
    return root


@pytest.mark.parametrize("trainer", ["imprint", "backprop"])
def test_report_and_classify_equal_a_plain_full_decode_pipeline(
    tmp_path: Path, models: dict[str, Path], large_photos: Path, trainer: str
) -> None:
    out = tmp_path / "m.tflite"
    trained = invoke(trainer, large_photos, "-e", models["uint8"], "-o", out, "--json")
    assert_ok(trained)
    report = json.loads(trained.stdout)
    assert report["preprocessing"].endswith("draft=0")
    check_report_and_classify(out, report)


@pytest.mark.shared
@pytest.mark.parametrize("extractor", ["bundled", "coral"])
def test_flowers_report_equals_a_plain_full_decode_pipeline(tmp_path: Path, extractor: str) -> None:
    from tests.builders import CORAL_EXTRACTOR

    shared_file(FLOWERS)
    chosen = ["-e", shared_file(CORAL_EXTRACTOR)] if extractor == "coral" else []
    out = tmp_path / "flowers.tflite"
    trained = invoke("imprint", FLOWERS, *chosen, "-o", out, "--max-per-class", "20", "--json")
    assert_ok(trained)
    check_report_and_classify(out, json.loads(trained.stdout))
