"""Evaluation: where accuracy is scored, from a model's outputs on held-out images.

The scores come from running the exported `.tflite` itself, so the report measures the model a
user will deploy, quantization included; `agreement` says how often its top-1 matches the
float head it was exported from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core import __version__
from workbench.core.errors import WorkbenchError
from workbench.core.options import DataOptions, OptionError, RunOptions, settings
from workbench.core.outputs import check_cache_folder
from workbench.core.progress import Reporter
from workbench.data.dataset import (
    Dataset,
    Split,
    fingerprints,
    load_split,
    passed_over,
    prepare_split,
    scan,
)
from workbench.data.labels import default_labels_path, read_labels
from workbench.extract.cache import OutputCache
from workbench.extract.extraction import CacheChoice, cache_root, run_cached
from workbench.extract.runtime import LoadedModel, load_model
from workbench.model.export import trained_on, workbench_metadata
from workbench.model.head_eval import head_scores, pick_sample, same_as_whole_model
from workbench.report.metrics import confusion_cells, per_class
from workbench.report.record import Report
from workbench.tflite.graph import Graph

OTHER = "(other)"
MAX_K = 5


@dataclass(frozen=True)
class Embeddings:
    """Extractor outputs already computed for the images to evaluate on."""

    vectors: np.ndarray  # [N, D] dequantized outputs of the model's embedding tensor
    files: list[Path]  # the image of each row
    tensor: int  # the embedding tensor's index in the exported model
    seed: int  # for the sample checked on the whole model


@dataclass
class Evaluation:
    """Accuracy of a model on labelled images, ready for a table or for JSON."""

    classes: list[str]  # the dataset's classes: rows of the confusion matrix
    num_images: int
    top_k_accuracy: list[float]  # top-1 first
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]  # nonzero cells [row: true class, column, count] (see Report)
    confusion_labels: list[str]  # columns: the classes, plus OTHER if a prediction fell outside
    agreement: float | None = None
    mistakes: list[dict[str, object]] = field(default_factory=list)
    # Images only one of the two gets right: {"float_only_right": n, "export_only_right": m}.
    # What the export costs is their difference; agreement also counts ties that cost nothing.
    export_vs_float: dict[str, Any] | None = None

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


def check_width(scores: np.ndarray, labels: list[str]) -> np.ndarray:
    """The scores, if there is one per label; else a WorkbenchError naming the mismatch."""
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise WorkbenchError(
            f"the model gives {scores.shape[-1]} scores but the labels file has {len(labels)} "
            "labels; pass the labels file that belongs to this model"
        )
    return scores


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
    scores = check_width(np.asarray(scores), labels)
    ids = label_ids(classes, labels)
    truth = np.asarray(ids, np.int64)[np.asarray(true_classes, np.int64)]
    order = ranked(scores)
    top1 = order[:, 0]
    ks = range(1, min(MAX_K, len(labels)) + 1)
    top_k = [float(np.mean(np.any(order[:, :k] == truth[:, None], axis=1))) for k in ks]

    precision, recall, f1, support = per_class(truth, top1, ids)
    by_class = {
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
    cells = confusion_cells(truth, predicted, columns)
    confusion_labels = list(classes) + ([OTHER] if outside.any() else [])

    agreement = export_vs_float = None
    if float_top1 is not None and len(top1):
        agreement = float(np.mean(np.asarray(float_top1) == top1))
        float_right, export_right = np.asarray(float_top1) == truth, top1 == truth
        export_vs_float = {
            "float_only_right": int(np.sum(float_right & ~export_right)),
            "export_only_right": int(np.sum(export_right & ~float_right)),
        }

    mistakes = [] if files is None else list_mistakes(scores, truth, top1, labels, files)
    return Evaluation(
        classes=list(classes),
        num_images=len(truth),
        top_k_accuracy=top_k,
        per_class=by_class,
        confusion=cells.astype(int).tolist(),
        confusion_labels=confusion_labels,
        agreement=agreement,
        mistakes=mistakes,
        export_vs_float=export_vs_float,
    )


def list_mistakes(
    scores: np.ndarray, truth: np.ndarray, top1: np.ndarray, labels: list[str], files: list[Path]
) -> list[dict[str, object]]:
    """The misclassified images: file, true and predicted label, and the predicted score."""
    return [
        {
            "file": str(files[i]),
            "true": labels[truth[i]],
            "predicted": labels[top1[i]],
            "score": float(scores[i, top1[i]]),
        }
        for i in np.flatnonzero(top1 != truth)
    ]


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


def evaluate_export(
    model: LoadedModel,
    graph: Graph,
    embeddings: Embeddings,
    true_classes: np.ndarray,
    classes: list[str],
    labels: list[str],
    reporter: Reporter,
    float_top1: np.ndarray | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Score an exported model on images whose extractor outputs are already known.

    The appended head runs alone on those outputs (exactly the model's own arithmetic), and the
    whole model runs on a sample of the images to confirm it bit for bit; on any difference
    every image goes through the whole model. A compiled Edge TPU extractor always runs whole:
    its outputs come from the device, not from the CPU kernels the head check relies on.
    Returns the evaluation and how it was made, for the report.
    """
    files = embeddings.files
    if not files:
        raise WorkbenchError("no readable held-out images to evaluate on")
    if model.edgetpu:
        evaluation = evaluate_model_on(
            model, files, true_classes, classes, labels, reporter, float_top1
        )
        return evaluation, {"method": "full", "reason": "Edge TPU extractor"}
    with reporter.task("evaluating the head", 1) as advance:
        scores = check_width(head_scores(graph, embeddings.tensor, embeddings.vectors), labels)
        advance(1)
    truth = np.asarray(label_ids(classes, labels))[np.asarray(true_classes, np.int64)]
    rows = pick_sample(np.argmax(scores, axis=1) != truth, embeddings.seed)
    out, _ = run_cached(model, [files[i] for i in rows], False, reporter, "checking a sample")
    checked = rows[np.asarray(out.kept, np.int64)]
    if len(checked) and same_as_whole_model(scores[checked], out.vectors):
        evaluation = score(scores, true_classes, classes, labels, float_top1, files)
        return evaluation, {"method": "head+sample", "sample": len(checked), "identical": True}
    reporter.warn(
        "the exported head alone did not reproduce the whole model's scores on a sample of "
        "held-out images; running the whole model on every held-out image instead"
    )
    evaluation = evaluate_model_on(
        model, files, true_classes, classes, labels, reporter, float_top1
    )
    return evaluation, {"method": "full", "sample": len(checked), "identical": False}


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
        passed_over(dataset, reporter)
        whole = Split(dataset.classes, {}, dict(dataset.images))
        return EvaluationSet(whole, "all images", dataset)
    recorded = model_info.get("split")
    known = {f.name for f in fields(DataOptions)}
    if isinstance(recorded, dict) and set(recorded) <= known:
        try:
            DataOptions(**recorded)
        except OptionError:
            recorded = None
    if not isinstance(recorded, dict) or not set(recorded) <= known:
        recorded = {}
        reporter.warn("the model records no usable split (not made by workbench?): default split")
    data = DataOptions(**{**recorded, **overrides})
    method = "given split" if overrides else ("model's split" if recorded else "default split")
    dataset, data_split = prepare_split(data_dir, data, reporter)
    return EvaluationSet(data_split, method, dataset, data)


