"""`workbench inspect`: each rule of the Edge TPU op table, on small models built here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import (
    CORAL,
    CORAL_EXTRACTOR,
    conv_options,
    fake_edgetpu_model,
    pool_options,
    shared_file,
    tiny_extractor,
    write_model,
)
from workbench.cli import app
from workbench.model.export import set_workbench_metadata
from workbench.report.inspection import inspect_model
from workbench.tflite.graph import Graph, Quant
from workbench.tflite.heads import append_imprinting_tail, append_softmax_regression_tail
from workbench.tflite.schema import fb

runner = CliRunner()
Q = Quant.per_tensor(0.05, 128)


class Chain:
    """A model built op by op; each op reads the previous op's output."""

    def __init__(self, shape: list[int], dtype: str = "uint8") -> None:
        self.graph = Graph.empty()
        self.dtype = np.dtype(dtype)
        self.current = self.act(shape, dtype)
        self.graph.set_inputs([self.current])

    def act(self, shape: list[int], dtype: str | None = None) -> int:
        dtype = np.dtype(dtype or self.dtype)
        quant = Q if dtype in (np.uint8, np.int8) else None
        return self.graph.add_tensor(f"t{len(self.graph.tensors)}", shape, dtype, quant)

    def const(self, values: np.ndarray, dtype: str | None = None) -> int:
        dtype = np.dtype(dtype or self.dtype)
        values = np.asarray(values)
        quant = Q if dtype in (np.uint8, np.int8) else None
        name = f"c{len(self.graph.tensors)}"
        return self.graph.add_tensor(name, list(values.shape), dtype, quant, values.astype(dtype))

    def op(
        self,
        code: int | str,
        out_shape: list[int],
        extra: tuple[int, ...] = (),
        options: object | None = None,
        out_dtype: str | None = None,
        inputs: list[int] | None = None,
    ) -> Chain:
        out = self.act(out_shape, out_dtype)
        ins = inputs if inputs is not None else [self.current, *extra]
        self.graph.add_operator(code, ins, [out], options)
        self.current = out
        return self

    def conv(self, shape: list[int], cin: int, cout: int, **kw: object) -> Chain:
        kernel = self.const(np.ones((cout, 1, 1, cin)))
        bias = self.const(np.zeros(cout), "int32")
        return self.op(fb.BuiltinOperator.CONV_2D, shape, (kernel, bias), conv_options(**kw))

    def save(self, path: Path) -> Path:
        self.graph.set_outputs([self.current])
        return write_model(path, self.graph.to_bytes())


def options(kind: type, **fields: object) -> object:
    o = kind()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


B = fb.BuiltinOperator


def dw_options(dilation_h: int, dilation_w: int) -> object:
    return options(
        fb.DepthwiseConv2DOptionsT,
        padding=fb.Padding.VALID, strideH=1, strideW=1, depthMultiplier=1,
        dilationHFactor=dilation_h, dilationWFactor=dilation_w,
    )  # fmt: skip


def relu_pool() -> object:
    o = pool_options(2)
    o.fusedActivationFunction = fb.ActivationFunctionType.RELU
    return o


def dilated_conv(c: Chain, dh: int, dw: int) -> Chain:
    kernel = c.const(np.ones((4, 1, 1, 4)))
    bias = c.const(np.zeros(4), "int32")
    o = options(fb.Conv2DOptionsT, strideH=1, strideW=1, dilationHFactor=dh, dilationWFactor=dw)
    return c.op(B.CONV_2D, [1, 8, 8, 4], (kernel, bias), o)


def depthwise(c: Chain, dh: int, dw: int) -> Chain:
    kernel = c.const(np.ones((1, 1, 1, 4)))
    bias = c.const(np.zeros(4), "int32")
    return c.op(B.DEPTHWISE_CONV_2D, [1, 8, 8, 4], (kernel, bias), dw_options(dh, dw))


