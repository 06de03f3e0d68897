"""Exported heads compute what the float heads compute, on a real interpreter.

Each test builds a graph whose input stands in for an extractor's output (same type, shape and
quantization), appends a head, and compares the interpreter's scores with numpy's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders import write_model
from workbench.coral_format import imprinting_layout, imprinting_problems
from workbench.imprint_head import ImprintingHead
from workbench.options import ImprintOptions
from workbench.runtime import load_model
from workbench.tflite.graph import Graph, Quant
from workbench.tflite.heads import append_imprinting_tail

EMBEDDING_QUANT = {
    "uint8": Quant.per_tensor(0.02, 0),  # non-negative pooled features, like MobileNet's
    "int8": Quant.per_tensor(0.02, -128),
    "float32": None,
}


def embedding_graph(dtype: str, shape: list[int]) -> tuple[Graph, int]:
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
    model = load_model(write_model(tmp_path / "head.tflite", graph.to_bytes()))
    shape = model.input.shape
    return np.stack(
        [model.output.dequantize(model.run(x.reshape(shape))).reshape(-1) for x in inputs]
    )


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
@pytest.mark.parametrize("whiten", [1.0, False])  # forced, so the layer is there to test
@pytest.mark.parametrize("shape", ["4d", "2d"])
def test_imprinting_tail_matches_float_head(
    tmp_path: Path, dtype: str, whiten: float | bool, shape: str
) -> None:
    dim, classes = 24, 6
    x, y = clustered_features(400, dim, classes, seed=1)
    train, test = slice(0, 300), slice(300, None)
    head = ImprintingHead.fit(x[train], y[train], classes, ImprintOptions(whiten=whiten))
    graph, _ = embedding_graph(dtype, [1, 1, 1, dim] if shape == "4d" else [1, dim])
    tail = head.append_to(graph)
    assert not imprinting_problems(graph)
    assert tail.scores == graph.outputs[0]

    scores = run_head(tmp_path, graph, quantize_input(x[test], dtype))
    expected = head.scores(x[test])
    if dtype == "float32":
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        return
    # uint8 scores in steps of 1/256; the top-1 may only differ where the float head's two best
    # classes are within the 8-bit resolution of the cosines (where a step of the cosine also
    # moves the scores most, the logit scale amplifying it).
    assert np.abs(scores - expected).mean() < 0.01
    cos_gap = np.diff(np.sort(np.log(expected + 1e-12), axis=1)[:, -2:], axis=1)[:, 0]
    clear = cos_gap / head.scale_factor > 0.01
    assert clear.mean() > 0.9
    assert np.array_equal(scores[clear].argmax(1), expected[clear].argmax(1))
    assert np.abs(scores - expected)[clear].max() < 0.1
    assert scores.dtype == np.float32 and graph.dtype(graph.outputs[0]) == np.uint8


def test_imprinting_export_is_coral_format_with_uint8_scores() -> None:
    x, y = clustered_features(60, 10, 3, seed=2)
    head = ImprintingHead.fit(x, y, 3, ImprintOptions(whiten=1.0))
    graph, _ = embedding_graph("int8", [1, 10])
    head.append_to(graph)
    layout = imprinting_layout(graph)
    assert layout is not None
    assert (layout.embedding_dim, layout.num_classes) == (10, 3)
    names = graph.op_names()
    assert names == [
        "QUANTIZE", "RESHAPE", "CONV_2D", "L2_NORMALIZATION",
        "CONV_2D", "MUL", "RESHAPE", "SOFTMAX",
    ]  # fmt: skip
    assert graph.quant(layout.embedding) == Quant.per_tensor(1 / 128, 128)
    assert graph.quant(layout.scores) == Quant.per_tensor(1 / 256, 0)
    assert graph.dtype(layout.scores) == np.uint8


def test_validator_names_what_is_wrong() -> None:
    graph, x = embedding_graph("float32", [1, 4])
    assert any("L2_NORMALIZATION" in p for p in imprinting_problems(graph))
    head = ImprintingHead.fit(
        np.eye(4)[[0, 0, 1, 1]] + 0.1, np.array([0, 0, 1, 1]), 2, ImprintOptions(whiten=False)
    )
    append_imprinting_tail(graph, head.classes.weights, head.scale_factor)
    assert imprinting_problems(graph) == []
    graph.set_outputs([graph.outputs[0], x])
    assert imprinting_problems(graph) == ["the Softmax output must be the graph's only output"]
