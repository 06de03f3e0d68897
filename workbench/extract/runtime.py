"""Runtime: one place that turns a model file into a ready TFLite interpreter.

It picks the interpreter (`tflite_runtime` when importable, since Coral boards pin it to match
libedgetpu; `ai_edge_litert` otherwise), loads the Edge TPU delegate when the model holds an
`edgetpu-custom-op` or a device is named, and turns the runtime's many failure modes into one
line that says what to do.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.core.native import native_stderr
from workbench.tflite.graph import (
    EDGETPU_CUSTOM_CODE,
    custom_codes,
    read_model_bytes,
    unpack_model,
)

try:  # Coral's Debian packages pin tflite_runtime to the libedgetpu they ship with.
    from tflite_runtime.interpreter import Interpreter, load_delegate

    RUNTIME_NAME = "tflite_runtime"
except ImportError:
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    RUNTIME_NAME = "ai_edge_litert"

# WORKBENCH_EDGETPU_LIBRARY points at a libedgetpu outside the loader's search path.
EDGETPU_LIBRARY = os.environ.get("WORKBENCH_EDGETPU_LIBRARY") or {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}.get(platform.system(), "libedgetpu.so.1")
DEVICE_PATTERN = re.compile(r"^(usb|pci)?(:\d+)?$")

INSTALL_HINT = (
    "install the Edge TPU runtime (Debian: apt install libedgetpu1-std, "
    "see https://coral.ai/software/#edgetpu-runtime) and plug in the device"
)

# Runtime messages Coral users meet, and what to do about each.
_HINTS: list[tuple[str, str]] = [
    (
        "Didn't find op for builtin opcode",
        "the model was converted by a newer TensorFlow than this runtime; "
        "upgrade ai-edge-litert (pip install -U ai-edge-litert)",
    ),
    (
        "which is newer than this runtime version",
        "the Edge TPU compiler was newer than libedgetpu; compile with "
        "`edgetpu_compiler -m <runtime version>` or upgrade libedgetpu",
    ),
    (
        "Unsupported data type in custom op handler",
        "tflite runtime and libedgetpu versions do not match; install the pair Coral ships",
    ),
    (
        "Encountered unresolved custom op",
        "the model holds a custom op this runtime does not provide",
    ),
]

_delegates: dict[str, Any] = {}


def _explain(message: str) -> str:
    message = " ".join(str(message).split())
    for needle, hint in _HINTS:
        if needle in message:
            return f"{message} ({hint})"
    return message


def cpu_threads() -> int:
    """Threads for the CPU kernels: all cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def edgetpu_delegate(device: str | None = None) -> Any:
    """The Edge TPU delegate for `device` (usb, usb:N, pci, pci:N, :N), one per device.

    libedgetpu opens the device when the delegate is made and a second delegate on the same
    device fails, so delegates are kept for the life of the process and shared.
    """
    key = device or ""
    if device is not None and (not device or not DEVICE_PATTERN.match(device)):
        raise WorkbenchError(f"bad device {device!r}: use usb, usb:N, pci, pci:N or :N")
    if key not in _delegates:
        where = f" device {device!r}" if device else ""
        try:
            # Load the library ourselves first: the runtime's Delegate object, when its own
            # load fails, prints an "Exception ignored" traceback from its finalizer.
            ctypes.CDLL(EDGETPU_LIBRARY)
        except OSError as e:
            raise WorkbenchError(
                f"cannot open the Edge TPU{where}: {EDGETPU_LIBRARY} not found ({e}); "
                f"{INSTALL_HINT}"
            ) from None
        options = {"device": device} if device else {}
        try:
            _delegates[key] = load_delegate(EDGETPU_LIBRARY, options)
        except (ValueError, OSError, RuntimeError) as e:
            raise WorkbenchError(
                f"cannot open the Edge TPU{where}: {_explain(str(e)) or 'no device found'}; "
                f"{INSTALL_HINT}"
            ) from None
    return _delegates[key]


class _EdgeTpuDevice(ctypes.Structure):
    """`struct edgetpu_device` of libedgetpu's C API (edgetpu_c.h)."""

    _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]


DEVICE_TYPES = {0: "pci", 1: "usb"}  # enum edgetpu_device_type


@dataclass(frozen=True)
class EdgeTpuRuntime:
    """What `workbench devices` reports: the runtime library, its version, the devices."""

    library: str | None  # None: no Edge TPU runtime installed
    version: str | None
    devices: list[dict[str, str]]
    error: str | None = None


