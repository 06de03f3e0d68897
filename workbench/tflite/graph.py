"""Read, edit and write a TFLite model's main graph through the schema's object API.

Retraining never recompiles the extractor: it appends operators, tensors and buffers behind the
extractor's output and moves the graph output. Everything already in the file, an Edge TPU
custom op and its compiled blob included, is carried over untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.tflite.schema import (
    DTYPE_OF_TENSOR_TYPE,
    TENSOR_TYPE_OF_DTYPE,
    builtin_code,
    builtin_name,
    fb,
)

TFLITE_FILE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_CODE = "edgetpu-custom-op"
# Converters align constant buffers to 16 bytes so kernels may read them in place with SIMD
# loads; flatbuffers' own numpy vectors are only aligned to their element size.
BUFFER_ALIGNMENT = 16


@dataclass(frozen=True)
class Quant:
    """Affine quantization of a tensor: real = scale * (q - zero_point), per tensor or axis."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> Quant:
        return cls((float(scale),), (int(zero_point),))

    @classmethod
    def of(cls, tensor: fb.TensorT) -> Quant | None:
        """The tensor's quantization, or None for a float (unquantized) tensor."""
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        zero_points = q.zeroPoint if q.zeroPoint is not None else [0] * len(q.scale)
        return cls(
            tuple(float(s) for s in q.scale),
            tuple(int(z) for z in zero_points),
            int(q.quantizedDimension),
        )

    def to_schema(self) -> fb.QuantizationParametersT:
        q = fb.QuantizationParametersT()
        q.scale = np.asarray(self.scale, dtype=np.float32)
        q.zeroPoint = np.asarray(self.zero_point, dtype=np.int64)
        q.quantizedDimension = self.axis
        return q


def is_tflite(data: bytes) -> bool:
    """True when `data` starts like a TFLite flatbuffer (root offset, then the identifier)."""
    return len(data) >= 8 and data[4:8] == TFLITE_FILE_IDENTIFIER


