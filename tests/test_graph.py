from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.builders import CORAL, shared_file, tiny_extractor
from workbench.core.errors import WorkbenchError
from workbench.extract.runtime import load_model
from workbench.tflite.graph import BUFFER_ALIGNMENT, Graph, Quant
from workbench.tflite.schema import fb


def constant_offsets(data: bytes) -> list[int]:
    """Byte offsets of every non-empty buffer's data in a packed model."""
    model = fb.Model.GetRootAs(data, 0)
    offsets = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            offsets.append(buffer._tab.Vector(buffer._tab.Offset(4)))
    return offsets


def test_round_trip_keeps_every_operator_tensor_and_buffer() -> None:
    original = tiny_extractor("uint8")
    graph = Graph.from_bytes(original)
    again = Graph.from_bytes(graph.to_bytes())
    assert again.op_names() == ["CONV_2D", "AVERAGE_POOL_2D"]
    assert [again.shape(i) for i in range(len(again.tensors))] == [
        graph.shape(i) for i in range(len(graph.tensors))
    ]
    kernel = graph.operators[0].inputs[1]
    np.testing.assert_array_equal(again.constant(kernel), graph.constant(kernel))
    assert again.quant(kernel) == graph.quant(kernel)


def test_constant_buffers_are_16_byte_aligned() -> None:
    graph = Graph.from_bytes(tiny_extractor("uint8"))
    graph.add_tensor("odd", [3], np.uint8, data=np.arange(3, dtype=np.uint8))
    offsets = constant_offsets(graph.to_bytes())
    assert len(offsets) >= 3
    assert all(offset % BUFFER_ALIGNMENT == 0 for offset in offsets)


def test_metadata_and_description_round_trip() -> None:
    graph = Graph.from_bytes(tiny_extractor("uint8"))
    graph.set_metadata("workbench", b'{"a": 1}')
    graph.set_metadata("workbench", b'{"a": 2}')
    graph.set_description("0 1.5\n")
    again = Graph.from_bytes(graph.to_bytes())
    assert again.metadata("workbench") == b'{"a": 2}'
    assert again.metadata("missing") is None
    assert again.description() == "0 1.5\n"


def test_opcode_is_shared_and_high_codes_use_the_new_field() -> None:
    graph = Graph.empty()
    first = graph.opcode_index(fb.BuiltinOperator.CONV_2D)
    assert graph.opcode_index(fb.BuiltinOperator.CONV_2D) == first
    high = graph.opcode_index(fb.BuiltinOperator.SQUARED_DIFFERENCE)
    opcode = graph.model.operatorCodes[high]
    assert opcode.builtinCode == fb.BuiltinOperator.SQUARED_DIFFERENCE
    # Codes above 127 only fit the new field; the old byte holds the placeholder.
    gelu = graph.opcode_index(fb.BuiltinOperator.GELU)
    assert graph.model.operatorCodes[gelu].deprecatedBuiltinCode == 127
    custom = graph.opcode_index("edgetpu-custom-op")
    assert graph.opcode_index("edgetpu-custom-op") == custom != first


def test_add_tensor_checks_data_size() -> None:
    graph = Graph.empty()
    with pytest.raises(ValueError, match="values for shape"):
        graph.add_tensor("x", [2, 2], np.float32, data=np.zeros(3))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "no TFL3"), (b"hello world, not a model", "no TFL3"), (None, "damaged or truncated")],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_extractor("uint8")[:100] if content is None else content)
    with pytest.raises(WorkbenchError, match=message):
        Graph.load(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="model not found"):
        Graph.load(tmp_path / "none.tflite")
    with pytest.raises(WorkbenchError, match="directory"):
        Graph.load(tmp_path)


def test_edgetpu_model_round_trips_byte_for_byte_in_its_custom_op() -> None:
    path = shared_file(CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite")
    graph = Graph.load(path)
    assert graph.op_names() == ["edgetpu-custom-op"] and graph.has_edgetpu_op()
    again = Graph.from_bytes(graph.to_bytes())
    np.testing.assert_array_equal(
        np.asarray(again.operators[0].customOptions), np.asarray(graph.operators[0].customOptions)
    )


def test_coral_extractor_runs_identically_after_a_round_trip(tmp_path: Path) -> None:
    path = shared_file(CORAL / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(Graph.load(path).to_bytes())
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_model(path).run(x), load_model(copy).run(x))


def test_quant_of_float_tensor_is_none() -> None:
    graph = Graph.from_bytes(tiny_extractor("float32"))
    assert graph.quant(graph.inputs[0]) is None
    graph_q = Graph.from_bytes(tiny_extractor("uint8"))
    assert graph_q.quant(graph_q.inputs[0]) == Quant.per_tensor(1 / 128, 128)
