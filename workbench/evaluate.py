"""Evaluation: where accuracy is scored, from a model's outputs on held-out images.

The scores come from running the exported `.tflite` itself, so the report measures the model a
user will deploy, quantization included; `agreement` says how often its top-1 matches the
float head it was exported from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench import __version__
from workbench.dataset import Dataset, Split, fingerprints, load_split, prepare_split, scan
from workbench.errors import WorkbenchError
from workbench.extraction import CacheChoice, run_cached
from workbench.options import DataOptions, RunOptions, settings
from workbench.progress import Reporter
from workbench.report import Report
from workbench.runtime import LoadedModel, load_model
from workbench.tflite.graph import Graph

OTHER = "(other)"
MAX_K = 5


@dataclass
class Evaluation:
    """Accuracy of a model on labelled images, ready for a table or for JSON."""

    classes: list[str]  # the dataset's classes: rows of the confusion matrix
    num_images: int
    top_k_accuracy: list[float]  # top-1 first
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    confusion_labels: list[str]  # columns: the classes, plus OTHER if a prediction fell outside
    agreement: float | None = None
    mistakes: list[dict[str, object]] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The report fields this evaluation fills (everything but the class list)."""
        data = asdict(self)
        del data["classes"]
        return data


def label_ids(classes: list[str], labels: list[str]) -> list[int]:
    """Where each dataset class sits among the model's labels (matched by name)."""
    index = {name: i for i, name in enumerate(labels)}
    missing = [c for c in classes if c not in index]
    if missing:
        shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
        raise WorkbenchError(
            f"class folders not among the model's labels: {', '.join(missing)} "
            f"(labels: {shown}); pass the right --labels file"
        )
    return [index[c] for c in classes]


def ranked(scores: np.ndarray) -> np.ndarray:
    """Label indices by descending score; ties keep index order, like argmax."""
    return np.argsort(-scores, axis=1, kind="stable")


