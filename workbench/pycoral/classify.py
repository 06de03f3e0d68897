"""Reading classification results (pycoral.adapters.classify).

Same names, defaults and results as pycoral: `get_classes` returns every class, best first,
unless `top_k` says fewer, and keeps those with `score >= score_threshold`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


class Class(NamedTuple):
    """One classification result, as pycoral's namedtuple `Class(id, score)`."""

    id: int
    score: float


def num_classes(interpreter: Any) -> int:
    """Number of values in the first output (for an extractor: the embedding size)."""
    return int(np.prod(interpreter.get_output_details()[0]["shape"]))


def get_scores(interpreter: Any) -> np.ndarray:
    """The first output, flattened; dequantized (float64) when the model's output is 8-bit.

    A float output is returned as a copy in its own dtype, as pycoral does: the interpreter
    reuses its output buffer, so a view would change under the caller at the next invoke.
    """
    details = interpreter.get_output_details()[0]
    output = np.array(interpreter.tensor(details["index"])()).reshape(-1)
    if np.issubdtype(details["dtype"], np.integer):
        scale, zero_point = details["quantization"]
        # int64 first: uint8 - zero_point would wrap around.
        return scale * (output.astype(np.int64) - zero_point)
    return output


def get_classes_from_scores(
    scores: Any,
    top_k: float | None = math.inf,
    score_threshold: float = -math.inf,
) -> list[Class]:
    """The `top_k` best classes with `score >= score_threshold`, best first.

    `top_k` defaults to every class (pycoral's `float('inf')`; None means the same). Equal
    scores are ordered by class id, so results are reproducible (pycoral leaves ties in
    numpy's partition order). `top_k` of 0 or less gives no class.
    """
    scores = np.asarray(scores).reshape(-1)
    count = len(scores) if top_k is None else int(min(top_k, len(scores)))
    if count <= 0:
        return []
    # Sorted on float64 copies: negating unsigned scores would wrap around.
    order = np.argsort(-scores.astype(np.float64), kind="stable")[:count]
    return [Class(int(i), float(scores[i])) for i in order if scores[i] >= score_threshold]


def get_classes(
    interpreter: Any,
    top_k: float | None = math.inf,
    score_threshold: float = -math.inf,
) -> list[Class]:
    """The classes of the interpreter's last result (see `get_classes_from_scores`)."""
    return get_classes_from_scores(get_scores(interpreter), top_k, score_threshold)
