"""Labels files and workbench's own metadata entry: what a model says about its classes.

How the files are written (checked, staged, committed as one unit) is `workbench.outputs`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from workbench import __version__
from workbench.errors import WorkbenchError
from workbench.outputs import check_outputs, output_files, remove_stale, write_files_atomically
from workbench.report import parse_json
from workbench.tflite.graph import Graph
from workbench.tflite.metadata import ModelMetadata, graph_with_standard_metadata

METADATA_NAME = "workbench"
METADATA_FORMAT = 1


def label_problem(name: str) -> str | None:
    """Why `name` would not survive a labels file unchanged (None if it would).

    Readers of `<id> <label>` lines (Coral's included) strip each line and split at the
    first whitespace, so a label may not start or end with whitespace, nor hold a line
    break or another control character; spaces inside it are kept.
    """
    if not name.strip():
        return "is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if name != name.strip():
        return "starts or ends with whitespace"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a line break, tab or other control character"
    return None


def labels_text(names: list[str]) -> str:
    """Coral's labels format: `<id> <label>` per line."""
    for name in names:
        problem = label_problem(name)
        if problem:
            raise WorkbenchError(f"class name {name!r} {problem}; labels files cannot keep it")
    return "".join(f"{i} {name}\n" for i, name in enumerate(names))


# Labels files: ids below MAX_LABELS (as many classes as a model may have), and at most
# MAX_LABELS_BYTES in all.
MAX_LABELS = 100_000
MAX_LABELS_BYTES = 32 << 20


def read_labels(path: str | Path) -> list[str]:
    """Read `<id> <label>` lines (Coral) or plain lines (the line number is the id).

    A name given to two ids is refused: classes are matched by name (folders to labels,
    continued models' classes), so a duplicate would merge two classes or score one twice.
    """
    labels = _label_lines(Path(path))
    first_id: dict[str, int] = {}
    for i, name in enumerate(labels):
        if name in first_id:
            raise WorkbenchError(
                f"{path}: the label {name!r} is given to ids {first_id[name]} and {i}; "
                "each class needs a name of its own"
            )
        first_id[name] = i
    return labels


def _label_lines(path: Path) -> list[str]:
    """The labels in file order, by id (a gap in the ids gets the name `class_<id>`).

    At most MAX_LABELS ids and MAX_LABELS_BYTES of file: a line `99999999999 x` would
    otherwise fill memory with the names of the ids before it.
    """
    try:
        # Opened without waiting, and read only if it is a regular file: a named pipe or a
        # device given as --labels would block or never end.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                raise WorkbenchError(f"cannot read labels file {path}: it is {kind}")
            with open(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_LABELS_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_LABELS_BYTES:
            raise WorkbenchError(
                f"labels file {path} is larger than {MAX_LABELS_BYTES >> 20} MiB; "
                "is it a labels file?"
            )
        lines = [line.strip() for line in raw.decode("utf-8").splitlines()]
    except FileNotFoundError:
        raise WorkbenchError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"cannot read labels file {path}: {e}") from None
    lines = [line for line in lines if line]
    if not lines:
        raise WorkbenchError(f"labels file is empty: {path}")
    first = lines[0].split(maxsplit=1)
    if len(first) == 2 and _is_id(first[0]):
        labels: dict[int, str] = {}
        for line in lines:
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not _is_id(parts[0]):
                raise WorkbenchError(f"{path}: expected '<id> <label>', got {line!r}")
            if int(parts[0]) >= MAX_LABELS:
                raise WorkbenchError(
                    f"{path}: label id {parts[0]} is too large (ids go up to {MAX_LABELS - 1})"
                )
            labels[int(parts[0])] = parts[1].strip()
        size = max(labels) + 1
        return [labels.get(i, f"class_{i}") for i in range(size)]
    return lines


def _is_id(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²", which `int` refuses."""
    return text.isascii() and text.isdigit()


def default_labels_path(model_path: str | Path) -> Path:
    return output_files(model_path)["labels"]


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
    an unrelated file of another kind (`workbench.outputs.check_outputs`).
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
