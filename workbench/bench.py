"""Benchmarks that print what they measure; targets are read off, never asserted on time."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from workbench.backprop import DEFAULT_EPOCHS, train_backprop


def bench_backprop(
    samples: int = 1000, dim: int = 1024, classes: int = 5, epochs: int = DEFAULT_EPOCHS
) -> dict[str, Any]:
    """Time `train_backprop` at its defaults on random clustered embeddings of a given size."""
    rng = np.random.default_rng(0)
    centers = rng.uniform(0.0, 1.0, size=(classes, dim))
    labels = rng.integers(0, classes, size=samples)
    x = np.clip(centers[labels] + rng.normal(0.0, 0.5, size=(samples, dim)), 0.0, 6.0)
    start = time.perf_counter()
    head = train_backprop(x.astype(np.float32), labels, classes, epochs=epochs)
    seconds = time.perf_counter() - start
    return {
        "samples": samples,
        "dim": dim,
        "classes": classes,
        "epochs": epochs,
        "seconds": round(seconds, 3),
        "ms_per_epoch": round(1000 * seconds / epochs, 3),
        "best_epoch": head.best_epoch,
    }
