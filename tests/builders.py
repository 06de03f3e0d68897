"""The tests' shared helpers: small real models, image folders, ../shared, running the CLI.

Models and images are built with workbench's own flatbuffer code. The tiny extractor is a
real convolutional network (conv 3x3 stride 2 with ReLU, then global average pooling) whose
filters respond to colour and to stripe orientation, so images of the synthetic classes below
get embeddings that imprinting and backprop can separate.

Test modules import helpers from here (fixtures live in conftest.py), never from each other.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import resource
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from workbench.cli import app
from workbench.extract.runtime import load_model
from workbench.tflite.graph import Graph, Quant
from workbench.tflite.quant import quantize, quantize_bias, range_quant, symmetric_quant
from workbench.tflite.schema import fb

# --- ../shared: real models and photos, on development machines only -----------------------------

SHARED = Path(
    os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[1].parent / "shared")
)
CORAL = SHARED / "coral"
FLOWERS = SHARED / "datasets" / "flower_photos"
CORAL_EXTRACTOR = CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def shared_file(path: Path) -> Path:
    """The path, or skip the test when ../shared (not shipped to users) is absent."""
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only on development machines)")
    return path


# --- models ---------------------------------------------------------------------------------------

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


no_edgetpu_runtime = pytest.mark.skipif(
    ctypes.util.find_library("edgetpu") is not None, reason="an Edge TPU runtime is installed"
)


def fake_edgetpu_model(folder: Path) -> Path:
    """A model whose only operator is an `edgetpu-custom-op`, as edgetpu_compiler writes."""
    graph = Graph.empty()
    x = graph.add_tensor("input", [1, 8, 8, 3], np.uint8)
    y = graph.add_tensor("output", [1, 4], np.uint8)
    graph.add_operator("edgetpu-custom-op", [x], [y])
    graph.set_inputs([x])
    graph.set_outputs([y])
    return write_model(folder / "model_edgetpu.tflite", graph.to_bytes())


# --- heads on stand-in embeddings -----------------------------------------------------------------

EMBEDDING_QUANT = {
    "uint8": Quant.per_tensor(0.02, 0),  # non-negative pooled features, like MobileNet's
    "int8": Quant.per_tensor(0.02, -128),
    "float32": None,
}


def embedding_graph(dtype: str, shape: list[int]) -> tuple[Graph, int]:
    """A graph whose input stands in for an extractor's output (type, shape, quantization)."""
    graph = Graph.empty()
    x = graph.add_tensor("embedding", shape, np.dtype(dtype), EMBEDDING_QUANT[dtype])
    graph.set_inputs([x])
    graph.set_outputs([x])
    return graph, x


def quantize_input(values: np.ndarray, dtype: str) -> np.ndarray:
    quant = EMBEDDING_QUANT[dtype]
    if quant is None:
        return values.astype(np.float32)
    info = np.iinfo(np.dtype(dtype))
    q = np.round(values / quant.scale[0]) + quant.zero_point[0]
    return np.clip(q, info.min, info.max).astype(dtype)


def clustered_features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features on the 0.02 grid (exactly representable in uint8 and int8)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.0, 3.0, size=(classes, dim))
    labels = rng.integers(0, classes, size=n)
    x = np.clip(centers[labels] + rng.normal(0.0, 0.6, size=(n, dim)), 0.0, 5.0)
    return np.round(x / 0.02) * 0.02, labels


def run_head(tmp_path: Path, graph: Graph, inputs: np.ndarray) -> np.ndarray:
    """The graph's dequantized outputs for each row of `inputs`, on a real interpreter."""
    model = load_model(write_model(tmp_path / "head.tflite", graph.to_bytes()))
    shape = model.input.shape
    return np.stack(
        [model.output.dequantize(model.run(x.reshape(shape))).reshape(-1) for x in inputs]
    )


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


# The documentation's examples train on "flowers/"; in tests, colours stand in for the flowers.
FLOWER_STYLES = {"daisy": "red", "roses": "green", "tulips": "blue", "sunflowers": "orange"}


def make_flowers(
    root: Path,
    classes: tuple[str, ...] = ("daisy", "roses", "tulips"),
    per_class: int = 8,
    seed: int = 0,
) -> Path:
    """root/<class>/ for each flower class: `per_class` JPEGs each, one colour per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        style = FLOWER_STYLES[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(style, rng).save(folder / f"{name}_{i:03d}.jpg")
    return root


# --- running the CLI ------------------------------------------------------------------------------

_runner = CliRunner()

# The `cli` fixture (conftest.py): cli(*args, fresh=False, cwd=None) -> the command's --json output.
CliJson = Callable[..., Any]


@dataclass(frozen=True)
class Outcome:
    """Exit code and streams of one CLI run (in-process or in a fresh interpreter)."""

    code: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.code}\n--- stderr ---\n{self.stderr}\n--- stdout ---\n{self.stdout}"

    def json(self) -> Any:
        """stdout as JSON (what a command prints with --json)."""
        return json.loads(self.stdout)


def invoke(*args: object) -> Outcome:
    """The CLI in this process (typer's runner): fast, for everything but signals and warnings.

    An exception that escaped the CLI is appended to stderr as the traceback a user would see.
    """
    result = _runner.invoke(app, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr)


def cli_command(*args: object) -> list[str]:
    """The command line that runs `workbench ARGS` in a fresh interpreter."""
    return [sys.executable, "-m", "workbench", *map(str, args)]


def run_cli(
    *args: object, cwd: Path | None = None, timeout: float = 300, limit_memory: bool = False
) -> Outcome:
    """The real console entry point in a fresh interpreter, as a user runs it."""

    def cap_memory() -> None:  # a runaway allocation fails in the child, not on the machine
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    done = subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=cap_memory if limit_memory else None,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def stderr_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.strip().splitlines() if line.strip()]


def warnings_of(outcome: Outcome) -> list[str]:
    return [line for line in stderr_lines(outcome) if line.startswith("warning: ")]


def assert_error(outcome: Outcome, *needles: str, alone: bool = True) -> str:
    """Exit 2, no traceback, the last stderr line is the one `error: ` line; returns it.

    `alone`: nothing else on stderr (no progress or warning lines came before it).
    """
    assert outcome.code == 2, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    lines = stderr_lines(outcome)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome.describe()
    if alone:
        assert len(lines) == 1, outcome.describe()
    for needle in needles:
        assert needle in errors[0], outcome.describe()
    return errors[0]


def assert_ok(outcome: Outcome) -> None:
    assert outcome.code == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert not any(line.startswith("error:") for line in stderr_lines(outcome)), outcome.describe()
