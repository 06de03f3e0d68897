"""The training flow as a Python API: folder in, retrained model, labels and report out.

dataset (scan, split) -> runtime (extractor) -> embeddings -> trainer -> export -> evaluate.
The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from workbench import __version__
from workbench.backprop import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_REG,
    DEFAULT_VAL_RATIO,
    DEFAULT_WEIGHT_SCALE,
    EpochStats,
    SoftmaxHead,
    train_backprop,
)
from workbench.cache import OutputCache, default_cache_dir
from workbench.coral_format import training_state_text
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
    set_workbench_metadata,
)
from workbench.images import Preprocessing
from workbench.imprint import ImprintingHead, train_imprinting
from workbench.progress import Reporter
from workbench.runtime import LoadedModel, load_model
from workbench.tflite.graph import Graph
from workbench.tflite.heads import (
    Transform,
    append_imprinting_tail,
    append_softmax_regression_tail,
    embedding_output,
)

# Headroom around the range of a layer's outputs on the training data, for held-out images.
OUTPUT_RANGE_MARGIN = 0.1


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
        report["timing"]["evaluate_s"] = round(time.perf_counter() - start, 3)
        report["model"] = str(files["model"])
        report["labels"] = str(files["labels"])
        staged.stage(files["report"], (json.dumps(report, indent=2) + "\n").encode())
        staged.commit()
    return TrainingResult(files["model"], files["labels"], files["report"], report)


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
    extractor: str | Path,
    output: Path,
    test_ratio: float,
    max_per_class: int,
    seed: int,
    device: str | None,
    reporter: Reporter,
    extractor_graph: Graph | None = None,
    cache: CacheChoice = True,
) -> TrainingRun:
    """Scan and split the folder, check the output is writable, embed every image once.

    `extractor_graph`, when given, is the extractor to run (built in memory, e.g. cut from a
    base model); `extractor` then names the file it came from.
    """
    dataset, data_split = prepare_split(data_dir, test_ratio, max_per_class, seed, reporter)
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


def imprint_folder(
    data_dir: str | Path,
    extractor: str | Path | None = None,
    output: str | Path | None = None,
    test_ratio: float = DEFAULT_TEST_RATIO,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
    whiten: bool = True,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
    base: str | Path | None = None,
    keep_classes: bool = False,
    base_labels: str | Path | None = None,
) -> TrainingResult:
    """Weight-imprint a classifier for the class folders in `data_dir` and evaluate it.

    With `whiten` (the default) the embeddings are whitened with their within-class
    covariance before imprinting; without it the head is Coral's plain imprinting.
    With `base` (an imprinting model) training continues from it: see `imprint_onto_base`.
    """
    reporter = reporter or Reporter()
    output = Path(output) if output is not None else default_output(data_dir, "imprint")
    if base is not None:
        if extractor is not None:
            raise WorkbenchError("--base brings its own extractor; leave out --extractor")
        return imprint_onto_base(
            data_dir, base, output, keep_classes, base_labels,
            test_ratio, max_per_class, seed, device, reporter, cache,
        )  # fmt: skip
    if extractor is None:
        from workbench.models import bundled_model

        extractor = bundled_model()
    run = start_training(
        data_dir, extractor, output, test_ratio, max_per_class, seed, device, reporter,
        cache=cache,
    )  # fmt: skip
    dataset, data_split, graph, embedded = run.dataset, run.split, run.graph, run.embedded

    start = time.perf_counter()
    head: ImprintingHead = train_imprinting(
        embedded.train_x, embedded.train_y, len(data_split.classes), whiten=whiten
    )
    train_seconds = time.perf_counter() - start
    tail = append_imprinting_tail(
        graph,
        head.classes.weights,
        head.scale_factor,
        head.cosine_range,
        transform=whitening_layer(head, embedded.train_x),
    )
    info = run.extractor_info
    graph.set_description(training_state_text(head.classes.norms, head.classes.trainable))
    set_workbench_metadata(
        graph,
        {
            "trainer": "imprint",
            "classes": list(data_split.classes),
            "embedding_tensor": run.embedding_tensor,
            "l2norm_tensor": tail.l2norm_output,
            **info,
        },
    )
    settings = {
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
        "whiten": whiten,
    }
    report = base_report("imprint", data_dir, data_split, dataset, embedded, settings, info)
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["head"] = {
        "scale_factor": head.scale_factor,
        "cosine_range": list(head.cosine_range),
        "embedding_dim": head.classes.dim,
    }
    return finish_training(
        graph,
        output,
        list(data_split.classes),
        embedded,
        head.scores(embedded.test_x),
        report,
        device,
        reporter,
    )


def whitening_layer(head: ImprintingHead, train_x: np.ndarray) -> Transform | None:
    """The whitening as an exported layer, its output range taken from the training data."""
    if head.whitening is None:
        return None
    z = head.whitening.apply(train_x)
    lo, hi = float(z.min()), float(z.max())
    margin = OUTPUT_RANGE_MARGIN * (hi - lo)
    return Transform(head.whitening.matrix, head.whitening.bias, (lo - margin, hi + margin))


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


def logit_range(head: SoftmaxHead, train_x: np.ndarray) -> tuple[float, float]:
    """The span of the head's logits on the training embeddings, with headroom."""
    logits = head.logits(train_x)
    lo, hi = float(logits.min()), float(logits.max())
    margin = OUTPUT_RANGE_MARGIN * (hi - lo)
    return lo - margin, hi + margin


