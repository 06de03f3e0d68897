"""`workbench curve`: how accuracy grows with the number of photos per class.

Every point is trained on the first N training images of each class (the split's own
shuffled order, so smaller sets are subsets of larger ones) and scored on the same held-out
images, all from one extraction (through the cache). It tells a user how many photos are
worth collecting, and which trainer to use at their count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.backprop import train_backprop
from workbench.head_eval import load_head, run_head
from workbench.imprint import train_imprinting
from workbench.pipeline import CacheChoice, start_training
from workbench.progress import Reporter
from workbench.tflite.heads import append_imprinting_tail, append_softmax_regression_tail
from workbench.train_imprint import whitening_layer

DEFAULT_CAPS = (1, 2, 5, 10, 20, 50, 100, 200)
TRAINERS = ("imprint", "imprint --no-whiten", "backprop")


@dataclass
class CurvePoint:
    """Held-out top-1 of each trainer's float head (and exported model, where run) at a cap."""

    cap: int
    train_images: int
    float_top1: dict[str, float]
    exported_top1: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


def _first_per_class(labels: np.ndarray, cap: int) -> np.ndarray:
    """Rows of the first `cap` images of each class (rows are in the split's order)."""
    seen: dict[int, int] = {}
    keep = []
    for row, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < cap:
            keep.append(row)
            seen[label] = seen.get(label, 0) + 1
    return np.asarray(keep, np.int64)


def learning_curve(
    data_dir: str | Path,
    extractor: str | Path | None = None,
    caps: tuple[int, ...] = DEFAULT_CAPS,
    exported_at: tuple[int, ...] = (),
    test_ratio: float = 0.25,
    seed: int = 0,
    device: str | None = None,
    reporter: Reporter | None = None,
    cache: CacheChoice = True,
) -> dict[str, Any]:
    """Top-1 of every trainer at every cap over one held-out split, from one extraction."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    run = start_training(
        data_dir, extractor, None, test_ratio, max(caps), seed, device, reporter, cache=cache
    )
    embedded, num_classes = run.embedded, len(run.split.classes)
    points = []
    with reporter.task("training at each cap", len(caps)) as advance:
        for cap in sorted(caps):
            rows = _first_per_class(embedded.train_y, cap)
            x, y = embedded.train_x[rows], embedded.train_y[rows]
            heads = {
                "imprint": train_imprinting(x, y, num_classes, whiten=True, seed=seed),
                "imprint --no-whiten": train_imprinting(x, y, num_classes, whiten=False, seed=seed),
                "backprop": train_backprop(x, y, num_classes, seed=seed),
            }
            point = CurvePoint(
                cap,
                len(rows),
                {
                    name: float(np.mean(head.scores(embedded.test_x).argmax(1) == embedded.test_y))
                    for name, head in heads.items()
                },
            )
            if cap in exported_at:
                _score_exported(point, heads, run, embedded)
            points.append(point)
            advance(1, status=f"{cap} per class")
    return {
        "data_dir": str(data_dir),
        "classes": list(run.split.classes),
        "held_out_images": len(embedded.test_y),
        "unreadable": len(embedded.unreadable),
        "settings": {"test_ratio": test_ratio, "seed": seed, "caps": sorted(caps)},
        **run.extractor_info,
        "points": [point.__dict__ for point in points],
        "timing": {"extract_s": round(embedded.seconds, 3),
                   "total_s": round(time.perf_counter() - started, 3)},
    }  # fmt: skip


def _score_exported(point: CurvePoint, heads: dict[str, Any], run: Any, embedded: Any) -> None:
    """Export each head onto the extractor and run its 8-bit layers on the held-out outputs."""
    for name, head in heads.items():
        graph = run.graph.__class__.from_bytes(run.graph.to_bytes())
        if name == "backprop":
            append_softmax_regression_tail(graph, head.weights.T, head.bias, head.logit_range)
        else:
            append_imprinting_tail(
                graph, head.classes.weights, head.scale_factor, head.cosine_range,
                transform=whitening_layer(head),
            )  # fmt: skip
        exported = run_head(load_head(graph, run.embedding_tensor), embedded.test_x).argmax(1)
        float_top1 = head.scores(embedded.test_x).argmax(1)
        point.exported_top1[name] = float(np.mean(exported == embedded.test_y))
        point.agreement[name] = float(np.mean(exported == float_top1))
