"""Coral's imprinting model format: what makes a model one, and where its parts are.

pycoral's ImprintingEngine accepts a model whose graph has one L2_NORMALIZATION and ends
CONV_2D -> MUL -> RESHAPE -> SOFTMAX, the L2Norm feeding the convolution (a QUANTIZE may sit
between them), the L2Norm output shaped [1, 1, 1, D], the bias zero point within [0, 255], the
softmax output [1, C] and the graph's only output. Per-class training state lives in the model
description as `<class id> <norm>` lines. These are the checks of libcoral's
ValidateImprintingModel, restated so workbench can check its own exports and read Coral's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.heads.imprint import ImprintedClasses, l2_normalize
from workbench.model.surgery import cut_at
from workbench.tflite.graph import Graph
from workbench.tflite.quant import dequantize, representable

TAIL = ("CONV_2D", "MUL", "RESHAPE", "SOFTMAX")


@dataclass(frozen=True)
class ImprintingLayout:
    """Operator and tensor indices of a valid imprinting model."""

    l2norm_op: int
    conv_op: int
    embedding: int  # the L2Norm output: what pycoral's extractor returns
    kernel: int
    bias: int
    scale_factor: int
    scores: int
    embedding_dim: int
    num_classes: int


def imprinting_problems(graph: Graph) -> list[str]:
    """Why the model is not in Coral's imprinting format (empty when it is)."""
    names = graph.op_names()
    problems = []
    l2norms = [i for i, name in enumerate(names) if name == "L2_NORMALIZATION"]
    if len(l2norms) != 1:
        problems.append(f"needs exactly one L2_NORMALIZATION operator, found {len(l2norms)}")
    if tuple(names[-4:]) != TAIL:
        problems.append(f"the last 4 operators must be {', '.join(TAIL)}; got {names[-4:]}")
    if problems:
        return problems
    l2norm, conv = l2norms[0], len(names) - 4
    between = names[l2norm + 1 : conv]
    if between not in ([], ["QUANTIZE"]):
        problems.append(f"the L2Norm must feed the last CONV_2D directly, not via {between}")
    embedding = int(graph.operators[l2norm].outputs[0])
    shape = graph.shape(embedding)
    if len(shape) != 4 or shape[:3] != (1, 1, 1):
        problems.append(f"the L2Norm output must be [1, 1, 1, D], got {list(shape)}")
    conv_inputs = [int(t) for t in graph.operators[conv].inputs]
    if len(conv_inputs) < 3:
        problems.append("the last CONV_2D has no bias")
    else:
        bias_quant = graph.quant(conv_inputs[2])
        zero_point = bias_quant.zero_point[0] if bias_quant else 0  # a float bias: none
        if zero_point is None or not 0 <= zero_point <= 255:
            problems.append(f"the CONV_2D bias zero point must be in [0, 255], got {zero_point}")
    scores = int(graph.operators[-1].outputs[0])
    scores_shape = graph.shape(scores)
    if len(scores_shape) != 2 or scores_shape[0] != 1:
        problems.append(f"the Softmax output must be [1, C], got {list(scores_shape)}")
    if graph.outputs != [scores]:
        problems.append("the Softmax output must be the graph's only output")
    return problems


def imprinting_layout(graph: Graph) -> ImprintingLayout | None:
    """The parts of a Coral-format imprinting model, or None if it is not one."""
    if imprinting_problems(graph):
        return None
    names = graph.op_names()
    l2norm = names.index("L2_NORMALIZATION")
    conv = len(names) - 4
    conv_inputs = [int(t) for t in graph.operators[conv].inputs]
    mul_inputs = [int(t) for t in graph.operators[conv + 1].inputs]
    embedding = int(graph.operators[l2norm].outputs[0])
    kernel = conv_inputs[1]
    return ImprintingLayout(
        l2norm_op=l2norm,
        conv_op=conv,
        embedding=embedding,
        kernel=kernel,
        bias=conv_inputs[2],
        scale_factor=mul_inputs[1],
        scores=int(graph.operators[-1].outputs[0]),
        embedding_dim=graph.shape(embedding)[-1],
        num_classes=graph.shape(kernel)[0],
    )


