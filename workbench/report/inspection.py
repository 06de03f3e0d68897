"""Will a model run on the Edge TPU, and where will it split? Answered from the flatbuffer alone.

`edgetpu_compiler` maps supported ops, in graph order, into one custom op and stops at the first
op it cannot map: that op and everything after it run on the CPU. This module applies the op
table of Coral's documentation (see ../shared/BACKGROUND.md) to each op, predicts the split, and
describes already-compiled models, so a user learns it before (or without) compiling on x86.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.heads.coral_format import imprinting_layout
from workbench.model.export import workbench_metadata
from workbench.tflite.graph import EDGETPU_CUSTOM_CODE, Graph
from workbench.tflite.schema import DTYPE_OF_TENSOR_TYPE, builtin_code, fb, tensor_type_name

DEFAULT_RUNTIME_VERSION = 14  # libedgetpu 16.0, the last release
ON_CHIP_BYTES = 8 * 1024 * 1024
SOFTMAX_MAX_ELEMENTS = 16000
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
# Constant operands that are not weights (shapes, axes, paddings) or are int32 biases.
CONSTANT_INDEX_TYPES = (np.dtype(np.int32), np.dtype(np.int64))

A = fb.ActivationFunctionType


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass
class OpReport:
    """One operator: where it will run and why."""

    index: int
    op: str
    output_shape: list[int]
    placement: str  # "edgetpu", "compiled", "cpu"
    reasons: list[str] = field(default_factory=list)  # why it does not map (own problems)
    notes: list[str] = field(default_factory=list)  # soft warnings ("may not map")
    macs: int = 0
    conversion: bool = False  # a float I/O Quantize/Dequantize the compiler leaves on the CPU

    @property
    def maps(self) -> bool:
        return not self.reasons

    def verdict(self) -> str:
        if self.placement == "compiled":
            return "compiled (runs on the Edge TPU)"
        if self.placement == "edgetpu":
            return "maps"
        if self.reasons:
            return "CPU: " + "; ".join(self.reasons)
        return "CPU: " + (self.notes[0] if self.notes else "after the split")


@dataclass
class Inspection:
    """What `workbench inspect` reports about a model."""

    path: str
    runtime_version: int
    status: str  # maps | split | cannot_run | compiled | compiled_with_cpu
    summary: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[OpReport]
    warnings: list[str]
    split_index: int | None
    cpu_ops: int
    cpu_mac_share: float | None
    parameter_bytes: int
    parameters_stream: bool
    workbench: dict[str, Any] | None
    coral_imprinting_format: bool

    @property
    def exit_code(self) -> int:
        """0: all of it runs on the Edge TPU (compiled or would map); 1: otherwise."""
        return 0 if self.status in ("maps", "compiled") else 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for op, report in zip(data["ops"], self.ops, strict=True):
            op["verdict"] = report.verdict()
        data["exit_code"] = self.exit_code
        return data


# --- reading the graph ---------------------------------------------------------------------------


def _dtype(graph: Graph, tensor: int) -> np.dtype | None:
    return DTYPE_OF_TENSOR_TYPE.get(graph.tensors[tensor].type)


def _type_name(graph: Graph, tensor: int) -> str:
    dtype = _dtype(graph, tensor)
    return str(dtype) if dtype is not None else tensor_type_name(graph.tensors[tensor].type).lower()


def _is_constant(graph: Graph, tensor: int) -> bool:
    buffer = graph.model.buffers[graph.tensors[tensor].buffer]
    return buffer.data is not None and len(buffer.data) > 0


def _inputs(op: fb.OperatorT) -> list[int]:
    return [int(t) for t in (op.inputs if op.inputs is not None else []) if int(t) >= 0]


def _outputs(op: fb.OperatorT) -> list[int]:
    return [int(t) for t in (op.outputs if op.outputs is not None else [])]


def tensor_info(graph: Graph, tensor: int) -> TensorInfo:
    quant = graph.quant(tensor)
    return TensorInfo(
        name=graph.tensor_name(tensor) or f"#{tensor}",
        shape=list(graph.shape(tensor)),
        dtype=_type_name(graph, tensor),
        scale=None if quant is None else float(quant.scale[0]),
        zero_point=None if quant is None else int(quant.zero_point[0]),
    )


def _non_unit(shape: tuple[int, ...] | list[int]) -> int:
    return sum(1 for d in shape if d != 1)


def _constant_values(graph: Graph, tensor: int) -> np.ndarray | None:
    if not _is_constant(graph, tensor) or _dtype(graph, tensor) is None:
        return None
    return graph.constant(tensor)


# --- the rules -----------------------------------------------------------------------------------


def _general_problems(graph: Graph, op: fb.OperatorT) -> list[str]:
    """Rules for every op: 8-bit tensors, static shapes, at most 3 dims past leading 1s."""
    problems: list[str] = []
    for t in _inputs(op) + _outputs(op):
        dtype = _dtype(graph, t)
        constant = _is_constant(graph, t)
        name = graph.tensor_name(t) or f"#{t}"
        if constant:
            if dtype not in EIGHT_BIT and dtype not in CONSTANT_INDEX_TYPES:
                problems.append(f"not quantized: constant {name} is {_type_name(graph, t)}")
            continue
        if dtype not in EIGHT_BIT:
            problems.append(f"not quantized: {name} is {_type_name(graph, t)}")
        signature = graph.tensors[t].shapeSignature
        if signature is not None and any(int(d) < 0 for d in signature):
            problems.append(f"dynamic shape: {name} {list(map(int, signature))}")
        shape = graph.shape(t)
        if len(shape) > 3 and any(d != 1 for d in shape[:-3]):
            problems.append(f"more than 3 non-unit dims: {name} {list(shape)}")
    return list(dict.fromkeys(problems))


def _fused(options: Any) -> list[str]:
    activation = getattr(options, "fusedActivationFunction", A.NONE)
    return [] if activation == A.NONE else ["fused activation not supported"]


def _axis_values(graph: Graph, op: fb.OperatorT, position: int) -> list[int] | None:
    inputs = _inputs(op)
    if position >= len(inputs):
        return None
    values = _constant_values(graph, inputs[position])
    return None if values is None else [int(v) for v in np.ravel(values)]


def _not_batch(axes: list[int] | None, rank: int) -> list[str]:
    if axes is None:
        return ["axis must be constant"]
    return (
        ["not supported on the batch dimension"] if any(a % max(rank, 1) == 0 for a in axes) else []
    )


def _rank_of_input(graph: Graph, op: fb.OperatorT) -> int:
    return len(graph.shape(_inputs(op)[0]))


def _check_reduce(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    return _not_batch(_axis_values(graph, op, 1), _rank_of_input(graph, op))


def _check_pack(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    axis = int(getattr(op.builtinOptions, "axis", 0))
    rank = len(graph.shape(_outputs(op)[0]))
    return _not_batch([axis], rank)


def _check_split(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    inputs = _inputs(op)
    rank = len(graph.shape(inputs[1])) if len(inputs) > 1 else 1
    return _not_batch(_axis_values(graph, op, 0), rank)


def _check_pad(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    paddings = _axis_values(graph, op, 1)
    if paddings is None:
        return ["paddings must be constant"]
    return ["padding the batch dimension not supported"] if any(paddings[:2]) else []


def _check_conv(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    o = op.builtinOptions
    if o is not None and o.dilationHFactor != o.dilationWFactor:
        return ["dilation differs in x and y"]
    return []


def _check_depthwise(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    o = op.builtinOptions
    if o is None:
        return []
    if runtime <= 12 and (o.dilationHFactor != 1 or o.dilationWFactor != 1):
        return [f"dilation needs runtime version >= 13 (checking for {runtime})"]
    if o.dilationHFactor != o.dilationWFactor:
        return ["dilation differs in x and y"]
    return []


def _check_pool(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    return _fused(op.builtinOptions)


def _check_concat(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    problems = _fused(op.builtinOptions)
    inputs = _inputs(op)
    constants = [t for t in inputs if _is_constant(graph, t)]
    if constants:
        values = [_constant_values(graph, t) for t in constants]
        zero_valued = all(
            v is not None and not np.any(v.astype(np.int64) - _zero_point(graph, t))
            for v, t in zip(values, constants, strict=True)
        )
        if len(inputs) != 2 or not zero_valued:
            problems.append("a constant input must be all zeros and the only other input")
    return problems


def _zero_point(graph: Graph, tensor: int) -> int:
    quant = graph.quant(tensor)
    return 0 if quant is None else int(quant.zero_point[0])


def _check_fully_connected(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    problems = []
    o = op.builtinOptions
    if o is not None and o.weightsFormat != fb.FullyConnectedOptionsWeightsFormat.DEFAULT:
        problems.append("only the default weight format")
    if _non_unit(graph.shape(_outputs(op)[0])) > 1:
        problems.append("output must be 1-D")
    return problems


def _check_softmax(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    shape = graph.shape(_inputs(op)[0])
    problems = []
    if _non_unit(shape) > 1:
        problems.append(f"input must be 1-D, is {list(shape)}")
    if int(np.prod(shape)) > SOFTMAX_MAX_ELEMENTS:
        problems.append(f"input has more than {SOFTMAX_MAX_ELEMENTS} elements")
    return problems


def _check_strided_slice(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    problems = []
    strides = _axis_values(graph, op, 3)
    if strides is None or any(s != 1 for s in strides):
        problems.append("strides must all be 1")
    o = op.builtinOptions
    if o is not None and (o.ellipsisMask or o.newAxisMask):
        problems.append("ellipsis and new-axis masks must be 0")
    return problems


def _check_squeeze(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    if runtime >= 13:
        return []
    shape = graph.shape(_inputs(op)[0])
    stored = getattr(op.builtinOptions, "squeezeDims", None)
    dims = [] if stored is None else [int(d) for d in stored]
    squeezed = (
        sorted(d % len(shape) for d in dims) if dims else [i for i, d in enumerate(shape) if d == 1]
    )
    if squeezed != list(range(len(squeezed))):
        return [
            f"only leading 1s can be squeezed before runtime version 13 (checking for {runtime})"
        ]
    return []


def _check_prelu(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    inputs = _inputs(op)
    if len(inputs) > 1 and _non_unit(graph.shape(inputs[1])) > 1:
        return ["alpha must be 1-D"]
    return []


def _check_resize(graph: Graph, op: fb.OperatorT, runtime: int) -> list[str]:
    for t in (_inputs(op)[0], _outputs(op)[0]):
        shape = graph.shape(t)
        if len(shape) == 4 and shape[0] != 1:
            return ["input and output must be 3-D (batch 1)"]
    return []


Check = Callable[[Graph, fb.OperatorT, int], list[str]]


@dataclass(frozen=True)
class Rule:
    min_runtime: int = 10
    check: Check | None = None
    may_not_map: str | None = None


SUPPORTED: dict[str, Rule] = {
    "ADD": Rule(),
    "AVERAGE_POOL_2D": Rule(check=_check_pool),
    "CONCATENATION": Rule(check=_check_concat),
    "CONV_2D": Rule(check=_check_conv),
    "DEPTHWISE_CONV_2D": Rule(check=_check_depthwise),
    "EXPAND_DIMS": Rule(13),
    "FULLY_CONNECTED": Rule(check=_check_fully_connected),
    "L2_NORMALIZATION": Rule(),
    "LOGISTIC": Rule(),
    "LSTM": Rule(14),  # unidirectional; the bidirectional op is not in the table
    "UNIDIRECTIONAL_SEQUENCE_LSTM": Rule(14),
    "MAXIMUM": Rule(),
    "MAX_POOL_2D": Rule(check=_check_pool),
    "MEAN": Rule(13, _check_reduce),
    "MINIMUM": Rule(),
    "MUL": Rule(),
    "PACK": Rule(13, _check_pack),
    "PAD": Rule(13, _check_pad),
    "PRELU": Rule(13, _check_prelu),
    "QUANTIZE": Rule(13),
    "REDUCE_MAX": Rule(14, _check_reduce),
    "REDUCE_MIN": Rule(14, _check_reduce),
    "RELU": Rule(),
    "RELU6": Rule(),
    "RELU_N1_TO_1": Rule(),
    "RESHAPE": Rule(may_not_map="large tensors may not map"),
    "RESIZE_BILINEAR": Rule(check=_check_resize, may_not_map="may not map (compiler decides)"),
    "RESIZE_NEAREST_NEIGHBOR": Rule(
        check=_check_resize, may_not_map="may not map (compiler decides)"
    ),
    "RSQRT": Rule(14),
    "SLICE": Rule(),
    "SOFTMAX": Rule(check=_check_softmax),
    "SPACE_TO_DEPTH": Rule(),
    "SPLIT": Rule(check=_check_split),
    "SQUEEZE": Rule(check=_check_squeeze),
    "STRIDED_SLICE": Rule(check=_check_strided_slice),
    "SUB": Rule(),
    "SUM": Rule(13, _check_reduce),
    "SQUARED_DIFFERENCE": Rule(14),
    "TANH": Rule(),
    "TRANSPOSE": Rule(14),
    "TRANSPOSE_CONV": Rule(13),
}
# Reshape outputs past this many elements get the "may not map" note.
LARGE_RESHAPE_ELEMENTS = 1 << 20


def op_problems(graph: Graph, op: fb.OperatorT, runtime: int) -> tuple[list[str], list[str]]:
    """(reasons the op will not map, soft notes) under the given runtime version."""
    name = graph.op_name(op)
    rule = SUPPORTED.get(name)
    if rule is None:
        custom = (
            builtin_code(graph.model.operatorCodes[op.opcodeIndex]) == fb.BuiltinOperator.CUSTOM
        )
        return [f"unsupported {'custom op' if custom else 'op'} {name}"], []
    problems = _general_problems(graph, op)
    if runtime < rule.min_runtime:
        problems.append(f"needs runtime version >= {rule.min_runtime} (checking for {runtime})")
    if rule.check is not None:
        try:
            problems += rule.check(graph, op, runtime)
        except (IndexError, ValueError, TypeError, AttributeError):
            problems.append("malformed operands: its limits could not be checked")
    notes = []
    if rule.may_not_map and (
        name != "RESHAPE" or int(np.prod(graph.shape(_outputs(op)[0]))) > LARGE_RESHAPE_ELEMENTS
    ):
        notes.append(rule.may_not_map)
    return problems, notes


# --- cost estimates ------------------------------------------------------------------------------


def estimate_macs(graph: Graph, op: fb.OperatorT) -> int:
    """Multiply-accumulates from shapes: convolutions and FC exactly, other ops per element."""
    name = graph.op_name(op)
    inputs, outputs = _inputs(op), _outputs(op)
    out_elements = int(np.prod(graph.shape(outputs[0]))) if outputs else 0
    if name == "CONV_2D" and len(inputs) > 1:
        _, kh, kw, cin = graph.shape(inputs[1])
        return out_elements * kh * kw * cin
    if name == "DEPTHWISE_CONV_2D" and len(inputs) > 1:
        _, kh, kw, _ = graph.shape(inputs[1])
        return out_elements * kh * kw
    if name == "FULLY_CONNECTED" and len(inputs) > 1:
        return out_elements * graph.shape(inputs[1])[-1]
    if name == "TRANSPOSE_CONV" and len(inputs) > 2:
        cout, kh, kw, _ = graph.shape(inputs[1])
        return int(np.prod(graph.shape(inputs[2]))) * kh * kw * cout
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D") and op.builtinOptions is not None:
        return out_elements * op.builtinOptions.filterHeight * op.builtinOptions.filterWidth
    return out_elements


def _parameter_bytes(graph: Graph, ops: list[int]) -> int:
    buffers = set()
    for i in ops:
        for t in _inputs(graph.operators[i]):
            if _is_constant(graph, t):
                buffers.add(graph.tensors[t].buffer)
    return sum(len(graph.model.buffers[b].data) for b in buffers)


# --- the whole model -----------------------------------------------------------------------------


def _custom_options_bytes(op: fb.OperatorT) -> int:
    options = op.customOptions
    return 0 if options is None else len(options)


def _is_input_conversion(graph: Graph, op: fb.OperatorT) -> bool:
    inputs = _inputs(op)
    return (
        graph.op_name(op) == "QUANTIZE"
        and bool(inputs)
        and inputs[0] in graph.inputs
        and _dtype(graph, inputs[0]) == np.dtype(np.float32)
    )


def _is_output_conversion(graph: Graph, op: fb.OperatorT) -> bool:
    return graph.op_name(op) == "DEQUANTIZE" and any(t in graph.outputs for t in _outputs(op))


def inspect_model(path: str | Path, runtime_version: int = DEFAULT_RUNTIME_VERSION) -> Inspection:
    """Predict, op by op, what runs on the Edge TPU; raises WorkbenchError on bad input."""
    graph = Graph.load(path)
    warnings: list[str] = []
    if len(graph.model.subgraphs) > 1:
        warnings.append(f"{len(graph.model.subgraphs)} subgraphs; only the main one is inspected")
    inputs = [tensor_info(graph, t) for t in graph.inputs]
    outputs = [tensor_info(graph, t) for t in graph.outputs]
    for kind, infos in (("input", inputs), ("output", outputs)):
        for info in infos:
            if info.dtype == "float32":
                conversion = "Quantize" if kind == "input" else "Dequantize"
                warnings.append(
                    f"float {kind} {info.name}: a {conversion} stays on the CPU; "
                    f"uint8/int8 {kind}s are faster"
                )

    reports: list[OpReport] = []
    for index, op in enumerate(graph.operators):
        outs = _outputs(op)
        report = OpReport(
            index=index,
            op=graph.op_name(op),
            output_shape=list(graph.shape(outs[0])) if outs else [],
            placement="cpu",
            macs=estimate_macs(graph, op) if graph.op_name(op) != EDGETPU_CUSTOM_CODE else 0,
        )
        if report.op == EDGETPU_CUSTOM_CODE:
            report.placement = "compiled"
        elif _is_input_conversion(graph, op):
            report.conversion = True
            report.notes.append("input conversion (float to 8-bit) stays on the CPU")
        elif _is_output_conversion(graph, op):
            report.conversion = True
            report.notes.append("output conversion (8-bit to float) stays on the CPU")
        else:
            report.reasons, report.notes = op_problems(graph, op, runtime_version)
        reports.append(report)

    conversions = [r for r in reports if r.conversion]
    compiled = [r for r in reports if r.placement == "compiled"]
    split_index: int | None = None
    if compiled:
        status, summary, cpu_reports = _describe_compiled(graph, reports, compiled, conversions)
        cpu_mac_share = None
        # The compiled executable, parameters included, sits in the custom op's options.
        parameter_bytes = sum(_custom_options_bytes(graph.operators[r.index]) for r in compiled)
    else:
        status, summary, split_index = _predict_split(reports, conversions)
        cpu_reports = [r for r in reports if r.placement == "cpu" and r not in conversions]
        total = sum(r.macs for r in reports)
        cpu_mac_share = (sum(r.macs for r in cpu_reports) / total) if total else None
        parameter_bytes = _parameter_bytes(
            graph, [r.index for r in reports if r.placement == "edgetpu"]
        )
    streams = parameter_bytes > ON_CHIP_BYTES
    if streams:
        warnings.append(
            f"parameters ({parameter_bytes / 2**20:.1f} MiB) exceed the Edge TPU's ~8 MiB "
            "on-chip memory: the rest streams from the host on every inference"
        )
    for r in reports:
        if r.placement == "edgetpu" and r.notes:
            warnings.append(f"op {r.index} {r.op}: {r.notes[0]}")
    metadata = workbench_metadata(graph)
    return Inspection(
        path=str(path),
        runtime_version=runtime_version,
        status=status,
        summary=summary,
        inputs=inputs,
        outputs=outputs,
        ops=reports,
        warnings=warnings,
        split_index=split_index,
        cpu_ops=len(cpu_reports),
        cpu_mac_share=cpu_mac_share,
        parameter_bytes=parameter_bytes,
        parameters_stream=streams,
        workbench=(
            {"trainer": metadata.get("trainer"), "classes": metadata.get("classes")}
            if metadata
            else None
        ),
        coral_imprinting_format=imprinting_layout(graph) is not None,
    )


def _predict_split(
    reports: list[OpReport], conversions: list[OpReport]
) -> tuple[str, str, int | None]:
    core = [r for r in reports if r not in conversions]
    first_bad = next((r for r in core if not r.maps), None)
    for r in core:
        after = first_bad is not None and r.index >= first_bad.index
        r.placement = "cpu" if after else "edgetpu"
    if first_bad is None:
        return "maps", f"all {len(core)} ops map to the Edge TPU", None
    if first_bad is core[0]:
        return (
            "cannot_run",
            f"nothing maps: the first op ({first_bad.op}) does not "
            f"({'; '.join(first_bad.reasons)})",
            first_bad.index,
        )
    cpu = sum(1 for r in core if r.placement == "cpu")
    return (
        "split",
        f"splits at op {first_bad.index} ({first_bad.op}: {'; '.join(first_bad.reasons)}); "
        f"{cpu} of {len(core)} ops run on the CPU from there",
        first_bad.index,
    )


def _describe_compiled(
    graph: Graph,
    reports: list[OpReport],
    compiled: list[OpReport],
    conversions: list[OpReport],
) -> tuple[str, str, list[OpReport]]:
    first, last = compiled[0].index, compiled[-1].index
    cpu = [r for r in reports if r.placement == "cpu" and r not in conversions]
    before = [r for r in cpu if r.index < first]
    after = [r for r in cpu if r.index > last]
    for r in cpu:
        if not r.notes:
            r.notes.append(
                "before the compiled part" if r.index < first else "after the compiled part"
            )
    if not cpu:
        return "compiled", "compiled: the whole model runs on the Edge TPU", []
    parts = []
    if before:
        parts.append(f"{len(before)} ops before it ({', '.join(r.op for r in before)})")
    if after:
        parts.append(f"{len(after)} ops after it ({', '.join(r.op for r in after)})")
    metadata = workbench_metadata(graph)
    if metadata and not before:
        summary = (
            f"compiled extractor + CPU head ({metadata.get('trainer')}): "
            f"{', '.join(r.op for r in after)} run on the CPU"
        )
    else:
        summary = "compiled part on the Edge TPU; on the CPU: " + "; ".join(parts)
    return "compiled_with_cpu", summary, cpu
