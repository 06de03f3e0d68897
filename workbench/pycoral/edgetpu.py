"""Interpreters and the Edge TPU runtime (pycoral.utils.edgetpu).

pycoral's functions with its signatures and exception types: a missing Edge TPU runtime or
device raises ValueError (as `tflite.load_delegate` does), which is what scripts catch to fall
back to a CPU model. One deliberate difference: `make_interpreter` runs a model without Edge
TPU ops on the CPU when no Edge TPU is there (with a warning if a `device` was asked for),
where pycoral fails to load the delegate; Coral's demos then also run on a machine without one.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.progress import WorkbenchWarning
from workbench.extract.runtime import (
    DEVICE_PATTERN,
    EDGETPU_LIBRARY,
    INSTALL_HINT,
    Interpreter,
    cpu_threads,
    edgetpu_delegate,
    load_delegate,
)
from workbench.extract.runtime import list_edge_tpus as _list_edge_tpus
from workbench.pycoral.dataset import read_label_file
from workbench.tflite.graph import Graph, read_model_bytes

__all__ = [
    "get_runtime_version",
    "list_edge_tpus",
    "load_edgetpu_delegate",
    "make_interpreter",
    "read_label_file",
    "run_inference",
]


def _delegate_error(detail: object) -> ValueError:
    """pycoral's wording first (tflite's `load_delegate` message), then why."""
    return ValueError(f"Failed to load delegate from {EDGETPU_LIBRARY}: {detail}")


def load_edgetpu_delegate(options: dict[str, Any] | None = None) -> Any:
    """The Edge TPU delegate; `options` as pycoral takes them, usually {'device': 'usb:0'}.

    Raises ValueError naming the runtime library when it or the device is missing, so a
    caller can fall back to a CPU model. With only a device option the delegate is the one
    workbench keeps per device (libedgetpu refuses a second delegate on an open device).
    """
    options = {str(k): v for k, v in (options or {}).items()}
    device = options.pop("device", None) or None
    try:
        if not options:
            return edgetpu_delegate(device)
        # Other libedgetpu options need a delegate of their own. Opening the library first
        # turns a missing runtime into this error, not into the runtime's finalizer traceback.
        ctypes.CDLL(EDGETPU_LIBRARY)
        return load_delegate(EDGETPU_LIBRARY, {**options, **({"device": device} if device else {})})
    except WorkbenchError as e:
        raise _delegate_error(e) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise _delegate_error(f"{e}; {INSTALL_HINT}") from None


def _model_content(model_path_or_content: str | Path | bytes | bytearray | memoryview) -> bytes:
    if isinstance(model_path_or_content, bytes | bytearray | memoryview):
        return bytes(model_path_or_content)
    try:
        return read_model_bytes(model_path_or_content)
    except WorkbenchError as e:
        # tflite's Interpreter(model_path=...) says "Could not open '<path>'." (ValueError).
        raise ValueError(f"Could not open '{model_path_or_content}': {e}") from None


def make_interpreter(
    model_path_or_content: str | Path | bytes,
    device: str | None = None,
    delegate: Any = None,
) -> Any:
    """An interpreter for a model file or its bytes, with the Edge TPU delegate when needed.

    As in pycoral, `device` picks the Edge TPU (usb, usb:N, pci, pci:N, :N) and a pre-loaded
    `delegate` (from `load_edgetpu_delegate`) is used as given, `device` then ignored. A model
    with Edge TPU ops and no Edge TPU raises ValueError (pycoral's "Failed to load delegate").
    Unlike pycoral, a model without Edge TPU ops runs on the CPU when the runtime or device is
    absent, with a WorkbenchWarning when a `device` was asked for.
    """
    if device and not DEVICE_PATTERN.match(device):
        # A typo, not a missing device: refused even where the CPU would do.
        raise _delegate_error(f"bad device {device!r}: use usb, usb:N, pci, pci:N or :N")
    content = _model_content(model_path_or_content)
    try:
        needs_tpu = Graph.from_bytes(content).has_edgetpu_op()
    except WorkbenchError as e:
        raise ValueError(str(e)) from None
    delegates: list[Any] = []
    if delegate:
        delegates = [delegate]
    elif needs_tpu or device is not None:
        try:
            delegates = [load_edgetpu_delegate({"device": device} if device else None)]
        except ValueError as e:
            if needs_tpu:
                raise ValueError(f"{e} (the model has Edge TPU operators)") from None
            warnings.warn(
                f"running on the CPU (the model has no Edge TPU operators): {e}",
                WorkbenchWarning,
                stacklevel=2,
            )
    return Interpreter(
        model_content=content, experimental_delegates=delegates or None, num_threads=cpu_threads()
    )


def list_edge_tpus() -> list[dict[str, str]]:
    """The Edge TPUs present, as pycoral lists them: [{'type': 'usb', 'path': ...}].

    Empty when the Edge TPU runtime is not installed (pycoral cannot even be imported then).
    """
    return [{"type": d["type"], "path": d["path"]} for d in _list_edge_tpus().devices]


def get_runtime_version() -> str:
    """The Edge TPU runtime's version string, as libedgetpu reports it.

    Raises ValueError naming the library when it is not installed.
    """
    runtime = _list_edge_tpus()
    if runtime.library is None:
        raise ValueError(f"Failed to load {EDGETPU_LIBRARY}: {runtime.error}; {INSTALL_HINT}")
    if runtime.version is None:
        raise ValueError(f"{EDGETPU_LIBRARY} does not report its version (edgetpu_version)")
    return runtime.version


def _raw_input(input_data: Any, expected: int) -> np.ndarray:
    """The first `expected` bytes of bytes, a numpy array or a (c_void_p, size) pair."""
    if isinstance(input_data, bytes | bytearray | memoryview):
        data = np.frombuffer(bytes(input_data), np.uint8)
    elif isinstance(input_data, np.ndarray):
        data = np.ascontiguousarray(input_data).reshape(-1).view(np.uint8)
    elif (
        isinstance(input_data, tuple)
        and len(input_data) == 2
        and isinstance(input_data[0], ctypes.c_void_p)
        and isinstance(input_data[1], int)
    ):
        pointer, size = input_data
        if size < expected:
            raise ValueError(f"input size={size}, expected={expected}.")
        return np.frombuffer(ctypes.string_at(pointer.value, expected), np.uint8)
    else:
        # pycoral also takes GStreamer buffers; workbench does not depend on GStreamer.
        raise TypeError("input data type is not supported.")
    if data.size < expected:
        raise ValueError(f"input size={data.size}, expected={expected}.")
    return data[:expected]


def run_inference(interpreter: Any, input_data: Any) -> None:
    """Invoke the interpreter on a raw 8-bit input: bytes, a numpy array or (c_void_p, size).

    As pycoral: the data are the input tensor's bytes in order (e.g. an RGB image's pixels
    row by row), at least as many as the tensor holds (extra bytes, such as row padding at the
    end, are ignored); fewer raise ValueError, another type raises TypeError.
    """
    details = interpreter.get_input_details()[0]
    dtype = np.dtype(details["dtype"])
    if dtype.itemsize != 1:
        raise ValueError(f"run_inference needs an 8-bit input tensor, this one is {dtype.name}")
    shape = tuple(int(d) for d in details["shape"])
    raw = _raw_input(input_data, int(np.prod(shape)))
    interpreter.set_tensor(details["index"], raw.view(dtype).reshape(shape))
    interpreter.invoke()
