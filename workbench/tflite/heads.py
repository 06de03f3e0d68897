"""Append a trained classification head behind an extractor's output.

Two tails, both quantized to match the extractor's output (float extractors get float tails):

- imprinting, in Coral's format so pycoral's ImprintingEngine can keep training the model:
  L2_NORMALIZATION -> CONV_2D 1x1 (one filter per class) -> MUL (logit scale) -> RESHAPE [1, C]
  -> SOFTMAX, with uint8 scores (an int8 extractor output is first requantized to uint8, which
  is lossless);
- softmax regression (backprop), as Coral's last-layer backprop writes it: FULLY_CONNECTED ->
  SOFTMAX, uint8 for uint8 extractors and int8 for int8 ones.

The extractor's operators are not touched; the new operators run on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.tflite.graph import Graph, Quant
from workbench.tflite.quant import (
    quantize,
    quantize_bias,
    range_quant,
    symmetric_quant,
)
from workbench.tflite.schema import fb

PREFIX = "workbench"
# Fixed by the TFLite kernels: L2Norm output spans [-1, 1]; softmax output spans [0, 1].
L2NORM_QUANT = {np.dtype(np.uint8): Quant.per_tensor(1 / 128, 128)}
SOFTMAX_QUANT = {
    np.dtype(np.uint8): Quant.per_tensor(1 / 256, 0),
    np.dtype(np.int8): Quant.per_tensor(1 / 256, -128),
}
FLOAT = np.dtype(np.float32)
QUANTIZED = (np.dtype(np.uint8), np.dtype(np.int8))


@dataclass(frozen=True)
class ImprintingTail:
    """Tensor indices of the imprinting tail, for tests and for reading a model back."""

    l2norm_output: int
    kernel: int
    bias: int
    scale_factor: int
    scores: int


def embedding_output(graph: Graph) -> tuple[int, int]:
    """The graph's single output and its flattened width D, checking it can take a head."""
    outputs = graph.outputs
    if len(outputs) != 1:
        raise WorkbenchError(f"the extractor must have one output, it has {len(outputs)}")
    tensor = outputs[0]
    shape = graph.shape(tensor)
    if not shape or shape[0] != 1 or any(d < 1 for d in shape):
        raise WorkbenchError(f"extractor output shape {list(shape)} is not [1, ..., D]")
    dtype = graph.dtype(tensor)
    if dtype != FLOAT and dtype not in QUANTIZED:
        raise WorkbenchError(f"extractor output type {dtype.name} is not uint8, int8 or float32")
    if dtype in QUANTIZED and graph.quant(tensor) is None:
        raise WorkbenchError("extractor output is integer but has no quantization parameters")
    return tensor, int(np.prod(shape[1:]))


def _reshape(graph: Graph, tensor: int, shape: list[int], name: str) -> int:
    shape_tensor = graph.add_tensor(
        f"{name}/shape", [len(shape)], np.int32, data=np.asarray(shape, np.int32)
    )
    out = graph.add_tensor(name, shape, graph.dtype(tensor), graph.quant(tensor))
    options = fb.ReshapeOptionsT()
    options.newShape = list(shape)
    graph.add_operator(fb.BuiltinOperator.RESHAPE, [tensor, shape_tensor], [out], options)
    return out


def _requantize_to_uint8(graph: Graph, tensor: int) -> int:
    """int8 -> uint8 with the same scale and the zero point moved by 128: exact."""
    q = graph.quant(tensor)
    assert q is not None
    out = graph.add_tensor(
        f"{PREFIX}/embedding_uint8",
        list(graph.shape(tensor)),
        np.uint8,
        Quant.per_tensor(q.scale[0], q.zero_point[0] + 128),
    )
    graph.add_operator(fb.BuiltinOperator.QUANTIZE, [tensor], [out], version=2)
    return out


def _softmax(graph: Graph, logits: int, dtype: np.dtype, name: str) -> int:
    shape = list(graph.shape(logits))
    out = graph.add_tensor(name, shape, dtype, SOFTMAX_QUANT.get(dtype))
    options = fb.SoftmaxOptionsT()
    options.beta = 1.0  # 0 would be a valid flatbuffer default but a broken kernel multiplier
    graph.add_operator(
        fb.BuiltinOperator.SOFTMAX, [logits], [out], options, version=2 if dtype == np.int8 else 1
    )
    return out


