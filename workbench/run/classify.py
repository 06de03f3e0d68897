"""Classify image files (or folders of them) with a model, and time its inference.

Folders are searched recursively, in a stable (sorted) order; an unreadable image is skipped
with a warning and the rest classified. Labels come from `--labels`, else the labels file
beside the model, else the labels packed in the model's own metadata, else class ids.

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

from workbench.core.errors import WorkbenchError
from workbench.core.progress import Reporter
from workbench.core.terminal import plain
from workbench.data.dataset import check_folder, image_files_under
from workbench.data.images import ImageError, Preprocessing
from workbench.data.labels import default_labels_path, read_labels
from workbench.extract.embeddings import decode_ahead
from workbench.extract.runtime import load_model
from workbench.run.evaluate import ranked
from workbench.tflite.graph import read_model_bytes
from workbench.tflite.metadata import labels_from_model


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the images inside them, recursively, sorted.

    Folders are searched as class folders are (`image_files_under`): links to folders are
    not followed, nesting is bounded, and "/" or /proc, /sys and /dev are refused.
    """
    found: list[Path] = []
    for path in paths:
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except OSError as e:  # a name longer than the file system holds
            raise WorkbenchError(f"cannot use {path}: {e.strerror or e}") from None
        if not exists:
            raise WorkbenchError(f"image or folder not found: {path}")
        if is_dir:
            check_folder(path, "folder")
            inside = sorted(image_files_under(path, [], "folder"))
            if not inside:
                raise WorkbenchError(f"no images in folder {path}")
            found.extend(inside)
        else:
            found.append(path)
    return found


def model_labels(model_path: Path, labels_path: Path | None) -> tuple[list[str] | None, str]:
    """The model's class names and where they came from."""
    if labels_path is not None:
        return read_labels(labels_path), str(labels_path)
    beside = default_labels_path(model_path)
    if beside.exists():
        return read_labels(beside), str(beside)
    try:
        packed = labels_from_model(read_model_bytes(model_path))
    except WorkbenchError:
        packed = None
    return (packed, "the model's metadata") if packed else (None, "none: class ids shown")


def classify_images(
    model_path: str | Path,
    paths: list[Path],
    labels_path: str | Path | None = None,
    top_k: int = 3,
    threshold: float = 0.0,
    repeat: int = 10,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Top-k classes (score >= threshold) per image, plus first and steady-state latency."""
    reporter = reporter or Reporter()
    model_path = Path(model_path)
    labels, source = model_labels(model_path, Path(labels_path) if labels_path else None)
    model = load_model(model_path, device=device)
    width = int(np.prod(model.output.shape[1:]))
    if labels is not None and len(labels) != width:
        raise WorkbenchError(
            f"{source} has {len(labels)} labels but the model gives {width} scores"
        )
    files = image_files(paths)
    results, times, last = [], [], None
    for index, item in decode_ahead(files, Preprocessing.for_input(model.input)):
        if isinstance(item, ImageError):
            reporter.warn(f"skipped unreadable image {files[index]}: {item}")
            continue
        raw, seconds = model.timed_run(item)
        times.append(seconds)
        last = item
        scores = model.output.dequantize(raw).reshape(-1)
        top = top_classes(scores, labels, top_k, threshold)
        results.append({"file": str(files[index]), "top": top})
    if not results:
        raise WorkbenchError(f"none of the {len(files)} images could be read")
    steady = [model.timed_run(last)[1] for _ in range(max(0, repeat))] if last is not None else []
    steady_all = times[1:] + steady
    return {
        "model": str(model_path),
        "labels": source,
        "edgetpu": model.edgetpu,
        "results": results,
        "skipped": len(files) - len(results),
        "timing": {
            "first_invoke_ms": round(1000 * times[0], 3),
            "steady_state_ms": round(1000 * statistics.median(steady_all), 3)
            if steady_all
            else None,
            "steady_state_runs": len(steady_all),
        },
    }


def top_classes(
    scores: np.ndarray, labels: list[str] | None, top_k: int, threshold: float
) -> list[dict[str, Any]]:
    """The `top_k` best classes with a score of at least `threshold`, best first."""
    order = ranked(scores[np.newaxis])[0][:top_k]
    return [
        {
            "id": int(i),
            "label": labels[i] if labels is not None else str(int(i)),
            "score": float(scores[i]),
        }
        for i in order
        if scores[i] >= threshold
    ]


def print_classification(console: Console, result: dict[str, Any]) -> None:
    for item in result["results"]:
        console.print(plain(item["file"]), soft_wrap=True)
        table = Table()
        table.add_column("rank", justify="right")
        table.add_column("label", overflow="fold")
        table.add_column("id", justify="right")
        table.add_column("score", justify="right")
        for rank, entry in enumerate(item["top"], start=1):
            table.add_row(
                str(rank), plain(entry["label"]), str(entry["id"]), f"{entry['score']:.4f}"
            )
        console.print(table)
    timing = result["timing"]
    steady = timing["steady_state_ms"]
    console.print(
        f"inference: first invoke {timing['first_invoke_ms']:.2f} ms, steady state "
        + (f"{steady:.2f} ms (median of {timing['steady_state_runs']})" if steady else "n/a")
        + (" on the Edge TPU" if result["edgetpu"] else " on the CPU")
    )
