"""Exporter: the extractor plus a trained head as a new `.tflite`, and its labels file.

The model, its labels file and its report are written to temporary files beside their targets
and renamed into place only when all of them are complete, so an interrupted or failed run
never leaves a half-written model behind (nor a model with a stale labels file).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.tflite.graph import Graph

METADATA_NAME = "workbench"
METADATA_FORMAT = 1


def output_files(model_path: str | Path) -> dict[str, Path]:
    """`OUT.tflite` -> its labels file `OUT.txt` and report `OUT.report.json`."""
    model_path = Path(model_path)
    name = str(model_path)
    stem = name[: -len(".tflite")] if model_path.suffix == ".tflite" else name
    return {
        "model": model_path,
        "labels": Path(f"{stem}.txt"),
        "report": Path(f"{stem}.report.json"),
    }


def check_writable(path: str | Path) -> None:
    """Fail now, before minutes of extraction, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise WorkbenchError(
            f"output {path} is a directory; give a file name like {path}/model.tflite"
        )
    if not parent.is_dir():
        raise WorkbenchError(f"output folder does not exist: {parent}")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".workbench-check-"):
            pass
    except OSError as e:
        raise WorkbenchError(f"cannot write to {parent}: {e.strerror or e}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StagedFiles:
    """Files written beside their targets under temporary names, renamed in `commit()`.

    Leaving the `with` block without committing (an error, Ctrl-C) deletes the temporary
    files, so either every output appears complete or none of them changes.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def stage(self, target: str | Path, data: bytes) -> Path:
        """Write `data` to a temp file in the target's folder; returns the temp path."""
        target = Path(target)
        folder = target.parent if str(target.parent) else Path(".")
        try:
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as e:
            raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        tmp = Path(tmp_name)
        self._staged.append((tmp, target))
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise WorkbenchError(f"cannot write {target}: {e.strerror or e}") from None
        return tmp

    def commit(self) -> None:
        try:
            for tmp, target in self._staged:
                os.replace(tmp, target)
        except OSError as e:
            raise WorkbenchError(
                f"cannot write {e.filename or 'output'}: {e.strerror or e}"
            ) from None
        self._staged.clear()


def write_files_atomically(contents: Mapping[Path, bytes]) -> None:
    """Write several files so that all of them or none of them change."""
    with StagedFiles() as staged:
        for target, data in contents.items():
            staged.stage(target, data)
        staged.commit()


def labels_text(names: list[str]) -> str:
    """Coral's labels format: `<id> <label>` per line."""
    for name in names:
        if "\n" in name or not name.strip():
            raise WorkbenchError(f"class name {name!r} cannot be written to a labels file")
    return "".join(f"{i} {name}\n" for i, name in enumerate(names))


def read_labels(path: str | Path) -> list[str]:
    """Read `<id> <label>` lines (Coral) or plain lines (the line number is the id)."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise WorkbenchError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"cannot read labels file {path}: {e}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise WorkbenchError(f"labels file is empty: {path}")
    first = lines[0].split(maxsplit=1)
    if len(first) == 2 and first[0].isdigit():
        labels: dict[int, str] = {}
        for line in lines:
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise WorkbenchError(f"{path}: expected '<id> <label>', got {line!r}")
            labels[int(parts[0])] = parts[1].strip()
        size = max(labels) + 1
        return [labels.get(i, f"class_{i}") for i in range(size)]
    return lines


def default_labels_path(model_path: str | Path) -> Path:
    return output_files(model_path)["labels"]


def set_workbench_metadata(graph: Graph, info: dict[str, Any]) -> None:
    """Record how the model was made (trainer, classes, embedding tensor) inside the file."""
    payload = {"format": METADATA_FORMAT, **info}
    graph.set_metadata(METADATA_NAME, json.dumps(payload, sort_keys=True).encode())


def workbench_metadata(graph: Graph) -> dict[str, Any] | None:
    raw = graph.metadata(METADATA_NAME)
    if raw is None:
        return None
    try:
        data = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None
