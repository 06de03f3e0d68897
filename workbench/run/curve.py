"""`workbench curve`: how accuracy grows with the number of photos per class.

Every point is trained on the first N training images of each class (the split's own
shuffled order, so smaller sets are subsets of larger ones) and scored on the same held-out
images, all from one extraction (through the cache). It tells a user how many photos are
worth collecting, and which trainer to use at their count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.core.options import DataOptions, ImprintOptions, RunOptions
from workbench.core.progress import Reporter, fallbacks
from workbench.heads.imprint_head import ImprintingHead
from workbench.heads.softmax_head import SoftmaxHead
from workbench.model.head_eval import head_scores
from workbench.run.trainers import bundled_source
from workbench.run.training import Prepared, prepare
from workbench.tflite.graph import Graph

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
    fallbacks: list[str] = field(default_factory=list)  # see progress.Fallback


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
    caps: tuple[int, ...] = DEFAULT_CAPS,
    exported_at: tuple[int, ...] = (),
    data: DataOptions = DataOptions(),
    run: RunOptions = RunOptions(),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Top-1 of every trainer at every cap over one held-out split, from one extraction.

    `data.max_per_class` is ignored: the largest cap is the split's cap.
    """
    reporter = reporter or Reporter()
    started = time.perf_counter()
    data = replace(data, max_per_class=max(caps))
    prepared = prepare(data_dir, bundled_source(run), data, run, None, reporter)
    embedded, num_classes = prepared.embedded, len(prepared.split.classes)
    seed = data.seed
    points = []
    # one BLAS thread, as in `training.train` (spinning BLAS threads on a busy machine)
    with (
        threadpool_limits(limits=1, user_api="blas"),
        reporter.task("training at each cap", len(caps)) as advance,
    ):
        for cap in sorted(caps):
            rows = _first_per_class(embedded.train_y, cap)
            x, y = embedded.train_x[rows], embedded.train_y[rows]
            with fallbacks() as used:
                heads: dict[str, Any] = {
                    "imprint": ImprintingHead.fit(x, y, num_classes, seed=seed),
                    "imprint --no-whiten": ImprintingHead.fit(
                        x, y, num_classes, ImprintOptions(whiten=False), seed
                    ),
                    "backprop": SoftmaxHead.fit(x, y, num_classes, seed=seed),
                }
            for message in used:
                reporter.warn(f"{cap} per class: {message}")
            point = CurvePoint(
                cap,
                len(rows),
                {
                    name: float(np.mean(head.scores(embedded.test_x).argmax(1) == embedded.test_y))
                    for name, head in heads.items()
                },
            )
            point.fallbacks = used
            if cap in exported_at:
                _score_exported(point, heads, prepared)
            points.append(point)
            advance(1, status=f"{cap} per class")
    return {
        "data_dir": str(data_dir),
        "classes": list(prepared.split.classes),
        "held_out_images": len(embedded.test_y),
        "unreadable": len(embedded.unreadable),
        "settings": {"test_ratio": data.test_ratio, "seed": seed, "caps": sorted(caps)},
        **prepared.info,
        "points": [point.__dict__ for point in points],
        "timing": {"extract_s": round(embedded.seconds, 3),
                   "total_s": round(time.perf_counter() - started, 3)},
    }  # fmt: skip


def _score_exported(point: CurvePoint, heads: dict[str, Any], prepared: Prepared) -> None:
    """Export each head onto the extractor and run its 8-bit layers on the held-out outputs."""
    embedded = prepared.embedded
    for name, head in heads.items():
        graph = Graph.from_bytes(prepared.graph.to_bytes())
        head.append_to(graph)
        exported = head_scores(graph, prepared.embedding_tensor, embedded.test_x).argmax(1)
        float_top1 = head.scores(embedded.test_x).argmax(1)
        point.exported_top1[name] = float(np.mean(exported == embedded.test_y))
        point.agreement[name] = float(np.mean(exported == float_top1))
