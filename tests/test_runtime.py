from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders import (
    CORAL,
    fake_edgetpu_model,
    no_edgetpu_runtime,
    shared_file,
    tiny_extractor,
    write_model,
)
from workbench.core.errors import WorkbenchError
from workbench.extract.runtime import RUNTIME_NAME, load_model
from workbench.tflite.graph import Graph
from workbench.tflite.schema import fb


def test_loads_and_describes_io(models: dict[str, Path]) -> None:
    model = load_model(models["uint8"])
    assert RUNTIME_NAME in ("tflite_runtime", "ai_edge_litert")
    assert model.input.shape == (1, 32, 32, 3) and model.input.dtype == np.uint8
    assert (model.input.scale, model.input.zero_point) == (1 / 128, 128)
    assert model.output.shape == (1, 1, 1, 8) and model.output.quantized
    assert not model.edgetpu
    out = model.run(np.zeros((1, 32, 32, 3), np.uint8))
    assert out.shape == (1, 1, 1, 8)


def test_dequantize_uses_scale_and_zero_point(models: dict[str, Path]) -> None:
    spec = load_model(models["int8"]).output
    raw = np.array([spec.zero_point, spec.zero_point + 10], np.int8)
    np.testing.assert_allclose(spec.dequantize(raw), [0.0, 10 * spec.scale], rtol=1e-6)


def test_model_with_two_outputs_is_refused(tmp_path: Path) -> None:
    graph = Graph.from_bytes(tiny_extractor("uint8"))
    graph.set_outputs([graph.outputs[0], graph.operators[0].outputs[0]])
    path = write_model(tmp_path / "two.tflite", graph.to_bytes())
    with pytest.raises(WorkbenchError, match="exactly one input and one output"):
        load_model(path)


@no_edgetpu_runtime
def test_edgetpu_model_without_edgetpu_names_the_cpu_build(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match=r"compiled for the Edge TPU.*CPU build"):
        load_model(fake_edgetpu_model(tmp_path))


@no_edgetpu_runtime
def test_device_without_edgetpu_runtime_is_a_clear_error(models: dict[str, Path]) -> None:
    with pytest.raises(WorkbenchError, match="cannot open the Edge TPU device 'usb:0'"):
        load_model(models["uint8"], device="usb:0")


def test_unknown_custom_op_is_a_clear_error(tmp_path: Path) -> None:
    graph = Graph.empty()
    x = graph.add_tensor("input", [1, 4], np.float32)
    y = graph.add_tensor("output", [1, 4], np.float32)
    graph.add_operator("my-secret-op", [x], [y])
    graph.set_inputs([x])
    graph.set_outputs([y])
    path = write_model(tmp_path / "custom.tflite", graph.to_bytes())
    with pytest.raises(WorkbenchError, match=r"cannot load model.*my-secret-op"):
        load_model(path)


def test_coral_invalid_model_is_a_clear_error() -> None:
    path = shared_file(CORAL / "invalid_model_invoking_error.tflite")
    with pytest.raises(WorkbenchError, match="fake-op-double"):
        load_model(path)


def test_builtin_op_options_survive_for_the_interpreter(tmp_path: Path) -> None:
    # A softmax whose beta was lost would be all-equal scores; check a real distribution.
    graph = Graph.empty()
    x = graph.add_tensor("x", [1, 3], np.float32)
    y = graph.add_tensor("y", [1, 3], np.float32)
    options = fb.SoftmaxOptionsT()
    options.beta = 1.0
    graph.add_operator(fb.BuiltinOperator.SOFTMAX, [x], [y], options)
    graph.set_inputs([x])
    graph.set_outputs([y])
    model = load_model(write_model(tmp_path / "s.tflite", graph.to_bytes()))
    out = model.run(np.array([[0.0, 1.0, 2.0]], np.float32))
    np.testing.assert_allclose(out, [[0.09003, 0.24473, 0.66524]], atol=1e-4)