def strided_slice(c: Chain, stride: int, ellipsis: int = 0) -> Chain:
    begin = c.const(np.zeros(4), "int32")
    end = c.const(np.array([1, 8, 8, 4]), "int32")
    strides = c.const(np.array([1, stride, stride, 1]), "int32")
    o = options(fb.StridedSliceOptionsT, ellipsisMask=ellipsis)
    shape = [1, 8 // stride, 8 // stride, 4]
    return c.op(B.STRIDED_SLICE, shape, (begin, end, strides), o)


def reduce_op(c: Chain, code: int, axes: list[int]) -> Chain:
    shape = [1 if i in axes else d for i, d in enumerate([1, 8, 8, 4])]
    return c.op(code, shape, (c.const(np.array(axes), "int32"),), fb.ReducerOptionsT())


def fully_connected(c: Chain, batch: int, fmt: int = 0) -> Chain:
    c.op(B.RESHAPE, [batch, 256 // batch], (c.const(np.array([batch, -1]), "int32"),))
    w = c.const(np.ones((10, 256 // batch)))
    b = c.const(np.zeros(10), "int32")
    o = options(fb.FullyConnectedOptionsT, weightsFormat=fmt)
    return c.op(B.FULLY_CONNECTED, [batch, 10], (w, b), o)


def concat(c: Chain, constant_value: int, activation: int = 0) -> Chain:
    zeros = c.const(np.full((1, 8, 8, 4), 128 + constant_value))
    o = options(fb.ConcatenationOptionsT, axis=3, fusedActivationFunction=activation)
    return c.op(B.CONCATENATION, [1, 8, 8, 8], (zeros,), o)


def squeeze(c: Chain, dims: list[int]) -> Chain:
    c.op(B.RESHAPE, [1, 8, 1, 32], (c.const(np.array([1, 8, 1, 32]), "int32"),))
    shape = [d for i, d in enumerate([1, 8, 1, 32]) if i not in dims]
    return c.op(B.SQUEEZE, shape, (), options(fb.SqueezeOptionsT, squeezeDims=dims))


def pad(c: Chain, batch_padding: int) -> Chain:
    paddings = c.const(np.array([[0, batch_padding], [1, 1], [1, 1], [0, 0]]), "int32")
    return c.op(B.PAD, [1 + batch_padding, 10, 10, 4], (paddings,), fb.PadOptionsT())


def softmax(c: Chain, shape: list[int]) -> Chain:
    c.op(B.RESHAPE, shape, (c.const(np.array(shape), "int32"),))
    return c.op(B.SOFTMAX, shape, (), options(fb.SoftmaxOptionsT, beta=1.0))


def prelu(c: Chain, alpha_shape: list[int]) -> Chain:
    return c.op(B.PRELU, [1, 8, 8, 4], (c.const(np.ones(alpha_shape)),))


def split(c: Chain, axis: int) -> Chain:
    axis_t = c.const(np.array(axis), "int32")
    shape = [1, 4, 8, 4] if axis == 1 else [1, 8, 8, 4]
    return c.op(B.SPLIT, shape, inputs=[axis_t, c.current], options=options(
        fb.SplitOptionsT, numSplits=1 if axis == 0 else 2))  # fmt: skip


def dynamic(c: Chain) -> Chain:
    c.op(B.RELU, [1, 8, 8, 4])
    c.graph.tensors[c.current].shapeSignature = np.array([1, -1, 8, 4], np.int32)
    return c


# name -> (how to add the op to an [1, 8, 8, 4] uint8 chain, runtime, expected reason or None)
RULES: dict[str, tuple[Callable[[Chain], Chain], int, str | None]] = {
    "relu maps": (lambda c: c.op(B.RELU, [1, 8, 8, 4]), 14, None),
    "unsupported op": (lambda c: c.op(B.HARD_SWISH, [1, 8, 8, 4]), 14, "unsupported op HARD_SWISH"),
    "unknown custom op": (lambda c: c.op("my-op", [1, 8, 8, 4]), 14, "unsupported custom op my-op"),
    "float activations": (
        lambda c: c.op(B.DEQUANTIZE, [1, 8, 8, 4], out_dtype="float32").op(
            B.RELU, [1, 8, 8, 4], out_dtype="float32"
        ),
        14,
        "not quantized",
    ),
    "int16 activations": (lambda c: c.op(B.RELU, [1, 8, 8, 4], out_dtype="int16"), 14, "int16"),
    "dynamic shape": (dynamic, 14, "dynamic shape"),
    "batch of 2 is a 4th non-unit dim": (
        lambda c: c.op(B.RESHAPE, [2, 4, 8, 4], (c.const(np.array([2, 4, 8, 4]), "int32"),)),
        14,
        "more than 3 non-unit dims",
    ),
    "pool with fused relu": (
        lambda c: c.op(B.MAX_POOL_2D, [1, 4, 4, 4], options=relu_pool()),
        14,
        "fused activation",
    ),
    "conv dilation 2x1": (lambda c: dilated_conv(c, 2, 1), 14, "dilation differs"),
    "conv dilation 2x2": (lambda c: dilated_conv(c, 2, 2), 14, None),
    "depthwise dilation on runtime 12": (lambda c: depthwise(c, 2, 2), 12, ">= 13"),
    "depthwise dilation on runtime 13": (lambda c: depthwise(c, 2, 2), 13, None),
    "depthwise dilation 2x1": (lambda c: depthwise(c, 2, 1), 14, "dilation differs"),
    "strided slice stride 2": (lambda c: strided_slice(c, 2), 14, "strides must all be 1"),
    "strided slice ellipsis": (lambda c: strided_slice(c, 1, ellipsis=1), 14, "masks must be 0"),
    "strided slice stride 1": (lambda c: strided_slice(c, 1), 14, None),
    "mean over batch": (lambda c: reduce_op(c, B.MEAN, [0]), 14, "batch dimension"),
    "mean on runtime 12": (lambda c: reduce_op(c, B.MEAN, [1, 2]), 12, ">= 13"),
    "mean over space": (lambda c: reduce_op(c, B.MEAN, [1, 2]), 13, None),
    "reduce max on runtime 13": (lambda c: reduce_op(c, B.REDUCE_MAX, [3]), 13, ">= 14"),
    "fully connected batch 2": (lambda c: fully_connected(c, 2), 14, "output must be 1-D"),
    "fully connected shuffled weights": (
        lambda c: fully_connected(c, 1, fmt=1),
        14,
        "default weight format",
    ),
    "fully connected": (lambda c: fully_connected(c, 1), 14, None),
    "concat with non-zero constant": (lambda c: concat(c, 3), 14, "all zeros"),
    "concat with zero constant": (lambda c: concat(c, 0), 14, None),
    "concat with fused relu": (lambda c: concat(c, 0, activation=1), 14, "fused activation"),
    "squeeze inner dim on runtime 12": (lambda c: squeeze(c, [2]), 12, "leading 1s"),
    "squeeze leading dim on runtime 12": (lambda c: squeeze(c, [0]), 12, None),
    "squeeze inner dim on runtime 13": (lambda c: squeeze(c, [2]), 13, None),
    "pad the batch": (lambda c: pad(c, 1), 14, "batch"),
    "pad space": (lambda c: pad(c, 0), 14, None),
    "softmax 2-D input": (lambda c: softmax(c, [1, 4, 64]), 14, "input must be 1-D"),
    "softmax too long": (
        lambda c: c.op(B.RESHAPE, [1, 20000], (c.const(np.array([1, 20000]), "int32"),)).op(
            B.SOFTMAX, [1, 20000], options=options(fb.SoftmaxOptionsT, beta=1.0)
        ),
        14,
        "16000",
    ),
    "softmax": (lambda c: softmax(c, [1, 256]), 14, None),
    "prelu 2-D alpha": (lambda c: prelu(c, [8, 4]), 14, "alpha must be 1-D"),
    "prelu": (lambda c: prelu(c, [1, 1, 4]), 14, None),
    "split the batch": (lambda c: split(c, 0), 14, "batch dimension"),
    "transpose on runtime 13": (
        lambda c: c.op(B.TRANSPOSE, [1, 8, 8, 4], (c.const(np.arange(4), "int32"),)),
        13,
        ">= 14",
    ),
    "quantize on runtime 12": (
        lambda c: c.op(B.QUANTIZE, [1, 8, 8, 4], out_dtype="int8"),
        12,
        ">= 13",
    ),
    "pack the batch": (
        lambda c: c.op(
            B.PACK, [1, 1, 8, 8, 4], options=options(fb.PackOptionsT, axis=0, valuesCount=1)
        ),
        14,
        "batch dimension",
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_of_the_op_table(tmp_path: Path, rule: str) -> None:
    build, runtime, expected = RULES[rule]
    chain = Chain([1, 8, 8, 4])
    chain.op(B.RELU, [1, 8, 8, 4])  # a mappable first op, so a bad op splits rather than fails
    first_new = len(chain.graph.operators)
    build(chain)
    result = inspect_model(chain.save(tmp_path / "m.tflite"), runtime_version=runtime)
    new_ops = result.ops[first_new:]
    reasons = [reason for op in new_ops for reason in op.reasons]
    if expected is None:
        assert result.status == "maps", result.summary
        assert reasons == [] and result.exit_code == 0
    else:
        assert any(expected in reason for reason in reasons), reasons
        assert result.status == "split" and result.exit_code == 1
        assert result.split_index == next(op.index for op in new_ops if op.reasons)


def test_split_is_exactly_at_the_unsupported_op(tmp_path: Path) -> None:
    chain = Chain([1, 16, 16, 8])
    chain.conv([1, 16, 16, 8], 8, 8).conv([1, 16, 16, 8], 8, 8)
    chain.op(B.HARD_SWISH, [1, 16, 16, 8])
    chain.conv([1, 16, 16, 8], 8, 8).op(B.RELU, [1, 16, 16, 8])
    result = inspect_model(chain.save(tmp_path / "m.tflite"))
    assert result.status == "split" and result.split_index == 2
    assert [op.placement for op in result.ops] == ["edgetpu"] * 2 + ["cpu"] * 3
    assert result.ops[3].maps and "after the split" in result.ops[3].verdict()
    assert result.cpu_ops == 3
    conv_macs = 16 * 16 * 8 * 8
    elements = 16 * 16 * 8
    assert result.cpu_mac_share == pytest.approx(
        (conv_macs + 2 * elements) / (3 * conv_macs + 2 * elements)
    )


def test_float_model_cannot_run_and_says_why(tmp_path: Path) -> None:
    path = write_model(tmp_path / "float.tflite", tiny_extractor("float32"))
    result = inspect_model(path)
    assert result.status == "cannot_run" and result.split_index == 0 and result.exit_code == 1
    assert "not quantized" in result.summary
    assert any("float input" in w for w in result.warnings)


def test_float_io_conversions_stay_on_the_cpu_without_splitting(tmp_path: Path) -> None:
    chain = Chain([1, 8, 8, 4], "float32")
    chain.op(B.QUANTIZE, [1, 8, 8, 4], out_dtype="uint8")
    chain.op(B.RELU, [1, 8, 8, 4], out_dtype="uint8")
    chain.op(B.DEQUANTIZE, [1, 8, 8, 4], out_dtype="float32")
    result = inspect_model(chain.save(tmp_path / "m.tflite"))
    assert result.status == "maps" and result.exit_code == 0
    assert [op.placement for op in result.ops] == ["cpu", "edgetpu", "cpu"]
    assert any("float input" in w for w in result.warnings)
    assert any("float output" in w for w in result.warnings)


def test_parameters_past_8_mib_are_reported_as_streaming(tmp_path: Path) -> None:
    chain = Chain([1, 3000])
    w = chain.const(np.zeros((3000, 3000)))
    b = chain.const(np.zeros(3000), "int32")
    chain.op(B.FULLY_CONNECTED, [1, 3000], (w, b), fb.FullyConnectedOptionsT())
    result = inspect_model(chain.save(tmp_path / "m.tflite"))
    assert result.parameter_bytes == 3000 * 3000 + 4 * 3000
    assert result.parameters_stream and any("stream" in w for w in result.warnings)


def test_compiled_model_runs_entirely_on_the_edgetpu(tmp_path: Path) -> None:
    result = inspect_model(fake_edgetpu_model(tmp_path))
    assert result.status == "compiled" and result.exit_code == 0 and result.cpu_ops == 0


def test_workbench_model_on_compiled_extractor_is_compiled_plus_cpu_head(tmp_path: Path) -> None:
    graph = Graph.load(fake_edgetpu_model(tmp_path))
    graph.tensors[graph.outputs[0]].quantization = Quant.per_tensor(0.05, 0).to_schema()
    append_softmax_regression_tail(graph, np.ones((3, 4)), np.zeros(3), (-4.0, 4.0))
    set_workbench_metadata(graph, {"trainer": "backprop", "classes": ["a", "b", "c"]})
    path = write_model(tmp_path / "retrained.tflite", graph.to_bytes())
    result = inspect_model(path)
    assert result.status == "compiled_with_cpu" and result.exit_code == 1
    assert result.summary.startswith("compiled extractor + CPU head (backprop)")
    assert [op.placement for op in result.ops] == ["compiled", "cpu", "cpu"]
    assert result.workbench == {"trainer": "backprop", "classes": ["a", "b", "c"]}


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    good = write_model(tmp_path / "good.tflite", tiny_extractor("uint8"))
    float_model = write_model(tmp_path / "float.tflite", tiny_extractor("float32"))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    ok = runner.invoke(app, ["inspect", str(good), "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["status"] == "maps" and data["ops"][0]["verdict"] == "maps"
    assert data["inputs"][0]["dtype"] == "uint8" and data["inputs"][0]["zero_point"] == 128
    table = runner.invoke(app, ["inspect", str(float_model)])
    assert table.exit_code == 1 and "not quantized" in table.stdout
    bad = runner.invoke(app, ["inspect", str(junk)])
    assert bad.exit_code == 2 and bad.stderr.startswith("error:")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.shared
def test_coral_models() -> None:
    cpu = inspect_model(shared_file(CORAL_EXTRACTOR))
    assert cpu.status == "maps" and cpu.cpu_ops == 0 and len(cpu.ops) == 28
    compiled = inspect_model(
        shared_file(CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite")
    )
    assert compiled.status == "compiled" and compiled.cpu_ops == 0
    assert 3 * 2**20 < compiled.parameter_bytes < 4 * 2**20


@pytest.mark.shared
def test_workbench_export_on_coral_edgetpu_extractor(tmp_path: Path) -> None:
    graph = Graph.load(
        shared_file(CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite")
    )
    weights = np.random.default_rng(0).normal(size=(5, 1024))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    append_imprinting_tail(graph, weights, 10.0)
    set_workbench_metadata(graph, {"trainer": "imprint", "classes": list("abcde")})
    result = inspect_model(write_model(tmp_path / "m.tflite", graph.to_bytes()))
    assert result.status == "compiled_with_cpu"
    assert result.summary.startswith("compiled extractor + CPU head (imprint)")
    assert [op.op for op in result.ops[1:]] == [
        "L2_NORMALIZATION", "CONV_2D", "MUL", "RESHAPE", "SOFTMAX",
    ]  # fmt: skip
    assert result.coral_imprinting_format
