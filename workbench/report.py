"""The report of a training or evaluation run: one typed record, written as JSON.

Display code, the HTML page and `evaluate --split` read reports back, so the record is a
dataclass rather than a loose dict: a field that is renamed or missing fails where it is
used. `to_json` gives the same keys the JSON file always had; optional parts (a training
curve, a base model's classes) appear only in reports that have them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

# Keys left out of the JSON when unset: they belong to some kinds of run only.
OPTIONAL = ("training_curve", "extracted_images", "base_classes", "evaluation")


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
    confusion_matrix: list[list[int]] = field(default_factory=list)
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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in OPTIONAL:
            if data[key] is None:
                del data[key]
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """A report from its JSON form; unknown keys (from newer versions) are ignored."""
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise WorkbenchError(f"not a workbench report ({e})") from None

    @staticmethod
    def read_json(path: str | Path) -> dict[str, Any]:
        """The JSON object in a report file, or a WorkbenchError saying why there is none."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
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
