"""The steps every training run shares, and `evaluate_folder`.

dataset (scan, split) -> runtime (extractor) -> embeddings -> trainer -> export -> evaluate.
The trainers (`train_imprint`, `train_backprop`) put their own step in the middle of these;
the CLI is a thin layer over the three public functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench import __version__
from workbench.cache import OutputCache, default_cache_dir
from workbench.dataset import (
    DEFAULT_MAX_PER_CLASS,
    DEFAULT_SEED,
    DEFAULT_TEST_RATIO,
    Dataset,
    Split,
    scan,
    split,
)
from workbench.embeddings import run_model
from workbench.errors import WorkbenchError
from workbench.evaluate import Evaluation, score
from workbench.export import (
    StagedFiles,
    check_writable,
    labels_text,
    output_files,
    read_labels,
)
from workbench.images import Preprocessing
from workbench.progress import Reporter
from workbench.runtime import LoadedModel, load_model
from workbench.tflite.graph import Graph
from workbench.tflite.heads import embedding_output

# Below this agreement between the exported model and its float head, a run exits 1.
AGREEMENT_FLOOR = 0.97


@dataclass
class Embedded:
    """Embeddings of a split's images, with the rows that decoded mapped back to files."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_files: list[Path]
    unreadable: list[tuple[Path, str]]
    seconds: float
    cache: dict[str, Any] | None = None  # hits, misses and file of the embedding cache


@dataclass
class TrainingResult:
    """What a training run wrote, and its report (the same dict as the JSON file)."""

    model: Path
    labels: Path
    report_path: Path
    report: dict[str, Any]


CacheChoice = bool | str | Path
"""True: the default cache folder; False: no cache; a path: that cache folder."""


def open_cache(choice: CacheChoice, model: LoadedModel, prep: Preprocessing) -> OutputCache | None:
    if choice is False:
        return None
    root = default_cache_dir() if choice is True else Path(choice)
    width = int(np.prod(model.output.shape[1:]))
    return OutputCache(root, model.sha256, prep.key(), width)


def default_output(data_dir: str | Path, trainer: str) -> Path:
    """`./<data dir name>_<trainer>.tflite` in the current folder."""
    name = Path(data_dir).resolve().name or "model"
    return Path(f"{name}_{trainer}.tflite")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_split(
    data_dir: str | Path,
    test_ratio: float,
    max_per_class: int,
    seed: int,
    reporter: Reporter,
) -> tuple[Dataset, Split]:
    dataset = scan(data_dir)
    if dataset.skipped:
        shown = ", ".join(p.name for p in dataset.skipped[:3])
        more = f" and {len(dataset.skipped) - 3} more" if len(dataset.skipped) > 3 else ""
        reporter.warn(f"skipped {len(dataset.skipped)} non-image files ({shown}{more})")
    return dataset, split(dataset, test_ratio, max_per_class, seed)