def parse_training_state(description: str) -> dict[int, float]:
    """Coral's description lines `<class id> <norm>`; anything else means no state."""
    tokens = description.split()
    if len(tokens) % 2:
        return {}
    state: dict[int, float] = {}
    for class_id, norm in zip(tokens[::2], tokens[1::2], strict=True):
        try:
            state[int(class_id)] = float(norm)
        except ValueError:
            return {}
    return state


def training_state_text(norms: np.ndarray, trainable: np.ndarray) -> str:
    """The description Coral writes: one `<class id> <norm>` line per imprinted class."""
    return "".join(f"{i} {norms[i]:f}\n" for i in range(len(norms)) if trainable[i])


@dataclass
class ImprintingModel:
    """What an imprinting model holds: its extractor (up to the L2Norm) and its classes."""

    extractor: Graph  # ends at the L2Norm output [1, 1, 1, D]
    embedding: int  # the L2Norm output in `extractor`
    classes: ImprintedClasses
    scale_factor: float
    cosine_range: tuple[float, float]  # the cosines its 8-bit layer resolves ([-1, 1] if float)


def read_imprinting_model(graph: Graph) -> ImprintingModel:
    """Split a Coral-format imprinting model into its extractor and its class state.

    Classes listed in the description's training state were trained by imprinting: their
    sums are recovered as weight x norm, so training can go on where it stopped. Others are
    kept with their weights but cannot be retrained (as in libcoral).
    """
    problems = imprinting_problems(graph)
    if problems:
        raise WorkbenchError("not an imprinting model (Coral format): " + "; ".join(problems))
    layout = imprinting_layout(graph)
    assert layout is not None
    kernel = _dequantized(graph, layout.kernel).reshape(layout.num_classes, -1)
    weights = l2_normalize(kernel)
    state = parse_training_state(graph.description())
    trainable = np.array([c in state for c in range(layout.num_classes)], bool)
    norms = np.array([state.get(c, 1.0) for c in range(layout.num_classes)])
    scale = float(np.ravel(_dequantized(graph, layout.scale_factor))[0])
    extractor = cut_at(graph, layout.embedding, flatten=False)
    cosine_range = _cosine_range(graph, layout)
    return ImprintingModel(
        extractor=extractor,
        embedding=extractor.outputs[0],
        classes=ImprintedClasses(
            weights * norms[:, None], trainable, np.zeros(layout.num_classes, np.int64)
        ),
        scale_factor=scale,
        cosine_range=cosine_range,
    )


def _cosine_range(graph: Graph, layout: ImprintingLayout) -> tuple[float, float]:
    """The window of cosines the model's cosine layer resolves.

    Its output spans the 8-bit range of its quantization, shifted by its (shared) bias:
    workbench stores the window's bottom as a bias of -lo over [0, hi - lo]; Coral's models
    have no bias and [-1, 1].
    """
    output = int(graph.operators[layout.conv_op].outputs[0])
    quant = graph.quant(output)
    if quant is None or graph.dtype(output) == np.float32:
        return -1.0, 1.0
    lo, hi = representable(quant, graph.dtype(output))
    shift = float(np.mean(_dequantized(graph, layout.bias)))
    return lo - shift, hi - shift


def _dequantized(graph: Graph, tensor: int) -> np.ndarray:
    values = graph.constant(tensor)
    if values is None:
        raise WorkbenchError(f"tensor {graph.tensor_name(tensor)!r} should be a constant")
    quant = graph.quant(tensor)
    if quant is None or graph.dtype(tensor) == np.float32:
        return values.astype(np.float64)
    return dequantize(values, quant)
