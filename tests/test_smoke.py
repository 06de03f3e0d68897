"""The smoke subset (`pytest -m smoke`): the installed `workbench` command, as a user runs it.

One small model is trained (imprinting and backprop), exported, evaluated and classified with
the bundled extractor, each command in a fresh process started from a folder outside the
project. CI runs this subset on every Python the README promises against a non-editable install
(`pip install .`) and a copy of tests/ outside the clone, so it also checks what an installed
package ships (the console script, the bundled extractor) rather than what the clone holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.builders import Outcome, assert_ok, make_flowers

pytestmark = pytest.mark.smoke

CLASSES = ("daisy", "roses", "tulips")


def workbench(*args: object, cwd: Path) -> Outcome:
    """The `workbench` console script of this environment, in a new process."""
    script = Path(sys.executable).with_name("workbench")
    assert script.exists(), f"no console script beside {sys.executable}: is workbench installed?"
    done = subprocess.run(
        [str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    outcome = Outcome(done.returncode, done.stdout, done.stderr)
    assert_ok(outcome)
    return outcome


@pytest.fixture(scope="module")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_flowers(tmp_path_factory.mktemp("smoke") / "flowers", CLASSES, per_class=8)


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    outcome = workbench("--version", cwd=tmp_path)
    assert outcome.stdout.strip() == f"workbench {version('workbench')}"


@pytest.mark.parametrize("trainer", ["imprint", "backprop"])
def test_train_evaluate_and_classify_with_the_bundled_extractor(
    flowers: Path, tmp_path: Path, trainer: str
) -> None:
    model = tmp_path / f"flowers_{trainer}.tflite"
    options = ["--epochs", "20"] if trainer == "backprop" else []
    trained = workbench(trainer, flowers, "-o", model, *options, "--json", cwd=tmp_path)
    report = json.loads(trained.stdout)
    for suffix in (".tflite", ".txt", ".report.json", ".report.html"):
        assert model.with_suffix(suffix).stat().st_size > 0, suffix
    labels = model.with_suffix(".txt").read_text().splitlines()
    assert labels == [f"{i} {name}" for i, name in enumerate(CLASSES)]
    held_out = {name: 2 for name in CLASSES}  # 2 of 8 per class (test_ratio 0.25)
    assert report["counts"]["test"] == held_out and report["num_images"] == 6
    assert report["top_k_accuracy"][0] >= 0.8  # one colour per class: easily told apart

    scored = workbench("evaluate", model, flowers, "--json", cwd=tmp_path)
    evaluation = json.loads(scored.stdout)
    assert evaluation["num_images"] == 6  # the model's own held-out split
    assert evaluation["top_k_accuracy"][0] == report["top_k_accuracy"][0]

    photo = flowers / "roses" / "roses_000.jpg"
    classified = json.loads(workbench("classify", model, photo, "--json", cwd=tmp_path).stdout)
    assert [r["top"][0]["label"] for r in classified["results"]] == ["roses"]
