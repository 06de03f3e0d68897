"""Cut models apart: a classifier into an embedding extractor, an imprinting model into its parts.

A pretrained classifier already holds an embedding extractor: everything up to the input of its
final logits layer. Cutting there (and dropping the logits layer's weights) gives an extractor
that any trainer can use, with no TensorFlow and no compiler. The same cut on an imprinting
model (at its L2Norm output) gives the extractor pycoral's ImprintingEngine hands out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core import __version__
from workbench.core.errors import WorkbenchError
from workbench.core.outputs import check_outputs, remove_stale, write_files_atomically
from workbench.extract.runtime import load_model
from workbench.model.export import METADATA_NAME
from workbench.tflite.graph import EDGETPU_CUSTOM_CODE, Graph
from workbench.tflite.heads import PREFIX
from workbench.tflite.metadata import ModelMetadata, graph_with_standard_metadata
from workbench.tflite.schema import fb

LOGITS_LAYERS = ("FULLY_CONNECTED", "CONV_2D")
# Ops between the logits layer and a classifier's output that only reshape, requantize or
# normalize the logits.
AFTER_LOGITS = ("RESHAPE", "SQUEEZE", "QUANTIZE", "DEQUANTIZE", "SOFTMAX", "LOGISTIC")


def copy_graph(graph: Graph) -> Graph:
    return Graph.from_bytes(graph.to_bytes())


def find_embedding(graph: Graph) -> int:
    """The input tensor of the final logits layer, found by walking back from the output."""
    if len(graph.outputs) != 1:
        raise WorkbenchError(
            f"the model has {len(graph.outputs)} outputs; name the embedding with --tensor"
        )
    tensor = graph.outputs[0]
    seen: list[str] = []
    while True:
        producer = graph.producer(tensor)
        if producer is None:
            raise WorkbenchError(
                "no logits layer (FULLY_CONNECTED or CONV_2D) before the output; "
                "name the embedding with --tensor"
            )
        op = graph.operators[producer]
        name = graph.op_name(op)
        if name == EDGETPU_CUSTOM_CODE:
            raise WorkbenchError(
                "the logits layer is inside the Edge TPU custom op, where it cannot be cut; "
                "cut the CPU build of the model and compile the extractor again "
                "(edgetpu_compiler)"
            )
        if name in LOGITS_LAYERS:
            return int(op.inputs[0])
        if name not in AFTER_LOGITS:
            path = " <- ".join([*seen, name])
            raise WorkbenchError(
                f"cannot tell where the logits layer is (output <- {path}); "
                "name the embedding with --tensor"
            )
        seen.append(name)
        tensor = int(op.inputs[0])


def tensor_by_name(graph: Graph, name: str) -> int:
    matches = [i for i in range(len(graph.tensors)) if graph.tensor_name(i) == name]
    if not matches:
        near = [
            graph.tensor_name(i) for i in range(len(graph.tensors)) if name in graph.tensor_name(i)
        ]
        hint = f"; names containing it: {', '.join(near[:5])}" if near else ""
        raise WorkbenchError(f"no tensor named {name!r} in the model{hint}")
    return matches[0]


def cut_at(graph: Graph, tensor: int, flatten: bool = True) -> Graph:
    """A copy of the graph whose only output is `tensor` ([1, D] when `flatten`), pruned."""
    graph = copy_graph(graph)
    if tensor in graph.inputs:
        raise WorkbenchError("cannot cut at the model's input: nothing would be left")
    if graph.producer(tensor) is None:
        raise WorkbenchError(
            f"tensor {graph.tensor_name(tensor)!r} is a constant, not an activation"
        )
    shape = graph.shape(tensor)
    if not shape or shape[0] != 1:
        raise WorkbenchError(f"the embedding must have batch size 1, it is {list(shape)}")
    output = tensor
    width = int(np.prod(shape[1:]))
    if flatten and shape != (1, width):
        shape_tensor = graph.add_tensor(
            f"{PREFIX}/embedding/shape", [2], np.int32, data=np.asarray([1, width], np.int32)
        )
        output = graph.add_tensor(
            f"{PREFIX}/embedding", [1, width], graph.dtype(tensor), graph.quant(tensor)
        )
        options = fb.ReshapeOptionsT()
        options.newShape = [1, width]
        graph.add_operator(fb.BuiltinOperator.RESHAPE, [tensor, shape_tensor], [output], options)
    graph.set_outputs([output])
    graph.prune()
    graph.model.signatureDefs = _single_signature(graph)
    return graph


def _single_signature(graph: Graph) -> list[fb.SignatureDefT] | None:
    """Keep a serving signature consistent with the new output (or drop a stale one)."""
    signatures = graph.model.signatureDefs or []
    for signature in signatures:
        entries = signature.outputs or []
        if len(entries) != 1 or int(entries[0].tensorIndex) != graph.outputs[0]:
            entry = fb.TensorMapT()
            entry.name = "embedding"
            entry.tensorIndex = graph.outputs[0]
            signature.outputs = [entry]
    return signatures or None


@dataclass(frozen=True)
class CutExtractor:
    graph: Graph
    embedding_name: str  # the tensor cut at, in the source model
    embedding_dim: int
    ops_kept: int  # of the source model's operators


def cut_extractor(graph: Graph, tensor_name: str | None = None) -> CutExtractor:
    """The extractor inside a classifier: cut at `tensor_name` or the logits layer's input."""
    tensor = tensor_by_name(graph, tensor_name) if tensor_name else find_embedding(graph)
    cut = cut_at(graph, tensor)
    added = 1 if cut.tensor_name(cut.outputs[0]) == f"{PREFIX}/embedding" else 0
    cut.set_description(f"embedding extractor cut at {graph.tensor_name(tensor)}")
    cut.remove_metadata(METADATA_NAME)  # the classifier's training record no longer applies
    return CutExtractor(
        cut,
        graph.tensor_name(tensor),
        int(cut.shape(cut.outputs[0])[-1]),
        len(cut.operators) - added,
    )


def write_extractor(
    classifier: str | Path, output: str | Path | None = None, tensor_name: str | None = None
) -> dict[str, Any]:
    """Cut `classifier` at its embedding and write the extractor (checked, atomically).

    The cut model is loaded and run by the interpreter before it is written. `output`
    defaults to `<classifier name>_extractor.tflite` in the current folder.
    """
    classifier = Path(classifier)
    target = Path(output) if output is not None else Path(f"{classifier.stem}_extractor.tflite")
    check_outputs({"model": target}, inputs=[classifier])
    remove_stale([target])
    source = Graph.load(classifier)
    cut = cut_extractor(source, tensor_name)
    described = ModelMetadata(
        name="workbench embedding extractor",
        description=f"{source.description().strip() or classifier.name} cut at "
        f"{cut.embedding_name} by workbench: an embedding extractor for imprint and backprop.",
        version=__version__,
        output="embedding",
    )
    # The classifier's own metadata (its labels, its probability output) no longer applies.
    data = graph_with_standard_metadata(cut.graph, described)
    checked = load_model(target, content=data)
    checked.run(np.zeros(checked.input.shape, checked.input.dtype))
    write_files_atomically({target: data})
    return {
        "extractor": str(target),
        "cut_at_tensor": cut.embedding_name,
        "embedding_dim": cut.embedding_dim,
        "output_dtype": str(checked.output.dtype),
        "ops_kept": cut.ops_kept,
        "ops_dropped": len(source.operators) - cut.ops_kept,
        "bytes": len(data),
    }