def check_overlap(
    graph: Graph, chosen: EvaluationSet, allow: bool, reporter: Reporter
) -> dict[str, Any]:
    """Refuse to score images the model was trained on (unless allowed); say what was found."""
    known = trained_on(graph)
    files, _ = chosen.split.files("test")
    if known is None:
        reporter.warn("the model records no training images: cannot check that none is scored")
        return {"images": chosen.method, "overlap": None}
    overlap = int(np.isin(fingerprints(files), known).sum())
    if overlap and not allow:
        raise WorkbenchError(
            f"{overlap} of the {len(files)} images to evaluate ({chosen.method}) were training "
            "images of this model, which would inflate its accuracy; evaluate on the model's "
            "own split (change none of its test ratio, cap or seed), or allow the overlap "
            "(--allow-overlap; allow_overlap=True in Python) to score them anyway"
        )
    if overlap:
        reporter.warn(f"{overlap} of the images scored were training images of this model")
    return {"images": chosen.method, "overlap": overlap, "overlap_allowed": bool(overlap)}


def cached_embeddings(
    info: dict[str, Any], files: list[Path], cache: CacheChoice, seed: int
) -> Embeddings | None:
    """The extractor outputs of every file, if the embedding cache holds them all, else None.

    `info` is the model's workbench metadata: which extractor outputs (model hash,
    preprocessing, width) and which tensor the head starts from.
    """
    key, tensor = info.get("extractor_outputs"), info.get("embedding_tensor")
    if cache is False or not files or not isinstance(key, dict) or not isinstance(tensor, int):
        return None
    try:
        names = str(key["sha256"]), str(key["preprocessing"])
        store = OutputCache(cache_root(cache), *names, int(key["width"]))
    except (KeyError, TypeError, ValueError):
        return None  # damaged metadata: evaluate the whole model
    if not store.path.is_file():
        return None  # nothing cached for this extractor here (and no empty file made)
    vectors = np.empty((len(files), store.width), np.float32)
    try:
        found, _ = store.fill(files, vectors)
    finally:
        store.close()
    return Embeddings(vectors, list(files), tensor, seed) if found.all() else None


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
    reporter = reporter or Reporter()
    check_cache_folder(run.cache, [data_dir])
    labels = read_labels(labels_path or default_labels_path(model_path))
    graph = Graph.load(model_path)
    info = workbench_metadata(graph) or {}
    chosen = choose_images(
        info, data_dir, overrides or {}, split_report, all_images,
        reporter,
    )  # fmt: skip
    checked = check_overlap(graph, chosen, allow_overlap, reporter)
    model = load_model(model_path, device=run.device)
    files, true_classes = chosen.split.files("test")
    seed = chosen.data.seed if chosen.data is not None else 0
    known = cached_embeddings(info, files, run.cache, seed)
    if known is not None:
        evaluation, method = evaluate_export(
            model, graph, known, np.asarray(true_classes), chosen.split.classes, labels, reporter
        )
    else:
        evaluation = evaluate_model_on(
            model, files, np.asarray(true_classes), chosen.split.classes, labels, reporter,
            cache=run.cache,
        )  # fmt: skip
        method = {"method": "full"}
    return Report(
        workbench_version=__version__,
        data_dir=str(data_dir),
        classes=list(chosen.split.classes),
        settings=settings(chosen.data) if chosen.data is not None else {},
        split=chosen.split.to_json(),
        model=str(model_path),
        counts={"test": {c: len(v) for c, v in chosen.split.test.items()}},
        skipped_files=[str(p) for p in chosen.dataset.skipped] if chosen.dataset else [],
        evaluation={**checked, **method},
        **evaluation.fields(),
    )
