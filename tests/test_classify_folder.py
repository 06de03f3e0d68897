"""`classify MODEL FOLDER` with a corrupt image in the folder: the rest classified, one warning."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.builders import assert_ok, run_cli, warnings_of

CLI = Callable[..., Any]  # the `cli` fixture: a command's --json output
REPO = Path(__file__).resolve().parents[1]


def test_corrupt_file_in_a_folder_is_skipped_with_one_warning(
    tmp_path: Path, models: dict[str, Path], colors: Path, cli: CLI
) -> None:
    model = tmp_path / "colors.tflite"
    cli("imprint", colors, "-e", models["uint8"], "-o", model)
    folder = tmp_path / "photos"
    shutil.copytree(colors, folder)
    bad = folder / "green" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = sorted(p for p in folder.rglob("*.png"))

    # A fresh interpreter, so stderr is exactly what a user's terminal gets.
    outcome = run_cli("classify", model, folder, "--json", "--repeat", "0", cwd=REPO)
    assert_ok(outcome)
    result = outcome.json()
    assert [Path(item["file"]) for item in result["results"]] == good
    assert all(
        item["top"][0]["label"] == Path(item["file"]).parent.name for item in result["results"]
    )
    assert result["skipped"] == 1
    (warning,) = warnings_of(outcome)
    assert "skipped unreadable image" in warning and str(bad) in warning, outcome.describe()
    assert outcome.stderr.count("broken.jpg") == 1, outcome.describe()
