"""`workbench backprop`: a softmax-regression last layer trained with SGD on a folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

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
from workbench.dataset import DEFAULT_MAX_PER_CLASS, DEFAULT_SEED, DEFAULT_TEST_RATIO
from workbench.errors import WorkbenchError
from workbench.export import set_workbench_metadata
from workbench.pipeline import (
    CacheChoice,
    TrainingResult,
    base_report,
    default_output,
    finish_training,
    padded_range,
    start_training,
)
from workbench.progress import Reporter
from workbench.tflite.heads import append_softmax_regression_tail


def logit_range(head: SoftmaxHead, train_x: np.ndarray) -> tuple[float, float]:
    """The span of the head's logits on the training embeddings, with headroom."""
    return padded_range(head.logits(train_x))


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
