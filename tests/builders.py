"""Small real TFLite models and image folders for tests, built with workbench's own flatbuffer code.

The tiny extractor is a real convolutional network (conv 3x3 stride 2 with ReLU, then global
average pooling) whose filters respond to colour and to stripe orientation, so images of the
synthetic classes below get embeddings that imprinting and backprop can separate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from workbench.tflite.graph import Graph, Quant
from workbench.tflite.quant import quantize, quantize_bias, range_quant, symmetric_quant
from workbench.tflite.schema import fb

CONV_OUT_MAX = 4.0


def _filters(channels: int, seed: int) -> np.ndarray:
    """[channels, 3, 3, 3] float filters: colour detectors, edge detectors, random."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.25, size=(channels, 3, 3, 3))
    for c in range(min(3, channels)):  # red, green, blue detectors
        w[c] = -0.08
        w[c, :, :, c] = 0.25
    if channels > 3:  # horizontal stripes: top row minus bottom row (luminance)
        w[3] = 0.0
        w[3, 0, :, :] = 0.2
        w[3, 2, :, :] = -0.2
    if channels > 4:  # vertical stripes
        w[4] = 0.0
        w[4, :, 0, :] = 0.2
        w[4, :, 2, :] = -0.2
    if channels > 5:  # the same edges with opposite sign, so ReLU keeps both polarities
        w[5] = -w[3]
    if channels > 6:
        w[6] = -w[4]
    return w


def conv_options(stride: int = 1, padding: int = fb.Padding.VALID, activation: int = 0):
    options = fb.Conv2DOptionsT()
    options.padding = padding
    options.strideH = options.strideW = stride
    options.dilationHFactor = options.dilationWFactor = 1
    options.fusedActivationFunction = activation
    return options


def pool_options(size: int):
    options = fb.Pool2DOptionsT()
    options.padding = fb.Padding.VALID
    options.strideH = options.strideW = size
    options.filterHeight = options.filterWidth = size
    return options


def tiny_extractor(
    dtype: str = "uint8",
    size: int = 32,
    channels: int = 8,
    seed: int = 0,
    output_shape: str = "4d",
) -> bytes:
    """A conv + ReLU + average-pool embedding extractor with `channels`-d output.

    dtype: "uint8" (Coral-style, input scale 1/128 zero point 128), "int8" (full-integer
    int8 I/O) or "float32". output_shape "2d" adds a RESHAPE to [1, channels].
    """
    graph = Graph.empty("tiny extractor for tests")
    w = _filters(channels, seed)
    conv_size = (size - 3) // 2 + 1
    conv_shape = [1, conv_size, conv_size, channels]
    if dtype == "float32":
        x = graph.add_tensor("input", [1, size, size, 3], np.float32)
        kernel = graph.add_tensor("conv/weights", list(w.shape), np.float32, data=w)
        bias = graph.add_tensor("conv/bias", [channels], np.float32, data=np.zeros(channels))
        conv = graph.add_tensor("conv", conv_shape, np.float32)
        out_quant = None
        np_type: type = np.float32
    else:
        np_type = np.uint8 if dtype == "uint8" else np.int8
        in_quant = Quant.per_tensor(1 / 128, 128 if dtype == "uint8" else 0)
        x = graph.add_tensor("input", [1, size, size, 3], np_type, in_quant)
        w_quant = (
            range_quant(w.min(), w.max(), np.uint8) if dtype == "uint8" else symmetric_quant(w)
        )
        kernel = graph.add_tensor(
            "conv/weights", list(w.shape), np_type, w_quant, quantize(w, w_quant, np_type)
        )
        bias_scale = in_quant.scale[0] * w_quant.scale[0]
        bias = graph.add_tensor(
            "conv/bias",
            [channels],
            np.int32,
            Quant.per_tensor(bias_scale, 0),
            quantize_bias(np.zeros(channels), bias_scale),
        )
        out_quant = range_quant(0.0, CONV_OUT_MAX, np_type)
        conv = graph.add_tensor("conv", conv_shape, np_type, out_quant)
    graph.add_operator(
        fb.BuiltinOperator.CONV_2D,
        [x, kernel, bias],
        [conv],
        conv_options(stride=2, activation=fb.ActivationFunctionType.RELU),
        version=3 if dtype == "int8" else 1,
    )
    pooled = graph.add_tensor("embedding", [1, 1, 1, channels], np_type, out_quant)
    graph.add_operator(
        fb.BuiltinOperator.AVERAGE_POOL_2D,
        [conv],
        [pooled],
        pool_options(conv_size),
        version=2 if dtype == "int8" else 1,
    )
    output = pooled
    if output_shape == "2d":
        shape = graph.add_tensor("shape", [2], np.int32, data=np.asarray([1, channels], np.int32))
        output = graph.add_tensor("embedding_2d", [1, channels], np_type, out_quant)
        options = fb.ReshapeOptionsT()
        options.newShape = [1, channels]
        graph.add_operator(fb.BuiltinOperator.RESHAPE, [pooled, shape], [output], options)
    graph.set_inputs([x])
    graph.set_outputs([output])
    return graph.to_bytes()


def write_model(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- images ------------------------------------------------------------------------------------

CLASS_STYLES = {
    "red": ((200, 40, 40), None),
    "green": ((40, 180, 50), None),
    "blue": ((40, 60, 200), None),
    "hstripes": ((128, 128, 128), "h"),
    "vstripes": ((128, 128, 128), "v"),
    "cyan": ((40, 170, 190), None),
    "orange": ((210, 120, 40), None),
}


def class_image(
    style: str, rng: np.random.Generator, size: int = 48, noise: float = 25.0
) -> Image.Image:
    """An RGB image of a synthetic class: a colour with noise, or stripes of random phase."""
    color, stripes = CLASS_STYLES[style]
    base = np.empty((size, size, 3), np.float64)
    base[:] = color
    if stripes is not None:
        period = int(rng.integers(6, 10))
        phase = int(rng.integers(0, period))
        idx = (np.arange(size) + phase) % period < period // 2
        band = np.where(idx, 90.0, -90.0)
        base += band[:, None, None] if stripes == "h" else band[None, :, None]
    base += rng.normal(0.0, noise, size=base.shape)
    base *= rng.uniform(0.8, 1.2)  # exposure
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def make_dataset(
    root: Path,
    classes: tuple[str, ...] = ("red", "green", "blue"),
    per_class: int = 12,
    seed: int = 0,
    fmt: str = "png",
    size: int = 48,
    noise: float = 25.0,
) -> Path:
    """Write `per_class` images of each synthetic class into root/<class>/."""
    rng = np.random.default_rng(seed)
    for style in classes:
        folder = root / style
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(style, rng, size, noise).save(folder / f"{style}_{i:03d}.{fmt}")
    return root