def list_edge_tpus() -> EdgeTpuRuntime:
    """Enumerate Edge TPUs through libedgetpu's C API (`edgetpu_list_devices`)."""
    try:
        lib = ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as e:
        return EdgeTpuRuntime(None, None, [], str(e))
    version = None
    if hasattr(lib, "edgetpu_version"):
        lib.edgetpu_version.restype = ctypes.c_char_p
        raw = lib.edgetpu_version()
        version = raw.decode(errors="replace") if raw else None
    lib.edgetpu_list_devices.restype = ctypes.POINTER(_EdgeTpuDevice)
    lib.edgetpu_list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
    count = ctypes.c_size_t(0)
    found = lib.edgetpu_list_devices(ctypes.byref(count))
    devices = []
    per_type: dict[str, int] = {}
    for i in range(count.value if found else 0):
        entry = found[i]
        kind = DEVICE_TYPES.get(entry.type, str(entry.type))
        devices.append(
            {
                "type": kind,
                "path": entry.path.decode(errors="replace") if entry.path else "",
                "device": f"{kind}:{per_type.get(kind, 0)}",  # what --device takes
                "any": f":{i}",
            }
        )
        per_type[kind] = per_type.get(kind, 0) + 1
    if found:
        lib.edgetpu_free_devices.argtypes = [ctypes.POINTER(_EdgeTpuDevice)]
        lib.edgetpu_free_devices(found)
    return EdgeTpuRuntime(EDGETPU_LIBRARY, version, devices)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a loaded model: where it is and how it is quantized."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.dtype(np.uint8), np.dtype(np.int8)) and self.scale > 0

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Real values as float32 (a float tensor passes through)."""
        if not self.quantized:
            return np.asarray(values, dtype=np.float32)
        return (values.astype(np.float32) - self.zero_point) * np.float32(self.scale)

    @classmethod
    def from_details(cls, details: dict) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            name=str(details["name"]),
            index=int(details["index"]),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


class LoadedModel:
    """An interpreter ready to run a single-input, single-output model."""

    def __init__(self, path: Path, interpreter: Any, edgetpu: bool, device: str | None) -> None:
        self.path = path
        self.interpreter = interpreter
        self.edgetpu = edgetpu
        self.device = device
        self.sha256 = ""  # of the model's bytes: the output cache's key
        self.content = b""  # the model's bytes, for replicas
        self._replicas: list[LoadedModel] = []
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise WorkbenchError(
                f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "workbench needs a model with exactly one input and one output"
            )
        self.input = TensorSpec.from_details(inputs[0])
        self.output = TensorSpec.from_details(outputs[0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Invoke on one input (already of the input's shape and dtype); the raw output."""
        self.interpreter.set_tensor(self.input.index, batch)
        try:
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as e:
            raise WorkbenchError(f"{self.path} failed to run: {_explain(str(e))}") from None
        return self.interpreter.get_tensor(self.output.index)

    def timed_run(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        out = self.run(batch)
        return out, time.perf_counter() - start

    def replicas(self, count: int) -> list[LoadedModel]:
        """`count` single-threaded copies of a CPU model, made once and kept.

        On a few cores, one interpreter per core working on different images keeps every
        core busy (decoding included) better than one multi-threaded interpreter, whose
        threads wait for each other at every layer.
        """
        if self.edgetpu or self.device:
            raise WorkbenchError("an Edge TPU model cannot be replicated: one per device")
        while len(self._replicas) < count:
            self._replicas.append(load_model(self.path, num_threads=1, content=self.content))
        return self._replicas[:count]

    def release_replicas(self) -> None:
        """Drop the copies (their tensor arenas) once a long extraction is over."""
        self._replicas.clear()


def load_model(
    path: str | Path,
    device: str | None = None,
    num_threads: int | None = None,
    content: bytes | None = None,
) -> LoadedModel:
    """Load a `.tflite` for inference, on the Edge TPU when it was compiled for one.

    `num_threads` defaults to the cores this process may use; 0 leaves it to the runtime.
    With `content` the model comes from memory (a model built on the fly, such as the
    extractor part of an imprinting model, or a loaded model's own bytes) and `path` only
    names it in messages; such bytes are trusted to be well-formed.
    Raises WorkbenchError for a missing, damaged or unsupported file, and for an Edge TPU
    model when no Edge TPU runtime can be loaded (naming the CPU build as the way out).
    """
    path = Path(path)
    if content is None:
        data = read_model_bytes(path)
        # A file from disk is unpacked once in full: a damaged one gets a clear error here
        # rather than whatever the runtime's loader makes of it. Bytes passed in were built
        # by workbench or come from a model already loaded.
        unpack_model(data, str(path))
    else:
        data = content
    edgetpu = EDGETPU_CUSTOM_CODE in custom_codes(data)
    delegates = []
    if edgetpu or device:
        try:
            delegates.append(edgetpu_delegate(device))
        except WorkbenchError as e:
            if edgetpu:
                raise WorkbenchError(
                    f"{path.name} is compiled for the Edge TPU, which is not available here "
                    f"({e}); use the CPU build of the extractor instead (the same model "
                    "without the _edgetpu suffix)"
                ) from None
            raise
    failure: str | None
    with native_stderr() as native:
        try:
            interpreter = Interpreter(
                model_content=data,
                experimental_delegates=delegates or None,
                # 0: leave the choice to the runtime, as pycoral's make_interpreter does.
                num_threads=(cpu_threads() if num_threads is None else num_threads) or None,
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            failure = str(e)
        else:
            failure = None
    if failure is not None:
        detail = " ".join([*native.errors(), failure])
        raise WorkbenchError(f"cannot load model {path}: {_explain(detail)}")
    loaded = LoadedModel(path, interpreter, edgetpu, device)
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    loaded.content = data
    return loaded
