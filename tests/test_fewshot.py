"""Few-shot: exported models hold for unseen images at 1, 2 and 5 images per class.

The exported 8-bit ranges are chosen from held-out statistics; with one or two images per
class the training images' own outputs would say nothing about unseen ones (a lone image's
cosine to its own class is 1.0). These runs train on real image files and check the exported
model on images it never saw. The flower runs need ../shared and skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import CORAL_EXTRACTOR, FLOWERS, make_dataset, shared_file
from workbench import training
from workbench.cli import app

runner = CliRunner()
TRAINERS = [("imprint",), ("imprint", "--no-whiten"), ("backprop",)]


def run(*args: object) -> tuple[int, dict, str]:
    result = runner.invoke(app, [str(a) for a in args])
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, report, result.stderr


@pytest.fixture(scope="module")
def close_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six colour and stripe classes, 14 noisy JPEGs each (4 held out)."""
    return make_dataset(
        tmp_path_factory.mktemp("close"),
        classes=("red", "green", "blue", "hstripes", "vstripes", "cyan"),
        per_class=14,
        fmt="jpg",
        noise=60,
    )


@pytest.mark.parametrize("cap", [1, 2, 5])
@pytest.mark.parametrize("trainer", TRAINERS, ids=" ".join)
def test_few_shot_exports_agree_with_their_float_heads(
    tmp_path: Path, models: dict[str, Path], close_classes: Path, cap: int, trainer: tuple
) -> None:
    out = tmp_path / "m.tflite"
    code, report, _ = run(*trainer, close_classes, "-e", models["uint8"], "-o", out,
                          "--max-per-class", cap, "--json")  # fmt: skip
    assert code == 0
    assert report["agreement"] >= 0.98 and report["agreement_ok"] is True
    assert report["top_k_accuracy"][0] > 2 / 6  # chance is 1/6
    correct = np.trace(np.asarray(report["confusion_matrix"]))
    assert correct == round(report["top_k_accuracy"][0] * report["num_images"])


@pytest.mark.shared
@pytest.mark.parametrize("cap", [1, 2, 5])
@pytest.mark.parametrize("trainer", TRAINERS, ids=" ".join)
@pytest.mark.parametrize("extractor", ["bundled", "coral"])
def test_few_shot_flowers_hold_for_held_out_photos(
    tmp_path: Path, cap: int, trainer: tuple, extractor: str
) -> None:
    shared_file(FLOWERS)
    chosen = ["-e", shared_file(CORAL_EXTRACTOR)] if extractor == "coral" else []
    code, report, _ = run(*trainer, FLOWERS, *chosen, "-o", tmp_path / "f.tflite",
                          "--max-per-class", cap, "--json")  # fmt: skip
    assert code == 0
    assert report["num_images"] == 780
    assert report["agreement"] >= 0.98
    assert report["top_k_accuracy"][0] >= 0.4  # chance is 0.2; float heads reach 0.47-0.80
    # never flat: held-out images do not all get the same scores
    assert len({tuple(m["predicted"] for m in report["mistakes"][:50])}) > 0
    assert report["top_k_accuracy"][0] >= report["float_top1_accuracy"] - 0.02


def test_a_poor_export_warns_and_exits_1_but_writes_the_model(
    tmp_path: Path, models: dict[str, Path], colors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real run of these tiny classes disagrees; a floor above 100% makes every run "poor".
    monkeypatch.setattr(training, "AGREEMENT_FLOOR", 1.01)
    out = tmp_path / "poor.tflite"
    code, report, stderr = run("imprint", colors, "-e", models["uint8"], "-o", out, "--json")
    assert code == 1
    assert report["agreement_ok"] is False
    assert "float head's top class on only" in stderr
    assert out.exists() and json.loads(out.with_suffix(".report.json").read_text()) == report


def test_curve_scores_every_trainer_at_every_cap_on_one_split(
    models: dict[str, Path], close_classes: Path
) -> None:
    code, result, _ = run("curve", close_classes, "-e", models["uint8"], "--caps", "1,2,5",
                          "--exported-at", "2", "--json", "--no-cache")  # fmt: skip
    assert code == 0
    points = result["points"]
    assert [p["cap"] for p in points] == [1, 2, 5]
    assert [p["train_images"] for p in points] == [6, 12, 30]
    assert result["held_out_images"] == 6 * 4
    for point in points:
        assert set(point["float_top1"]) == {"imprint", "imprint --no-whiten", "backprop"}
    assert set(points[1]["exported_top1"]) == set(points[1]["float_top1"])
    assert min(points[1]["agreement"].values()) >= 0.9
    assert points[0]["exported_top1"] == {}
    table = runner.invoke(
        app, ["curve", str(close_classes), "-e", str(models["uint8"]), "--caps", "1,5"]
    )
    assert table.exit_code == 0 and "Learning curve" in table.stdout


@pytest.mark.parametrize("caps", ["0,2", "a,b", ""])
def test_curve_refuses_bad_caps(models: dict[str, Path], colors: Path, caps: str) -> None:
    result = runner.invoke(app, ["curve", str(colors), "-e", str(models["uint8"]), "--caps", caps])
    assert result.exit_code == 2 and "--caps" in result.stderr