def backprop_folder(
    data_dir: str | Path,
    extractor: str | Path | None = None,
    output: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reg: float = DEFAULT_REG,
    weight_scale: float = DEFAULT_WEIGHT_SCALE,
    val_ratio: float = DEFAULT_VAL_RATIO,
    test_ratio: float = DEFAULT_TEST_RATIO,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
) -> TrainingResult:
    """Train a softmax-regression last layer with SGD on the folder's embeddings.

    The validation part is carved from the training split (stratified, `val_ratio`); the held-out
    test split is never seen by training or model selection.
    """
    if epochs < 1:
        raise WorkbenchError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise WorkbenchError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= val_ratio < 1.0:
        raise WorkbenchError(f"--val-ratio must be in [0, 1), got {val_ratio}")
    if learning_rate <= 0.0 or reg < 0.0 or weight_scale < 0.0:
        raise WorkbenchError("--learning-rate must be positive, --reg and --weight-scale >= 0")
    reporter = reporter or Reporter()
    output = Path(output) if output is not None else default_output(data_dir, "backprop")
    if extractor is None:
        from workbench.models import bundled_model

        extractor = bundled_model()
    run = start_training(
        data_dir, extractor, output, test_ratio, max_per_class, seed, device, reporter,
        cache=cache,
    )  # fmt: skip
    data_split, graph, embedded = run.split, run.graph, run.embedded
    classes = list(data_split.classes)

    start = time.perf_counter()
    with reporter.task("training", epochs) as advance:

        def on_epoch(stats: EpochStats) -> None:
            val = "-" if stats.val_accuracy is None else f"{stats.val_accuracy:.3f}"
            advance(
                1,
                status=f"epoch {stats.epoch}/{epochs} loss {stats.loss:.4f} "
                f"train {stats.train_accuracy:.3f} val {val}",
            )

        try:
            head = train_backprop(
                embedded.train_x,
                embedded.train_y,
                len(classes),
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                reg=reg,
                weight_scale=weight_scale,
                val_ratio=val_ratio,
                seed=seed,
                on_epoch=on_epoch,
            )
        except FloatingPointError as e:
            raise WorkbenchError(str(e)) from None
    train_seconds = time.perf_counter() - start
    if head.num_val == 0 and val_ratio > 0:
        reporter.warn("classes too small for a validation part; kept the last epoch's weights")

    append_softmax_regression_tail(
        graph, head.weights.T, head.bias, logit_range(head, embedded.train_x)
    )
    set_workbench_metadata(
        graph,
        {
            "trainer": "backprop",
            "classes": classes,
            "embedding_tensor": run.embedding_tensor,
            **run.extractor_info,
        },
    )
    settings = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "reg": reg,
        "weight_scale": weight_scale,
        "val_ratio": val_ratio,
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
    }
    report = base_report(
        "backprop", data_dir, data_split, run.dataset, embedded, settings, run.extractor_info
    )
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["head"] = {
        "embedding_dim": int(head.weights.shape[0]),
        "num_train": head.num_train,
        "num_val": head.num_val,
        "best_epoch": head.best_epoch,
    }
    report["training_curve"] = [stats.to_json() for stats in head.history]
    return finish_training(
        graph,
        output,
        classes,
        embedded,
        head.scores(embedded.test_x),
        report,
        device,
        reporter,
    )