def score(
    scores: np.ndarray,
    true_classes: np.ndarray,
    classes: list[str],
    labels: list[str],
    float_top1: np.ndarray | None = None,
    files: list[Path] | None = None,
) -> Evaluation:
    """Metrics for `scores` [N, num_labels] of images whose class index is `true_classes`.

    `float_top1` (label indices) gives the agreement of the model with its float head.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise WorkbenchError(
            f"the model gives {scores.shape[-1]} scores but the labels file has {len(labels)} "
            "labels; pass the labels file that belongs to this model"
        )
    ids = label_ids(classes, labels)
    truth = np.asarray(ids, np.int64)[np.asarray(true_classes, np.int64)]
    order = ranked(scores)
    top1 = order[:, 0]
    ks = range(1, min(MAX_K, len(labels)) + 1)
    top_k = [float(np.mean(np.any(order[:, :k] == truth[:, None], axis=1))) for k in ks]

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, top1, labels=ids, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    outside = ~np.isin(top1, ids)
    columns = list(ids) + ([-1] if outside.any() else [])
    predicted = np.where(outside, -1, top1)
    matrix = confusion_matrix(truth, predicted, labels=columns)[: len(ids)]
    confusion_labels = list(classes) + ([OTHER] if outside.any() else [])

    agreement = None
    if float_top1 is not None and len(top1):
        agreement = float(np.mean(np.asarray(float_top1) == top1))

    mistakes = []
    if files is not None:
        for i in np.flatnonzero(top1 != truth):
            mistakes.append(
                {
                    "file": str(files[i]),
                    "true": labels[truth[i]],
                    "predicted": labels[top1[i]],
                    "score": float(scores[i, top1[i]]),
                }
            )
    return Evaluation(
        classes=list(classes),
        num_images=len(truth),
        top_k_accuracy=top_k,
        per_class=per_class,
        confusion_matrix=matrix.astype(int).tolist(),
        confusion_labels=confusion_labels,
        agreement=agreement,
        mistakes=mistakes,
    )


def evaluate_model_on(
    model: LoadedModel,
    files: list[Path],
    true_classes: np.ndarray,
    classes: list[str],
    labels: list[str],
    reporter: Reporter,
    float_top1: np.ndarray | None = None,
    cache: CacheChoice = False,
) -> Evaluation:
    """Run the model on the files and score its outputs (unreadable files are skipped)."""
    out, _ = run_cached(model, files, cache, reporter, "evaluating")
    kept = np.asarray(out.kept, np.int64)
    if len(kept) == 0:
        raise WorkbenchError("no readable held-out images to evaluate on")
    return score(
        out.vectors,
        np.asarray(true_classes)[kept],
        classes,
        labels,
        float_top1=None if float_top1 is None else np.asarray(float_top1)[kept],
        files=[files[i] for i in kept],
    )


@dataclass(frozen=True)
class EvaluationSet:
    """Which images `evaluate` scores, and how they were chosen."""

    split: Split
    method: str  # "model's split", "given split", "default split", "report's split", "all images"
    dataset: Dataset | None = None
    data: DataOptions | None = None


def choose_images(
    model_info: dict[str, Any],
    data_dir: str | Path,
    overrides: dict[str, Any],
    split_report: str | Path | None,
    all_images: bool,
    reporter: Reporter,
) -> EvaluationSet:
    """The images to evaluate on: the model's own held-out split unless told otherwise.

    `overrides` (test_ratio, max_per_class, seed) replace the model's recorded split settings.
    """
    if split_report is not None:
        return EvaluationSet(load_split(split_report), "report's split")
    if all_images:
        dataset = scan(data_dir)
        whole = Split(dataset.classes, {}, dict(dataset.images))
        return EvaluationSet(whole, "all images", dataset)
    recorded = model_info.get("split")
    if not isinstance(recorded, dict):
        recorded = {}
        reporter.warn("the model records no split (not made by workbench): default split used")
    data = DataOptions(**{**recorded, **overrides})
    method = "given split" if overrides else ("model's split" if recorded else "default split")
    dataset, data_split = prepare_split(data_dir, data, reporter)
    return EvaluationSet(data_split, method, dataset, data)


def check_overlap(
    graph: Graph, chosen: EvaluationSet, allow: bool, reporter: Reporter
) -> dict[str, Any]:
    """Refuse to score images the model was trained on (unless allowed); say what was found."""
    from workbench.training import trained_on

    known = trained_on(graph)
    files, _ = chosen.split.files("test")
    if known is None:
        reporter.warn("the model records no training images: cannot check that none is scored")
        return {"method": chosen.method, "overlap": None}
    overlap = int(np.isin(fingerprints(files), known).sum())
    if overlap and not allow:
        raise WorkbenchError(
            f"{overlap} of the {len(files)} images to evaluate ({chosen.method}) were training "
            "images of this model, which would inflate its accuracy; evaluate on the model's "
            "own split (leave out --test-ratio, --max-per-class and --seed), or pass "
            "--allow-overlap to score them anyway"
        )
    if overlap:
        reporter.warn(f"{overlap} of the images scored were training images of this model")
    return {"method": chosen.method, "overlap": overlap, "overlap_allowed": bool(overlap)}


def evaluate_folder(
    model_path: str | Path,
    data_dir: str | Path,
    labels_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    split_report: str | Path | None = None,
    run: RunOptions = RunOptions(),
    reporter: Reporter | None = None,
    allow_overlap: bool = False,
    all_images: bool = False,
) -> Report:
    """Evaluate a model on held-out images of `data_dir`: by default the split it trained with.

    `overrides` of the split settings, `split_report` (a report's split) or `all_images` (a
    folder the model never saw) choose other images; any image the model was trained on is
    refused unless `allow_overlap`.
    """
    from workbench.export import default_labels_path, read_labels, workbench_metadata

    reporter = reporter or Reporter()
    labels = read_labels(labels_path or default_labels_path(model_path))
    graph = Graph.load(model_path)
    chosen = choose_images(
        workbench_metadata(graph) or {}, data_dir, overrides or {}, split_report, all_images,
        reporter,
    )  # fmt: skip
    checked = check_overlap(graph, chosen, allow_overlap, reporter)
    model = load_model(model_path, device=run.device)
    files, true_classes = chosen.split.files("test")
    evaluation = evaluate_model_on(
        model, files, np.asarray(true_classes), chosen.split.classes, labels, reporter,
        cache=run.cache,
    )  # fmt: skip
    return Report(
        workbench_version=__version__,
        data_dir=str(data_dir),
        classes=list(chosen.split.classes),
        settings=settings(chosen.data) if chosen.data is not None else {},
        split=chosen.split.to_json(),
        model=str(model_path),
        counts={"test": {c: len(v) for c, v in chosen.split.test.items()}},
        skipped_files=[str(p) for p in chosen.dataset.skipped] if chosen.dataset else [],
        evaluation=checked,
        **evaluation.fields(),
    )
