"""Few-shot: exported models hold for unseen images at 1, 2 and 5 images per class.

The exported 8-bit ranges are chosen from held-out statistics; with one or two images per
class the training images' own outputs would say nothing about unseen ones (a lone image's
cosine to its own class is 1.0). These runs train on real image files and check the exported
model on images it never saw. The flower runs need ../shared and skip without it.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import CORAL_EXTRACTOR, FLOWERS, make_dataset, shared_file
from workbench.cli import app
from workbench.core.progress import Reporter
from workbench.heads import imprint_head
from workbench.run import training

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
    assert report["agreement"] >= 0.98 and report["export_ok"] is True
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


def test_a_damaged_export_warns_and_exits_1_but_writes_the_model(
    tmp_path: Path, models: dict[str, Path], five_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head whose 8-bit cosine window is shifted above the cosines it must resolve: held-out
    images all clamp to its bottom, tie, and go to the first class."""
    calibrate = imprint_head.calibrate

    def shifted(*args: object, **kwargs: object) -> tuple[float, tuple[float, float]]:
        scale, (lo, hi) = calibrate(*args, **kwargs)  # type: ignore[arg-type]
        return scale, (hi + 0.05, hi + 0.05 + (hi - lo))

    monkeypatch.setattr(imprint_head, "calibrate", shifted)
    out = tmp_path / "damaged.tflite"
    code, report, stderr = run("imprint", five_classes, "-e", models["uint8"], "-o", out,
                               "--no-whiten", "--json")  # fmt: skip
    assert code == 1
    assert report["export_ok"] is False
    lost, won = (report["export_vs_float"][k] for k in ("float_only_right", "export_only_right"))
    assert lost >= 10 and won == 0 and report["export_vs_float"]["p_value"] < 0.01
    assert f"wrong on {lost} held-out images its float head gets right" in stderr
    assert out.exists() and json.loads(out.with_suffix(".report.json").read_text()) == report


@pytest.mark.parametrize(
    ("lost", "won", "fires"),
    [
        (1, 0, False),  # one image of 24 (the 3 x 30 flower run): chance
        (3, 1, False),
        (0, 5, False),  # the export better: never
        (6, 0, False),  # p = 1/64
        (7, 0, True),  # p = 1/128
        (30, 12, True),  # p = 0.004
        (30, 15, False),  # p = 0.018
    ],
)
def test_the_export_guard_fires_only_beyond_chance(lost: int, won: int, fires: bool) -> None:
    figures = {"float_only_right": lost, "export_only_right": won}
    assert training.check_export(figures, Reporter()) is not fires
    expected = sum(comb(lost + won, k) for k in range(lost, lost + won + 1)) / 2 ** (lost + won)
    assert figures["p_value"] == pytest.approx(expected if lost > won else 1.0)


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
