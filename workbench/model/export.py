"""Writing a trained model: its bytes with standard and workbench metadata, beside its labels.

How the files are written (checked, staged, committed as one unit) is `workbench.core.outputs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core import __version__
from workbench.core.errors import WorkbenchError
from workbench.core.jsonfile import parse_json
from workbench.core.outputs import check_outputs, output_files, remove_stale, write_files_atomically
from workbench.data.labels import labels_text
from workbench.tflite.graph import Graph
from workbench.tflite.metadata import ModelMetadata, graph_with_standard_metadata

METADATA_NAME = "workbench"
METADATA_FORMAT = 1
# Metadata entry with the fingerprints of the images a model was trained on.
TRAINING_FILES_METADATA = "workbench_training_files"


def set_workbench_metadata(graph: Graph, info: dict[str, Any]) -> None:
    """Record how the model was made (trainer, classes, embedding tensor) inside the file."""
    payload = {"format": METADATA_FORMAT, **info}
    graph.set_metadata(METADATA_NAME, json.dumps(payload, sort_keys=True).encode())


def workbench_metadata(graph: Graph) -> dict[str, Any] | None:
    raw = graph.metadata(METADATA_NAME)
    if raw is None:
        return None
    try:
        data = parse_json(raw.decode())
    except ValueError:  # not UTF-8 (UnicodeDecodeError), not JSON, or nested too deeply
        return None
    return data if isinstance(data, dict) else None


def model_bytes(graph: Graph, labels: list[str], info: dict[str, Any]) -> bytes:
    """The bytes of a finished model: workbench's own entry, then the standard metadata.

    The standard entry (with the labels packed in) is attached last: it appends an archive
    to the flatbuffer, which any later re-packing would drop. Both entries are set on
    `graph` itself.
    """
    set_workbench_metadata(graph, {**info, "classes": list(labels)})
    trainer = info.get("trainer", "workbench")
    described = ModelMetadata(
        name=f"workbench {trainer} classifier",
        description=f"{len(labels)}-class image classifier: an embedding extractor with a "
        f"last layer trained on the device by workbench {trainer}.",
        version=__version__,
        labels=list(labels),
    )
    return graph_with_standard_metadata(graph, described)


def save_model(
    graph: Graph,
    output: str | Path,
    labels: list[str],
    info: dict[str, Any],
    inputs: list[Any] = (),  # type: ignore[assignment]
) -> tuple[Path, Path]:
    """Write a trained model and its labels file together; returns (model, labels) paths.

    The outputs are checked first: neither may be one of `inputs` (such as the extractor) or
    an unrelated file of another kind (`workbench.core.outputs.check_outputs`).
    """
    files = output_files(output)
    targets = {"model": files["model"], "labels": files["labels"]}
    check_outputs(targets, inputs=[p for p in inputs if isinstance(p, str | Path)])
    remove_stale(targets.values())
    write_files_atomically(
        {
            files["model"]: model_bytes(graph, labels, info),
            files["labels"]: labels_text(labels).encode(),
        }
    )
    return files["model"], files["labels"]


def pycoral_model_bytes(graph: Graph, trainer: str) -> bytes:
    """A model from the pycoral-compatible engines: standard metadata, no labels (unknown).

    pycoral's engines serialize without class names (scripts write the labels file), so the
    metadata describes the input and the probability output, and names no labels file.
    """
    described = ModelMetadata(
        name=f"workbench {trainer} classifier",
        description=f"Image classifier with a last layer trained by workbench's pycoral-"
        f"compatible {trainer} engine.",
        version=__version__,
    )
    try:
        return graph_with_standard_metadata(graph, described)
    except WorkbenchError:  # not an image classifier (a test model): nothing standard to say
        return graph.to_bytes()


def record_training_files(graph: Graph, found: np.ndarray, inherited: np.ndarray | None) -> None:
    """Store the training images' fingerprints (and a base model's) in the model, for
    `evaluate` to check against."""
    if inherited is not None:
        found = np.union1d(found, inherited)
    graph.set_metadata(TRAINING_FILES_METADATA, found.astype("<u8").tobytes())


def trained_on(graph: Graph) -> np.ndarray | None:
    """The training-file fingerprints a model records, or None (not made by workbench)."""
    data = graph.metadata(TRAINING_FILES_METADATA)
    if data is None or len(data) % 8:
        return None  # not recorded, or damaged: nothing trustworthy to check against
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)
