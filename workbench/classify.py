"""Classify image files with a model and time its inference.

The first invoke is timed on its own: it allocates kernels' scratch buffers, and on an Edge
TPU it loads the model into the accelerator's memory, so it is several times slower than the
steady state that follows.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from workbench.errors import WorkbenchError
from workbench.evaluate import ranked
from workbench.export import default_labels_path, read_labels
from workbench.images import ImageError, Preprocessing, load_input
from workbench.runtime import load_model


def classify_images(
    model_path: str | Path,
    images: list[Path],
    labels_path: str | Path | None = None,
    top_k: int = 3,
    repeat: int = 10,
    device: str | None = None,
) -> dict[str, Any]:
    """Top-k labels and scores per image, plus first-invoke and steady-state latency."""
    if top_k < 1:
        raise WorkbenchError("--top-k must be at least 1")
    labels_file = Path(labels_path) if labels_path else default_labels_path(model_path)
    labels = read_labels(labels_file) if labels_path or labels_file.exists() else None
    model = load_model(model_path, device=device)
    prep = Preprocessing.for_input(model.input)
    inputs = []
    for path in images:
        try:
            inputs.append(load_input(path, prep))
        except ImageError as e:
            raise WorkbenchError(f"cannot read image {path}: {e}") from None
    results = []
    times: list[float] = []
    for path, batch in zip(images, inputs, strict=True):
        raw, seconds = model.timed_run(batch)
        times.append(seconds)
        scores = model.output.dequantize(raw).reshape(-1)
        if labels is not None and len(labels) != scores.size:
            raise WorkbenchError(
                f"{labels_file} has {len(labels)} labels but the model gives {scores.size} scores"
            )
        order = ranked(scores[np.newaxis])[0][:top_k]
        results.append(
            {
                "image": str(path),
                "top": [
                    {
                        "id": int(i),
                        "label": labels[i] if labels is not None else str(int(i)),
                        "score": float(scores[i]),
                    }
                    for i in order
                ],
            }
        )
    steady = [model.timed_run(inputs[-1])[1] for _ in range(max(0, repeat))]
    steady_all = times[1:] + steady
    return {
        "model": str(model_path),
        "edgetpu": model.edgetpu,
        "results": results,
        "timing": {
            "first_invoke_ms": round(1000 * times[0], 3),
            "steady_state_ms": round(1000 * statistics.median(steady_all), 3)
            if steady_all
            else None,
            "steady_state_runs": len(steady_all),
        },
    }


def print_classification(console: Console, result: dict[str, Any]) -> None:
    for item in result["results"]:
        console.print(item["image"], markup=False, highlight=False, soft_wrap=True)
        table = Table()
        table.add_column("rank", justify="right")
        table.add_column("label")
        table.add_column("id", justify="right")
        table.add_column("score", justify="right")
        for rank, entry in enumerate(item["top"], start=1):
            table.add_row(str(rank), entry["label"], str(entry["id"]), f"{entry['score']:.4f}")
        console.print(table)
    timing = result["timing"]
    steady = timing["steady_state_ms"]
    console.print(
        f"inference: first invoke {timing['first_invoke_ms']:.2f} ms, steady state "
        + (f"{steady:.2f} ms (median of {timing['steady_state_runs']})" if steady else "n/a")
        + (" on the Edge TPU" if result["edgetpu"] else " on the CPU")
    )