def imprint_onto_base(
    data_dir: str | Path,
    base: str | Path,
    output: Path,
    keep_classes: bool,
    base_labels: str | Path | None,
    test_ratio: float,
    max_per_class: int,
    seed: int,
    device: str | None,
    reporter: Reporter,
    cache: CacheChoice = True,
) -> TrainingResult:
    """Continue imprinting from an imprinting model (workbench's or Coral's).

    The base's extractor, up to and including its L2Norm (and workbench's whitening before
    it), is reused as is; only the images in `data_dir` are extracted. With `keep_classes` the
    base's classes stay (ids first, labels merged by name): a folder named like a base class
    trained by imprinting adds images to it, one named like any other base class is refused.
    Without it the new model has only the folder's classes.
    """
    from workbench.coral_format import read_imprinting_model
    from workbench.export import default_labels_path
    from workbench.imprint import (
        cosine_window,
        fit_scale_factor,
        imprint,
        leave_one_out_cosines,
    )

    base_model = read_imprinting_model(Graph.load(base))
    known = read_labels(base_labels or default_labels_path(base))
    if len(known) != base_model.classes.num_classes:
        raise WorkbenchError(
            f"the base model has {base_model.classes.num_classes} classes but its labels file "
            f"has {len(known)}; pass the right one with --base-labels"
        )
    run = start_training(
        data_dir, base, output, test_ratio, max_per_class, seed, device, reporter,
        extractor_graph=base_model.extractor, cache=cache,
    )  # fmt: skip
    names = list(run.split.classes)
    state = None
    merged = names
    if keep_classes:
        state = base_model.classes
        frozen = [n for n in names if n in known and not state.trainable[known.index(n)]]
        if frozen:
            raise WorkbenchError(
                f"{', '.join(frozen)}: base-model classes not trained by imprinting can be kept "
                "but not retrained; rename or remove those folders"
            )
        merged = known + [n for n in names if n not in known]
    to_merged = np.asarray([merged.index(n) for n in names], np.int64)
    embedded = run.embedded
    train_y = to_merged[embedded.train_y]
    start = time.perf_counter()
    classes = imprint(embedded.train_x, train_y, len(merged), base=state)
    loo = leave_one_out_cosines(classes, embedded.train_x, train_y)
    scale_factor = fit_scale_factor(loo, train_y)
    head = ImprintingHead(classes, scale_factor, cosine_window(loo, scale_factor))
    train_seconds = time.perf_counter() - start

    graph = base_model.extractor
    tail = append_imprinting_tail(
        graph, classes.weights, head.scale_factor, head.cosine_range,
        embedding=base_model.embedding,
    )  # fmt: skip
    graph.set_description(training_state_text(classes.norms, classes.trainable))
    set_workbench_metadata(
        graph,
        {
            "trainer": "imprint",
            "classes": merged,
            "base": str(base),
            "l2norm_tensor": tail.l2norm_output,
            **run.extractor_info,
        },
    )
    settings = {
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
        "base": str(base),
        "keep_classes": keep_classes,
    }
    report = base_report(
        "imprint", data_dir, run.split, run.dataset, embedded, settings, run.extractor_info
    )
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["extracted_images"] = len(embedded.train_y) + len(embedded.test_y)
    report["base_classes"] = known if keep_classes else []
    report["head"] = {
        "scale_factor": head.scale_factor,
        "cosine_range": list(head.cosine_range),
        "embedding_dim": classes.dim,
    }
    evaluated = replace(embedded, test_y=to_merged[embedded.test_y])
    return finish_training(
        graph, output, merged, evaluated, head.scores(embedded.test_x), report, device, reporter
    )