def _quantized_layer(
    graph: Graph,
    name: str,
    weights: np.ndarray,
    bias: np.ndarray,
    in_quant: Quant,
    kernel_quant: Quant,
    dtype: np.dtype,
) -> tuple[int, int]:
    """Constant weight and bias tensors of a quantized layer (conv or fully connected).

    The bias is int32 at scale input scale x weight scale, zero point 0: what the TFLite
    kernels (and Coral's tools) require, so the accumulator needs no rescaling before it.
    With weights near zero (a degenerate head) that scale is so fine that the bias would not
    fit in int32; the weights' range is then widened until it does.
    """
    peak_bias = float(np.max(np.abs(bias))) if np.size(bias) else 0.0
    needed = peak_bias / (in_quant.scale[0] * INT32_LIMIT)
    if needed > kernel_quant.scale[0]:
        kernel_quant = _with_scale(kernel_quant, needed)
    kernel = graph.add_tensor(
        f"{name}/weights", list(weights.shape), dtype, kernel_quant,
        quantize(weights, kernel_quant, dtype),
    )  # fmt: skip
    bias_scale = in_quant.scale[0] * kernel_quant.scale[0]
    bias_tensor = graph.add_tensor(
        f"{name}/bias", [len(bias)], np.int32, Quant.per_tensor(bias_scale, 0),
        quantize_bias(bias, bias_scale),
    )  # fmt: skip
    return kernel, bias_tensor


INT32_LIMIT = 2**31 - 1


def _with_scale(quant: Quant, scale: float) -> Quant:
    """The same zero point at a coarser scale (the range grows around zero)."""
    return Quant.per_tensor(scale * 1.001, quant.zero_point[0])


def _conv_1x1(
    graph: Graph,
    source: int,
    weights: np.ndarray,
    bias: np.ndarray,
    out_range: tuple[float, float] | None,
    name: str,
    kernel_range: tuple[float, float] | None = None,
) -> int:
    """out = weights @ x + bias as a 1x1 CONV_2D on [1, 1, 1, D] (Coral's imprinting layer).

    Quantized sources get uint8 weights (per tensor, over `kernel_range` or the weights' own
    range), an int32 bias at input scale x weight scale, and a uint8 output over `out_range`.
    """
    out_dim, in_dim = weights.shape
    kernel_shape = [out_dim, 1, 1, in_dim]
    options = fb.Conv2DOptionsT()
    options.padding = fb.Padding.VALID
    options.strideH = options.strideW = 1
    options.dilationHFactor = options.dilationWFactor = 1
    dtype = graph.dtype(source)
    if dtype == FLOAT:
        kernel = graph.add_tensor(
            f"{name}/weights", kernel_shape, FLOAT, data=weights.reshape(kernel_shape)
        )
        bias_tensor = graph.add_tensor(f"{name}/bias", [out_dim], FLOAT, data=bias)
        out = graph.add_tensor(name, [1, 1, 1, out_dim], FLOAT)
    else:
        assert out_range is not None
        in_quant = graph.quant(source)
        assert in_quant is not None
        lo, hi = kernel_range or (float(weights.min()), float(weights.max()))
        kernel, bias_tensor = _quantized_layer(
            graph, name, weights.reshape(kernel_shape), bias, in_quant,
            range_quant(lo, hi, np.uint8), np.dtype(np.uint8),
        )  # fmt: skip
        out = graph.add_tensor(
            name, [1, 1, 1, out_dim], np.uint8, range_quant(*out_range, np.uint8)
        )
    graph.add_operator(fb.BuiltinOperator.CONV_2D, [source, kernel, bias_tensor], [out], options)
    return out


@dataclass(frozen=True)
class Transform:
    """An affine map z = matrix @ x + bias applied before the L2 normalization."""

    matrix: np.ndarray  # [D_out, D]
    bias: np.ndarray  # [D_out]
    out_range: tuple[float, float]  # of z on the training data, for the uint8 output


