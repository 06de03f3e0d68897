"""Run an exported model's head alone on extractor outputs already computed.

A retrained model is the extractor, unchanged, plus the layers workbench appended. Cut at the
extractor's output tensor, the appended part is a small model of its own: same tensors, same
quantization, same constants, so on the extractor's raw (quantized) outputs it computes
exactly what the whole model computes on the images, without decoding or running the
extractor again.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.extract.runtime import LoadedModel, TensorSpec, load_model
from workbench.tflite.graph import Graph


def head_graph(graph: Graph, embedding_tensor: int) -> Graph:
    """The operators after `embedding_tensor`, as a model whose input is that tensor.

    `graph` is left as it is. Only what pruning rewrites is copied (the operator and tensor
    records, the lists); constants are shared, so no extractor weights are copied.
    """
    producer = graph.producer(embedding_tensor)
    if producer is None:
        raise WorkbenchError("the embedding tensor is not produced by the extractor")
    if producer + 1 >= len(graph.operators):
        raise WorkbenchError("the model has no layers after its embedding tensor")
    model = copy.copy(graph.model)
    model.signatureDefs = model.metadata = model.metadataBuffer = None
    model.buffers = list(graph.model.buffers)
    subgraph = copy.copy(graph.subgraph)
    subgraph.tensors = [copy.copy(t) for t in graph.tensors]
    subgraph.operators = [copy.copy(op) for op in graph.operators[producer + 1 :]]
    model.subgraphs = [subgraph]
    head = Graph(model)
    head.set_inputs([embedding_tensor])
    head.prune()
    return head


def load_head(graph: Graph, embedding_tensor: int, name: str | Path = "head") -> LoadedModel:
    """The head as a single-threaded interpreter (it is tiny; threads only add overhead)."""
    data = head_graph(graph, embedding_tensor).to_bytes()
    return load_model(Path(name), num_threads=1, content=data)


def quantize_outputs(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Stored (dequantized float32) extractor outputs back to the tensor's raw integers.

    The store holds (q - zero_point) * scale computed in float32; dividing back and rounding
    recovers q exactly for every 8-bit value.
    """
    values = np.asarray(values)
    if not spec.quantized:
        return values.astype(spec.dtype)
    q = np.round(values.astype(np.float64) / spec.scale) + spec.zero_point
    info = np.iinfo(spec.dtype)
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def run_head(head: LoadedModel, embeddings: np.ndarray) -> np.ndarray:
    """The head's raw output for each row of stored extractor outputs: [N, C]."""
    raw = quantize_outputs(embeddings, head.input)
    shape = head.input.shape
    outputs = [head.run(row.reshape(shape)).reshape(-1).copy() for row in raw]
    width = int(np.prod(head.output.shape[1:]))
    return np.stack(outputs) if outputs else np.zeros((0, width), head.output.dtype)


# Held-out images the whole exported model is run on to confirm the head's numbers.
SAMPLE_SIZE = 16
# Of those, up to this many are images the head misclassified (where a difference would matter).
SAMPLE_MISTAKES = 4


def head_scores(graph: Graph, embedding_tensor: int, embeddings: np.ndarray) -> np.ndarray:
    """The exported model's output scores (dequantized, [N, C]) computed by its head alone."""
    head = load_head(graph, embedding_tensor)
    raw = run_head(head, embeddings)
    return head.output.dequantize(raw).reshape(len(raw), -1).astype(np.float32)


def pick_sample(wrong: np.ndarray, seed: int, size: int = SAMPLE_SIZE) -> np.ndarray:
    """Row indices to check on the whole model: seeded, with some misclassified rows if any.

    `wrong` marks the rows the head got wrong; a difference between head and whole model
    there (or at a near tie) is what would change the reported figures.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(wrong))
    mistakes = rows[np.asarray(wrong, bool)]
    chosen = rng.permutation(mistakes)[: min(SAMPLE_MISTAKES, size)]
    rest = rng.permutation(np.setdiff1d(rows, chosen))[: size - len(chosen)]
    return np.sort(np.concatenate([chosen, rest]).astype(np.int64))


def same_as_whole_model(expected: np.ndarray, whole: np.ndarray) -> bool:
    """True when the whole model's scores equal the head's bit for bit."""
    return bool(np.array_equal(expected, whole))  # False for different shapes too