def read_model_bytes(path: str | Path) -> bytes:
    """The bytes of a model file, or a WorkbenchError saying why they are not a TFLite model."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkbenchError(f"model not found: {path}") from None
    except IsADirectoryError:
        raise WorkbenchError(f"model path is a directory, not a .tflite file: {path}") from None
    except OSError as e:
        raise WorkbenchError(f"cannot read model {path}: {e.strerror or e}") from None
    if not is_tflite(data):
        raise WorkbenchError(f"not a TFLite model (no TFL3 identifier): {path}")
    return data


def unpack_model(data: bytes, origin: str = "model") -> fb.ModelT:
    """Unpack a flatbuffer into the object API, turning a truncated file into a clear error."""
    if not is_tflite(data):
        raise WorkbenchError(f"not a TFLite model (no TFL3 identifier): {origin}")
    try:
        model = fb.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:  # flatbuffers raises struct.error, IndexError, ... on damaged input
        raise WorkbenchError(f"damaged or truncated TFLite model: {origin} ({e})") from None
    if not model.subgraphs:
        raise WorkbenchError(f"TFLite model has no graph: {origin}")
    problem = index_problem(model)
    if problem:
        raise WorkbenchError(f"damaged or crafted TFLite model: {origin} ({problem})")
    return model


def index_problem(model: fb.ModelT) -> str | None:
    """The first reference in the model that points outside what the file holds, if any.

    A flatbuffer parses however its indices are set: a tensor's buffer, an operator's
    opcode or tensors, a graph's inputs and outputs, a metadata entry's buffer are plain
    numbers. The TFLite interpreter refuses a model whose numbers point past the end of their
    lists (or whose quantization or constant data do not fit the tensor); workbench checks
    the same when it opens a model, so that reading one (`inspect`) never indexes past a list
    or, with a negative number, silently takes an element from the end.
    """
    buffers = max(len(model.buffers or []), 1)  # buffer 0, the empty one, is implied
    codes = len(model.operatorCodes or [])
    for s, subgraph in enumerate(model.subgraphs):
        tensors = subgraph.tensors or []
        count = len(tensors)
        where = f" of subgraph {s}" if len(model.subgraphs) > 1 else ""

        for name, values in (("inputs", subgraph.inputs), ("outputs", subgraph.outputs)):
            bad = _outside(values, count)
            if bad is not None:
                return f"graph {name}{where} name tensor {bad}, but it has {count} tensors"
        for t, tensor in enumerate(tensors):
            problem = _tensor_problem(tensor, buffers, model.buffers or [])
            if problem:
                return f"tensor {t}{where} {problem}"
        for o, op in enumerate(subgraph.operators or []):
            if not 0 <= int(op.opcodeIndex) < codes:
                return f"operator {o}{where} has opcode {op.opcodeIndex}, but there are {codes}"
            for name, values, optional in (
                ("input", op.inputs, True),
                ("output", op.outputs, False),
                ("intermediate", getattr(op, "intermediates", None), False),
            ):
                bad = _outside(values, count, allow_none=optional)
                if bad is not None:
                    return f"operator {o}{where} has {name} tensor {bad}, but there are {count}"
    for entry in model.metadata or []:
        if not 0 <= int(entry.buffer) < buffers:
            return f"metadata {_entry_name(entry)!r} is in buffer {entry.buffer} of {buffers}"
    if any(not 0 <= b < buffers for b in _indices(model.metadataBuffer)):
        return f"a metadata buffer index is outside the {buffers} buffers"
    for signature in model.signatureDefs or []:
        index = int(signature.subgraphIndex or 0)
        if not 0 <= index < len(model.subgraphs):
            return f"a signature names subgraph {index} of {len(model.subgraphs)}"
        count = len(model.subgraphs[index].tensors or [])
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            if not 0 <= int(entry.tensorIndex) < count:
                return f"a signature names tensor {entry.tensorIndex} of {count}"
    return None


def _outside(values: Iterable[int] | None, count: int, allow_none: bool = False) -> int | None:
    """The first of `values` that is no index into `count` tensors (-1, "no tensor", is one
    where `allow_none`: an operator's optional input)."""
    for value in _indices(values):
        if not (0 <= value < count or (allow_none and value == -1)):
            return value
    return None


def _tensor_problem(tensor: fb.TensorT, buffers: int, data: list[fb.BufferT]) -> str | None:
    """What is wrong with one tensor's buffer, shape, quantization or constant data."""
    if not 0 <= int(tensor.buffer) < buffers:
        return f"points to buffer {tensor.buffer}, but the model has {buffers}"
    shape = _indices(tensor.shape)
    if any(d < 0 for d in shape):
        return f"has a negative dimension in its shape {shape}"
    q = tensor.quantization
    scales = 0 if q is None or q.scale is None else len(q.scale)
    zero_points = scales if q is None or q.zeroPoint is None else len(q.zeroPoint)
    if scales and scales != zero_points:
        return f"has {scales} quantization scales but {zero_points} zero points"
    if q is not None and scales > 1:
        axis = int(q.quantizedDimension)
        if not 0 <= axis < len(shape) or shape[axis] != scales:
            return f"has {scales} scales along axis {axis} of its shape {shape}"
    dtype = DTYPE_OF_TENSOR_TYPE.get(tensor.type)
    buffer = data[tensor.buffer] if int(tensor.buffer) < len(data) else None
    stored = 0 if buffer is None or buffer.data is None else len(buffer.data)
    if stored and dtype is not None and tensor.sparsity is None:
        needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if stored < needed:
            return f"holds {stored} bytes of constant data, but its shape {shape} needs {needed}"
    return None


def custom_codes(data: bytes) -> set[str]:
    """The custom op codes a model uses, read straight from the flatbuffer (no unpacking).

    For models workbench built itself or already checked with `unpack_model`: reading a few
    fields lazily costs microseconds where unpacking a whole extractor costs tens of ms.
    """
    model = fb.Model.GetRootAs(data, 0)
    codes = set()
    for i in range(model.OperatorCodesLength()):
        custom = model.OperatorCodes(i).CustomCode()
        if custom:
            codes.add(custom.decode() if isinstance(custom, bytes) else str(custom))
    return codes


class _AlignedBuffer(fb.BufferT):
    """A buffer that packs its data at a 16-byte boundary of the file."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data_offset = None
        if self.data is not None and len(self.data) > 0:
            payload = np.ascontiguousarray(self.data, dtype=np.uint8).reshape(-1)
            # Prep pads so that the position after `len` more bytes is aligned; the vector's
            # length prefix then needs no further padding, so the data starts aligned.
            builder.Prep(BUFFER_ALIGNMENT, payload.size)
            data_offset = builder.CreateNumpyVector(payload)
        fb.BufferStart(builder)
        if data_offset is not None:
            fb.BufferAddData(builder, data_offset)
        fb.BufferAddOffset(builder, self.offset)
        fb.BufferAddSize(builder, self.size)
        return fb.BufferEnd(builder)


def pack_model(model: fb.ModelT) -> bytes:
    """Serialize a ModelT to TFLite bytes with 16-byte aligned constant buffers."""
    original = model.buffers
    aligned = []
    for buffer in original or []:
        copy = _AlignedBuffer()
        copy.__dict__.update(buffer.__dict__)
        aligned.append(copy)
    model.buffers = aligned
    try:
        size_hint = sum(len(b.data) for b in aligned if b.data is not None) + (1 << 16)
        builder = flatbuffers.Builder(size_hint)
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
        return bytes(builder.Output())
    finally:
        model.buffers = original


def _options_type(options: object) -> int:
    """The BuiltinOptions union tag for an options object such as `Conv2DOptionsT()`."""
    name = type(options).__name__.removesuffix("T")
    return int(getattr(fb.BuiltinOptions, name))


class Graph:
    """A TFLite model opened for editing; the methods act on its main (first) subgraph."""

    def __init__(self, model: fb.ModelT) -> None:
        self.model = model
        if not model.buffers:
            # Buffer 0 is by convention the empty buffer that non-constant tensors point to.
            model.buffers = [fb.BufferT()]
        self.subgraph: fb.SubGraphT = model.subgraphs[0]
        for attr in ("tensors", "operators", "inputs", "outputs"):
            value = getattr(self.subgraph, attr)
            setattr(self.subgraph, attr, [] if value is None else list(value))
        if model.operatorCodes is None:
            model.operatorCodes = []

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "model") -> Graph:
        return cls(unpack_model(data, origin))

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        return cls.from_bytes(read_model_bytes(path), str(path))

    @classmethod
    def empty(cls, description: str = "workbench") -> Graph:
        """A model with one empty subgraph, for building small models from scratch."""
        model = fb.ModelT()
        model.version = 3
        model.description = description
        model.subgraphs = [fb.SubGraphT()]
        model.subgraphs[0].name = "main"
        return cls(model)

    def to_bytes(self) -> bytes:
        return pack_model(self.model)

    # --- reading --------------------------------------------------------------------------------

    @property
    def tensors(self) -> list[fb.TensorT]:
        return self.subgraph.tensors

    @property
    def operators(self) -> list[fb.OperatorT]:
        return self.subgraph.operators

    @property
    def inputs(self) -> list[int]:
        return [int(i) for i in self.subgraph.inputs]

    @property
    def outputs(self) -> list[int]:
        return [int(i) for i in self.subgraph.outputs]

    def op_name(self, op: fb.OperatorT) -> str:
        """`CONV_2D`, or the custom code (`edgetpu-custom-op`) for a custom operator."""
        opcode = self.model.operatorCodes[op.opcodeIndex]
        code = builtin_code(opcode)
        if code == fb.BuiltinOperator.CUSTOM:
            custom = opcode.customCode
            return custom.decode() if isinstance(custom, bytes) else str(custom)
        return builtin_name(code)

    def op_names(self) -> list[str]:
        return [self.op_name(op) for op in self.operators]

    def has_edgetpu_op(self) -> bool:
        return EDGETPU_CUSTOM_CODE in self.op_names()

    def tensor_name(self, index: int) -> str:
        name = self.tensors[index].name
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name or "")

    def dtype(self, index: int) -> np.dtype:
        tensor_type = self.tensors[index].type
        if tensor_type not in DTYPE_OF_TENSOR_TYPE:
            raise WorkbenchError(f"unsupported tensor type {tensor_type} for tensor {index}")
        return DTYPE_OF_TENSOR_TYPE[tensor_type]

    def shape(self, index: int) -> tuple[int, ...]:
        shape = self.tensors[index].shape
        return () if shape is None else tuple(int(d) for d in shape)

    def quant(self, index: int) -> Quant | None:
        return Quant.of(self.tensors[index])

    def constant(self, index: int) -> np.ndarray | None:
        """The tensor's constant data, shaped and typed, or None for an activation tensor."""
        buffer = self.model.buffers[self.tensors[index].buffer]
        if buffer.data is None or len(buffer.data) == 0:
            return None
        dtype, shape = self.dtype(index), self.shape(index)
        size = int(np.prod(shape)) * dtype.itemsize  # a buffer may be longer (TFLite allows it)
        raw = np.asarray(buffer.data, dtype=np.uint8)[:size].tobytes()
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def producer(self, tensor_index: int) -> int | None:
        """Index of the operator that writes the tensor, None for inputs and constants."""
        for i, op in enumerate(self.operators):
            if tensor_index in [int(t) for t in op.outputs]:
                return i
        return None

    def consumers(self, tensor_index: int) -> list[int]:
        return [
            i
            for i, op in enumerate(self.operators)
            if tensor_index in [int(t) for t in (op.inputs if op.inputs is not None else [])]
        ]

    def metadata(self, name: str) -> bytes | None:
        for entry in self.model.metadata or []:
            if _entry_name(entry) == name:
                data = self.model.buffers[entry.buffer].data
                return b"" if data is None else np.asarray(data, dtype=np.uint8).tobytes()
        return None

    # --- editing ------------------------------------------------------------------------------

    def add_buffer(self, data: np.ndarray | bytes | None = None) -> int:
        buffer = fb.BufferT()
        if data is not None:
            raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
            buffer.data = np.frombuffer(raw, dtype=np.uint8).copy()
        self.model.buffers.append(buffer)
        return len(self.model.buffers) - 1

    def add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: type | np.dtype,
        quant: Quant | None = None,
        data: np.ndarray | None = None,
    ) -> int:
        """Append a tensor; with `data` it is a constant, otherwise an activation."""
        dtype = np.dtype(dtype)
        tensor = fb.TensorT()
        tensor.name = name
        tensor.shape = np.asarray(shape, dtype=np.int32)
        tensor.type = TENSOR_TYPE_OF_DTYPE[dtype]
        if quant is not None:
            tensor.quantization = quant.to_schema()
        if data is None:
            tensor.buffer = 0
        else:
            array = np.asarray(data, dtype=dtype)
            if array.size != int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"tensor {name}: {array.size} values for shape {list(shape)}")
            tensor.buffer = self.add_buffer(np.ascontiguousarray(array))
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def opcode_index(self, op: int | str, version: int = 1) -> int:
        """Index of the operator code for a builtin code or a custom code, added if missing."""
        custom = op if isinstance(op, str) else None
        code = fb.BuiltinOperator.CUSTOM if custom is not None else int(op)
        for i, opcode in enumerate(self.model.operatorCodes):
            if builtin_code(opcode) != code:
                continue
            existing = opcode.customCode
            if isinstance(existing, bytes):
                existing = existing.decode()
            if custom is None or existing == custom:
                opcode.version = max(int(opcode.version), version)
                return i
        opcode = fb.OperatorCodeT()
        opcode.builtinCode = code
        # Codes above 127 live only in builtinCode; the deprecated byte holds the placeholder.
        opcode.deprecatedBuiltinCode = min(
            code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
        )
        opcode.version = version
        if custom is not None:
            opcode.customCode = custom
        self.model.operatorCodes.append(opcode)
        return len(self.model.operatorCodes) - 1

    def add_operator(
        self,
        op: int | str,
        inputs: Iterable[int],
        outputs: Iterable[int],
        options: object | None = None,
        version: int = 1,
    ) -> int:
        """Append an operator (builtin code or custom code) with its builtin options object."""
        operator = fb.OperatorT()
        operator.opcodeIndex = self.opcode_index(op, version)
        operator.inputs = np.asarray(list(inputs), dtype=np.int32)
        operator.outputs = np.asarray(list(outputs), dtype=np.int32)
        if options is not None:
            operator.builtinOptionsType = _options_type(options)
            operator.builtinOptions = options
        self.operators.append(operator)
        return len(self.operators) - 1

    def set_inputs(self, tensor_indices: Iterable[int]) -> None:
        self.subgraph.inputs = [int(i) for i in tensor_indices]

    def set_outputs(self, tensor_indices: Iterable[int]) -> None:
        """Make these tensors the graph's outputs and keep signatures pointing at them."""
        self.subgraph.outputs = [int(i) for i in tensor_indices]
        for signature in self.model.signatureDefs or []:
            if signature.subgraphIndex not in (0, None):
                continue
            old = signature.outputs or []
            entries = []
            for k, tensor_index in enumerate(self.subgraph.outputs):
                entry = fb.TensorMapT()
                entry.name = old[k].name if k < len(old) else self.tensor_name(tensor_index)
                entry.tensorIndex = tensor_index
                entries.append(entry)
            signature.outputs = entries

    def set_metadata(self, name: str, data: bytes) -> None:
        """Add or replace a named metadata entry (free-form bytes in its own buffer)."""
        for entry in self.model.metadata or []:
            if _entry_name(entry) == name:
                self.model.buffers[entry.buffer] = fb.BufferT()
                self.model.buffers[entry.buffer].data = np.frombuffer(data, np.uint8).copy()
                return
        entry = fb.MetadataT()
        entry.name = name
        entry.buffer = self.add_buffer(data)
        self.model.metadata = [*(self.model.metadata or []), entry]

    def remove_metadata(self, name: str) -> None:
        """Drop a named metadata entry and, with it, its buffer."""
        kept = [m for m in self.model.metadata or [] if _entry_name(m) != name]
        self.model.metadata = kept or None
        self.prune_buffers()

    def description(self) -> str:
        value = self.model.description
        return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

    def set_description(self, text: str) -> None:
        self.model.description = text

    # --- removing ---------------------------------------------------------------------------------

    def prune(self) -> None:
        """Drop the operators the outputs do not need, then unreferenced tensors and buffers.

        Used after moving the outputs up the graph (cutting a classifier at its embedding):
        the dropped layers' weights must not stay behind in the file.
        """
        needed = set(self.outputs)
        kept_ops: list[fb.OperatorT] = []
        for op in reversed(self.operators):
            if any(int(t) in needed for t in _indices(op.outputs)):
                kept_ops.append(op)
                needed.update(t for t in _indices(op.inputs) if t >= 0)
        kept_ops.reverse()
        used = set(self.inputs) | set(self.outputs)
        for op in kept_ops:
            for field_name in ("inputs", "outputs", "intermediates"):
                used.update(t for t in _indices(getattr(op, field_name, None)) if t >= 0)
        order = sorted(used)
        remap = {old: new for new, old in enumerate(order)}

        def moved(indices: Iterable[int] | None) -> np.ndarray:
            return np.asarray(
                [remap[t] if t >= 0 else -1 for t in _indices(indices)], dtype=np.int32
            )

        for op in kept_ops:
            op.inputs = moved(op.inputs)
            op.outputs = moved(op.outputs)
            if getattr(op, "intermediates", None) is not None:
                op.intermediates = moved(op.intermediates)
        self.subgraph.tensors = [self.tensors[i] for i in order]
        self.subgraph.operators = kept_ops
        self.subgraph.inputs = [remap[t] for t in self.inputs]
        self.subgraph.outputs = [remap[t] for t in self.outputs]
        for signature in self.model.signatureDefs or []:
            if signature.subgraphIndex not in (0, None):
                continue
            signature.inputs = [e for e in signature.inputs or [] if e.tensorIndex in remap]
            for entry in signature.inputs:
                entry.tensorIndex = remap[entry.tensorIndex]
            signature.outputs = [e for e in signature.outputs or [] if e.tensorIndex in remap]
            for entry in signature.outputs:
                entry.tensorIndex = remap[entry.tensorIndex]
        self.prune_buffers()

    def prune_buffers(self) -> None:
        referenced = {0}
        for subgraph in self.model.subgraphs:
            referenced.update(int(t.buffer) for t in subgraph.tensors or [])
        referenced.update(int(m.buffer) for m in self.model.metadata or [])
        referenced.update(_indices(self.model.metadataBuffer))
        order = sorted(b for b in referenced if b < len(self.model.buffers))
        remap = {old: new for new, old in enumerate(order)}
        self.model.buffers = [self.model.buffers[b] for b in order]
        for subgraph in self.model.subgraphs:
            for tensor in subgraph.tensors or []:
                tensor.buffer = remap[int(tensor.buffer)]
        for entry in self.model.metadata or []:
            entry.buffer = remap[int(entry.buffer)]
        if self.model.metadataBuffer is not None:
            self.model.metadataBuffer = [remap[b] for b in _indices(self.model.metadataBuffer)]


def _entry_name(entry: fb.MetadataT) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _indices(values: Iterable[int] | None) -> list[int]:
    return [] if values is None else [int(v) for v in values]