def extract_split(
    extractor: LoadedModel,
    prep: Preprocessing,
    data_split: Split,
    reporter: Reporter,
    cache: OutputCache | None = None,
) -> Embedded:
    """Embed the training and held-out images in one pass; unreadable ones are skipped."""
    train_files, train_labels = data_split.files("train")
    test_files, test_labels = data_split.files("test")
    files = train_files + test_files
    labels = np.asarray(train_labels + test_labels, np.int64)
    start = time.perf_counter()
    with reporter.task("extracting embeddings", len(files)) as advance:
        out = run_model(extractor, files, prep, progress=advance, cache=cache)
    seconds = time.perf_counter() - start
    if cache is not None:
        cache.close()
    for path, reason in out.failures:
        reporter.warn(f"skipped unreadable image {path}: {reason}")
    kept = np.asarray(out.kept, np.int64)
    is_train = kept < len(train_files)
    for class_id, name in enumerate(data_split.classes):
        if not np.any(labels[kept[is_train]] == class_id):
            raise WorkbenchError(f"class {name!r} has no readable training images")
    return Embedded(
        train_x=out.vectors[is_train],
        train_y=labels[kept[is_train]],
        test_x=out.vectors[~is_train],
        test_y=labels[kept[~is_train]],
        test_files=[files[i] for i in kept[~is_train]],
        unreadable=out.failures,
        seconds=seconds,
        cache=None
        if cache is None
        else {"hits": cache.hits, "misses": cache.misses, "file": str(cache.path)},
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
    prep = Preprocessing.for_input(model.input)
    with reporter.task("evaluating", len(files)) as advance:
        outputs_cache = open_cache(cache, model, prep)
        out = run_model(model, files, prep, progress=advance, cache=outputs_cache)
        if outputs_cache is not None:
            outputs_cache.close()
    for path, reason in out.failures:
        reporter.warn(f"skipped unreadable image {path}: {reason}")
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


def _extractor_info(extractor: LoadedModel, prep: Preprocessing) -> dict[str, Any]:
    return {
        "extractor": str(extractor.path),
        "extractor_sha256": file_sha256(extractor.path),
        "preprocessing": prep.key(),
    }


def finish_training(
    graph: Graph,
    output: Path,
    classes: list[str],
    embedded: Embedded,
    float_scores: np.ndarray,
    report: dict[str, Any],
    device: str | None,
    reporter: Reporter,
) -> TrainingResult:
    """Stage model and labels, evaluate the staged model itself, then commit all outputs."""
    files = output_files(output)
    with StagedFiles() as staged:
        staged_model = staged.stage(files["model"], graph.to_bytes())
        staged.stage(files["labels"], labels_text(classes).encode())
        start = time.perf_counter()
        exported = load_model(staged_model, device=device)
        evaluation = evaluate_model_on(
            exported,
            embedded.test_files,
            embedded.test_y,
            classes,
            classes,
            reporter,
            float_top1=np.argmax(float_scores, axis=1),
        )
        float_top1 = float(np.mean(np.argmax(float_scores, axis=1) == embedded.test_y))
        report.update(evaluation.to_json())
        report["float_top1_accuracy"] = float_top1
        report["agreement_ok"] = check_agreement(evaluation.agreement, reporter)
        report["timing"]["evaluate_s"] = round(time.perf_counter() - start, 3)
        report["model"] = str(files["model"])
        report["labels"] = str(files["labels"])
        staged.stage(files["report"], (json.dumps(report, indent=2) + "\n").encode())
        staged.commit()
    return TrainingResult(files["model"], files["labels"], files["report"], report)


def check_agreement(agreement: float | None, reporter: Reporter) -> bool:
    """False (with a warning) when the 8-bit model disagrees with its float head too often.

    The exported layers' 8-bit ranges are chosen for unseen images; if held-out images
    still fall outside them, the model written is worse than the head it was made from.
    """
    if agreement is None or agreement >= AGREEMENT_FLOOR:
        return True
    reporter.warn(
        f"the exported 8-bit model gives the float head's top class on only "
        f"{100 * agreement:.1f}% of held-out images (expected at least "
        f"{100 * AGREEMENT_FLOOR:.0f}%): its 8-bit ranges do not fit these images; the model "
        "was written, but check the report before using it"
    )
    return False


def base_report(
    trainer: str,
    data_dir: str | Path,
    data_split: Split,
    dataset: Dataset,
    embedded: Embedded,
    settings: dict[str, Any],
    extractor_info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "workbench_version": __version__,
        "trainer": trainer,
        "data_dir": str(data_dir),
        **extractor_info,
        "settings": settings,
        "classes": list(data_split.classes),
        "counts": {
            "train": {c: len(data_split.train[c]) for c in data_split.classes},
            "test": {c: len(data_split.test[c]) for c in data_split.classes},
        },
        "split": data_split.to_json(),
        "skipped_files": [str(p) for p in dataset.skipped],
        "unreadable": [{"file": str(p), "error": e} for p, e in embedded.unreadable],
        "timing": {"extract_s": round(embedded.seconds, 3)},
        "cache": embedded.cache,
    }


@dataclass
class TrainingRun:
    """Everything a trainer needs: the split, the extractor's graph and the embeddings."""

    dataset: Dataset
    split: Split
    graph: Graph
    embedding_tensor: int
    embedded: Embedded
    extractor_info: dict[str, Any]


def start_training(
    data_dir: str | Path,
    extractor: str | Path | None,
    output: Path | None,
    test_ratio: float,
    max_per_class: int,
    seed: int,
    device: str | None,
    reporter: Reporter,
    extractor_graph: Graph | None = None,
    cache: CacheChoice = True,
) -> TrainingRun:
    """Scan and split the folder, check the output is writable, embed every image once.

    `extractor` None means the bundled EfficientNet-Lite0. `extractor_graph`, when given, is
    the extractor to run (built in memory, e.g. cut from a base model); `extractor` then names
    the file it came from.
    """
    if extractor is None:
        from workbench.models import bundled_model

        extractor = bundled_model()
    dataset, data_split = prepare_split(data_dir, test_ratio, max_per_class, seed, reporter)
    if output is not None:
        check_writable(output)
    if extractor_graph is None:
        model = load_model(extractor, device=device)
        graph = Graph.load(extractor)
    else:
        graph = extractor_graph
        model = load_model(extractor, device=device, content=graph.to_bytes())
    prep = Preprocessing.for_input(model.input)
    embedding_tensor, _ = embedding_output(graph)
    embedded = extract_split(model, prep, data_split, reporter, open_cache(cache, model, prep))
    return TrainingRun(
        dataset, data_split, graph, embedding_tensor, embedded, _extractor_info(model, prep)
    )


def evaluate_folder(
    model_path: str | Path,
    data_dir: str | Path,
    labels_path: str | Path | None = None,
    test_ratio: float = DEFAULT_TEST_RATIO,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
    split_report: str | Path | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
) -> dict[str, Any]:
    """Evaluate a model on the held-out part of `data_dir` (the split training used)."""
    from workbench.dataset import load_split
    from workbench.export import default_labels_path

    reporter = reporter or Reporter()
    labels = read_labels(labels_path or default_labels_path(model_path))
    if split_report is not None:
        data_split = load_split(split_report)
        dataset = None
    else:
        dataset, data_split = prepare_split(data_dir, test_ratio, max_per_class, seed, reporter)
    model = load_model(model_path, device=device)
    files, true_classes = data_split.files("test")
    evaluation = evaluate_model_on(
        model, files, np.asarray(true_classes), data_split.classes, labels, reporter, cache=cache
    )
    report = evaluation.to_json()
    report.update(
        {
            "workbench_version": __version__,
            "model": str(model_path),
            "data_dir": str(data_dir),
            "settings": {"test_ratio": test_ratio, "max_per_class": max_per_class, "seed": seed},
            "split": data_split.to_json(),
            "skipped_files": [str(p) for p in dataset.skipped] if dataset else [],
        }
    )
    return report
