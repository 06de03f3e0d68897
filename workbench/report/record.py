"""The report of a training or evaluation run: one typed record, written as JSON.

Display code, the HTML page and `evaluate --split` read reports back, so the record is a
dataclass rather than a loose dict: a field that is renamed or missing fails where it is
used. `to_json` gives the same keys the JSON file always had; optional parts (a training
curve, a base model's classes) appear only in reports that have them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError
from workbench.core.jsonfile import parse_json

# Keys left out of the JSON when unset: they belong to some kinds of run only.
OPTIONAL = ("training_curve", "extracted_images", "base_classes", "evaluation")
# Up to this many classes the JSON also holds the confusion matrix written out in full
# (`confusion_matrix`), easy to read by eye. Past it only the nonzero cells are written
# (`confusion`): a full matrix grows with the square of the classes, and at 2,000 classes
# it made a 37 MB report that took minutes to write.
DENSE_CONFUSION_MAX = 100


def sparse_confusion(matrix: Any) -> list[list[int]]:
    """The nonzero cells `[row, column, count]` of a confusion matrix given in full.

    Reads the full matrices of older reports; entries that are not positive whole numbers
    (a hand-edited file) are left out.
    """
    cells: list[list[int]] = []
    for i, row in enumerate(matrix if isinstance(matrix, list) else []):
        for j, count in enumerate(row if isinstance(row, list) else []):
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                cells.append([i, j, count])
    return cells


def confusion_cells(cells: Any, rows: int, columns: int) -> list[tuple[int, int, int]] | None:
    """`cells` as (row, column, count) tuples, or None unless every one is well formed.

    Well formed: three whole numbers, the row and column inside a `rows` x `columns`
    matrix, a positive count. Reports are read back from files anyone can edit.
    """
    if not isinstance(cells, list):
        return None
    found = []
    for cell in cells:
        if not (
            isinstance(cell, list | tuple)
            and len(cell) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in cell)
        ):
            return None
        row, column, count = cell
        if not (0 <= row < rows and 0 <= column < columns and count > 0):
            return None
        found.append((row, column, count))
    return found


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Report:
    """Everything a run measured and decided. Accuracy fields come from `Evaluation`.

    >>> import workbench as wb
    >>> report = wb.imprint("flowers/", output="flowers.tflite").report
    >>> report.top1, report.top_k_accuracy, report.per_class["daisy"]["recall"]
    (1.0, [1.0, 1.0, 1.0], 1.0)
    >>> Report.load("flowers.report.json").split == report.split
    True
    """

    workbench_version: str
    data_dir: str
    classes: list[str]
    settings: dict[str, Any]
    split: dict[str, dict[str, list[str]]]
    trainer: str | None = None
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    extractor: str | None = None
    extractor_sha256: str | None = None
    preprocessing: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    num_images: int = 0
    top_k_accuracy: list[float] = field(default_factory=list)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    # The confusion matrix's nonzero cells, [row, column, count]: rows are `classes` (true
    # class), columns `confusion_labels` (predicted). `confusion_matrix` gives it in full.
    confusion: list[list[int]] = field(default_factory=list)
    confusion_labels: list[str] = field(default_factory=list)
    agreement: float | None = None
    mistakes: list[dict[str, Any]] = field(default_factory=list)
    float_top1_accuracy: float | None = None
    # False: the export is right on fewer held-out images than its float head, beyond chance
    export_ok: bool | None = None
    export_vs_float: dict[str, Any] | None = None  # see Evaluation.export_vs_float
    model: str | None = None
    labels: str | None = None
    head: dict[str, Any] = field(default_factory=dict)
    # what could not be done as asked, and what was done instead (see progress.Fallback)
    fallbacks: list[str] = field(default_factory=list)
    training_curve: list[dict[str, Any]] | None = None  # backprop runs
    extracted_images: int | None = None  # continued runs (--base)
    base_classes: list[str] | None = None  # continued runs (--base)
    evaluation: dict[str, Any] | None = None  # how the exported model was evaluated

    @property
    def top1(self) -> float | None:
        return self.top_k_accuracy[0] if self.top_k_accuracy else None

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """The confusion matrix in full (rows: `classes`, columns: `confusion_labels`).

        Made from `confusion` when asked for: at thousands of classes it is millions of
        numbers, almost all 0.
        """
        columns = len(self.confusion_labels) or len(self.classes)
        matrix = [[0] * columns for _ in self.classes]
        for row, column, count in confusion_cells(self.confusion, len(matrix), columns) or []:
            matrix[row][column] = count
        return matrix

    @confusion_matrix.setter
    def confusion_matrix(self, matrix: Sequence[Sequence[int]]) -> None:
        self.confusion = sparse_confusion([list(row) for row in matrix])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in OPTIONAL:
            if data[key] is None:
                del data[key]
        if len(self.classes) > DENSE_CONFUSION_MAX:
            return data
        ordered: dict[str, Any] = {}
        for key, value in data.items():
            ordered[key] = value
            if key == "confusion":  # the full matrix beside its cells
                ordered["confusion_matrix"] = self.confusion_matrix
        return ordered

    def dumps(self) -> str:
        """The JSON file's text: indented, except that each list of numbers (a matrix row,
        a confusion cell, the top-k accuracies) stays on one line."""
        return _compact_lists(json.dumps(self.to_json(), indent=2)) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """A report from its JSON form; unknown keys (from newer versions) are ignored.

        Reports written before `confusion` existed hold the full `confusion_matrix` only.
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "confusion" not in values and "confusion_matrix" in data:
            values["confusion"] = sparse_confusion(data["confusion_matrix"])
        try:
            return cls(**values)
        except TypeError as e:
            raise WorkbenchError(f"not a workbench report ({e})") from None

    @staticmethod
    def read_json(path: str | Path) -> dict[str, Any]:
        """The JSON object in a report file, or a WorkbenchError saying why there is none."""
        path = Path(path)
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkbenchError(f"report not found: {path}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise WorkbenchError(f"cannot read report {path}: {e}") from None
        if not isinstance(data, dict) or ("workbench_version" not in data and "points" not in data):
            raise WorkbenchError(f"{path} is not a workbench report")
        return data

    @classmethod
    def load(cls, path: str | Path) -> Report:
        return cls.from_json(cls.read_json(path))


def _compact_lists(text: str) -> str:
    """Indented JSON with every list of numbers put back on one line.

    `json.dumps(indent=2)` gives each number of a matrix row or a cell a line of its own.
    Lists holding strings are left as they are: whitespace inside a string is data.
    """
    return _NUMBER_LIST.sub(lambda m: " ".join(m.group().split()), text)


# A `[` ... `]` of numbers, true, false and null only.
_NUMBER_LIST = re.compile(
    r"\[(?:\s*(?:-?[0-9][0-9.eE+-]*|true|false|null)\s*,)*\s*(?:-?[0-9][0-9.eE+-]*|true|false|null)\s*\]"
)