def append_imprinting_tail(
    graph: Graph,
    weights: np.ndarray,
    scale_factor: float,
    cosine_range: tuple[float, float] = (-1.0, 1.0),
    transform: Transform | None = None,
    embedding: int | None = None,
) -> ImprintingTail:
    """Append Coral's imprinting tail computing softmax(scale_factor * cos(z, w_c)).

    `weights` are the unit-norm class vectors [C, D]; `transform` (whitening) maps the
    extractor's output x to z before the L2Norm, otherwise z = x. For a quantized model the
    1x1 convolution's output resolves `cosine_range` with its 256 levels: a bias of -lo shifts
    the window to [0, hi - lo], which the softmax cannot see (it ignores a shift shared by all
    classes). `embedding` continues from an existing L2Norm output instead of appending one.
    """
    weights = np.asarray(weights, np.float32)
    num_classes, dim = weights.shape
    if embedding is None:
        source, width = embedding_output(graph)
        expected = transform.matrix.shape[1] if transform is not None else dim
        if width != expected:
            raise WorkbenchError(f"head expects {expected}-d embeddings, extractor gives {width}")
        if graph.dtype(source) == np.int8:
            source = _requantize_to_uint8(graph, source)
        if graph.shape(source) != (1, 1, 1, width):
            source = _reshape(graph, source, [1, 1, 1, width], f"{PREFIX}/embedding_4d")
        if transform is not None:
            source = _conv_1x1(
                graph,
                source,
                transform.matrix,
                transform.bias,
                transform.out_range,
                f"{PREFIX}/whitened",
            )
        dtype = graph.dtype(source)
        embedding = graph.add_tensor(
            f"{PREFIX}/l2norm", [1, 1, 1, dim], dtype, L2NORM_QUANT.get(dtype)
        )
        graph.add_operator(
            fb.BuiltinOperator.L2_NORMALIZATION, [source], [embedding], fb.L2NormOptionsT()
        )
    dtype = graph.dtype(embedding)
    lo, hi = cosine_range
    shift = lo if dtype != FLOAT else 0.0
    cosine = _conv_1x1(
        graph,
        embedding,
        weights,
        np.full(num_classes, -shift),
        (0.0, hi - lo),
        f"{PREFIX}/cosine",
    )
    kernel, bias = (int(i) for i in graph.operators[-1].inputs[1:3])
    if dtype == FLOAT:
        factor = graph.add_tensor(
            f"{PREFIX}/scale_factor", [1], FLOAT, data=np.asarray([scale_factor])
        )
        logit_quant = None
    else:
        # The factor is stored as the top level of a [0, s] range so it is exact, and the
        # logits get the cosines' step times s: the MUL then maps levels one to one.
        factor = graph.add_tensor(
            f"{PREFIX}/scale_factor",
            [1],
            np.uint8,
            Quant.per_tensor(scale_factor / 255, 0),
            np.asarray([255], np.uint8),
        )
        logit_quant = range_quant(0.0, scale_factor * (hi - lo), np.uint8)
    logits = graph.add_tensor(f"{PREFIX}/logits_4d", [1, 1, 1, num_classes], dtype, logit_quant)
    graph.add_operator(fb.BuiltinOperator.MUL, [cosine, factor], [logits], fb.MulOptionsT())
    logits_2d = _reshape(graph, logits, [1, num_classes], f"{PREFIX}/logits")
    scores = _softmax(graph, logits_2d, dtype, f"{PREFIX}/scores")
    graph.set_outputs([scores])
    return ImprintingTail(embedding, kernel, bias, factor, scores)


def append_softmax_regression_tail(
    graph: Graph,
    weights: np.ndarray,
    bias: np.ndarray,
    logit_range: tuple[float, float],
) -> int:
    """Append FULLY_CONNECTED (logits = x W^T + b) and SOFTMAX; returns the scores tensor.

    uint8 extractors get asymmetric uint8 weights (range including 0), as Coral writes them;
    int8 extractors symmetric int8 weights (TFLite's int8 kernels require zero point 0). The
    bias is int32 with scale = input scale x weight scale; the logits are quantized over
    `logit_range` (chosen on held-out images, see `workbench.heads.calibration.logit_window`),
    shifted by a bias of -lo to [0, hi - lo] as the imprinting window is: an 8-bit range must
    include 0, and the softmax ignores a shift shared by all classes.
    """
    weights = np.asarray(weights, np.float32)
    lo, hi = logit_range
    if graph.dtype(embedding_output(graph)[0]) != FLOAT:
        bias, logit_range = np.asarray(bias) - lo, (0.0, hi - lo)
    bias = np.asarray(bias, np.float32)
    num_classes, dim = weights.shape
    source, width = embedding_output(graph)
    if width != dim:
        raise WorkbenchError(f"head expects {dim}-d embeddings, extractor gives {width}")
    dtype = graph.dtype(source)
    options = fb.FullyConnectedOptionsT()
    options.keepNumDims = False
    if dtype == FLOAT:
        kernel = graph.add_tensor(f"{PREFIX}/fc/weights", [num_classes, dim], FLOAT, data=weights)
        bias_tensor = graph.add_tensor(f"{PREFIX}/fc/bias", [num_classes], FLOAT, data=bias)
        logits = graph.add_tensor(f"{PREFIX}/logits", [1, num_classes], FLOAT)
        version = 1
    else:
        in_quant = graph.quant(source)
        assert in_quant is not None
        if dtype == np.uint8:
            kernel_quant = range_quant(float(weights.min()), float(weights.max()), np.uint8)
            version = 1
        else:
            kernel_quant = symmetric_quant(weights, np.int8)
            version = 4
        kernel, bias_tensor = _quantized_layer(
            graph, f"{PREFIX}/fc", weights, bias, in_quant, kernel_quant, dtype
        )
        logits = graph.add_tensor(
            f"{PREFIX}/logits", [1, num_classes], dtype, range_quant(*logit_range, dtype)
        )
    graph.add_operator(
        fb.BuiltinOperator.FULLY_CONNECTED,
        [source, kernel, bias_tensor],
        [logits],
        options,
        version=version,
    )
    scores = _softmax(graph, logits, dtype, f"{PREFIX}/scores")
    graph.set_outputs([scores])
    return scores
