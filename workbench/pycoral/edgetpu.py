"""Interpreters and label files (pycoral.utils.edgetpu, pycoral.utils.dataset)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.export import read_labels
from workbench.progress import WorkbenchWarning
from workbench.runtime import (
    Interpreter,
    cpu_threads,
    edgetpu_delegate,
)
from workbench.runtime import (
    list_edge_tpus as _list_edge_tpus,
)
from workbench.tflite.graph import Graph, read_model_bytes


def make_interpreter(
    model_path_or_content: str | Path | bytes,
    device: str | None = None,
    delegate: Any = None,
) -> Any:
    """An interpreter for a model file or its bytes, with the Edge TPU delegate when needed.

    As in pycoral, `device` picks the Edge TPU (usb, usb:N, pci, pci:N, :N). Unlike pycoral,
    a model with no Edge TPU op runs on the CPU when no Edge TPU runtime or device is
    present (with a warning), so Coral's demos also run on a machine without one.
    """
    if isinstance(model_path_or_content, bytes | bytearray):
        content = bytes(model_path_or_content)
    else:
        content = read_model_bytes(model_path_or_content)
    needs_tpu = Graph.from_bytes(content).has_edgetpu_op()
    delegates = [delegate] if delegate is not None else []
    if delegate is None and (needs_tpu or device is not None):
        try:
            delegates = [edgetpu_delegate(device)]
        except WorkbenchError as e:
            if needs_tpu:
                raise
            warnings.warn(f"running on the CPU: {e}", WorkbenchWarning, stacklevel=2)
    return Interpreter(
        model_content=content, experimental_delegates=delegates or None, num_threads=cpu_threads()
    )


def list_edge_tpus() -> list[dict[str, str]]:
    """The Edge TPUs present, as pycoral lists them: [{'type': 'usb', 'path': ...}]."""
    return [{"type": d["type"], "path": d["path"]} for d in _list_edge_tpus().devices]


def read_label_file(file_path: str | Path) -> dict[int, str]:
    """{id: label} from `<id> <label>` lines or plain lines (the line number is the id)."""
    return dict(enumerate(read_labels(file_path)))
