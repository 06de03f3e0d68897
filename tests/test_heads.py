"""Exported heads compute what the float heads compute, on a real interpreter.

Each test builds a graph whose input stands in for an extractor's output (same type, shape and
quantization), appends a head, and compares the interpreter's scores with numpy's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders import (
    clustered_features,
    embedding_graph,
    quantize_input,
    run_head,
)
from workbench.core.options import ImprintOptions
from workbench.heads.coral_format import imprinting_layout, imprinting_problems
from workbench.heads.imprint_head import ImprintingHead
from workbench.tflite.graph import Quant
from workbench.tflite.heads import append_imprinting_tail


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
