"""`workbench backprop`: a softmax-regression last layer trained with SGD on a folder."""

from __future__ import annotations

import time
from pathlib import Path

from workbench.backprop import (
    CV_FOLDS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    EpochStats,
    train_backprop,
)
from workbench.dataset import DEFAULT_MAX_PER_CLASS, DEFAULT_SEED, DEFAULT_TEST_RATIO
from workbench.errors import WorkbenchError
from workbench.export import set_workbench_metadata
from workbench.pipeline import (
    CacheChoice,
    TrainingResult,
    base_report,
    default_output,
    finish_training,
    start_training,
)
from workbench.progress import Reporter
from workbench.tflite.heads import append_softmax_regression_tail


def backprop_folder(
    data_dir: str | Path,
    extractor: str | Path | None = None,
    output: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reg: float | None = None,
    test_ratio: float = DEFAULT_TEST_RATIO,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = DEFAULT_SEED,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
) -> TrainingResult:
    """Train a softmax-regression last layer with SGD on the folder's embeddings.

    `reg` None chooses the penalty by cross-validation on the training split; the held-out
    test split is never seen by training or by any choice.
    """
    if epochs < 1:
        raise WorkbenchError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise WorkbenchError(f"--batch-size must be at least 1, got {batch_size}")
    if not learning_rate > 0.0 or (reg is not None and not reg >= 0.0):
        raise WorkbenchError("--learning-rate must be positive and --reg at least 0")
    reporter = reporter or Reporter()
    output = Path(output) if output is not None else default_output(data_dir, "backprop")
    run = start_training(
        data_dir, extractor, output, test_ratio, max_per_class, seed, device, reporter,
        cache=cache,
    )  # fmt: skip
    data_split, graph, embedded = run.split, run.graph, run.embedded
    classes = list(data_split.classes)

    start = time.perf_counter()
    with reporter.task("training", CV_FOLDS + epochs) as advance:

        def on_fold(fold: int) -> None:
            advance(1, status=f"choosing reg: fold {fold}/{CV_FOLDS}")

        def on_epoch(stats: EpochStats) -> None:
            advance(1, status=f"loss {stats.loss:.3f} train {stats.train_accuracy:.3f}")

        try:
            head = train_backprop(
                embedded.train_x,
                embedded.train_y,
                len(classes),
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                reg=reg,
                seed=seed,
                on_epoch=on_epoch,
                on_fold=on_fold,
            )
        except FloatingPointError as e:
            raise WorkbenchError(str(e)) from None
    train_seconds = time.perf_counter() - start
    if head.fallback:
        reporter.warn(head.fallback)

    append_softmax_regression_tail(graph, head.weights.T, head.bias, head.logit_range)
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
        "test_ratio": test_ratio,
        "max_per_class": max_per_class,
        "seed": seed,
    }
    report = base_report(
        "backprop", data_dir, data_split, run.dataset, embedded, settings, run.extractor_info
    )
    report["timing"]["train_s"] = round(train_seconds, 3)
    report["head"] = head.summary()
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
