"""Reading classification results (pycoral.adapters.classify)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Class(NamedTuple):
    id: int
    score: float


def num_classes(interpreter: Any) -> int:
    """Number of values in the first output (for an extractor: the embedding size)."""
    return int(np.prod(interpreter.get_output_details()[0]["shape"]))


def get_scores(interpreter: Any) -> np.ndarray:
    """The first output, flattened and dequantized to float."""
    details = interpreter.get_output_details()[0]
    scores = np.array(interpreter.tensor(details["index"])()).reshape(-1)
    if np.issubdtype(details["dtype"], np.integer):
        scale, zero_point = details["quantization"]
        return scale * (scores.astype(np.int64) - zero_point)
    return scores.astype(np.float64)


def get_classes_from_scores(
    scores: np.ndarray, top_k: int = 1, score_threshold: float = -float("inf")
) -> list[Class]:
    """The top_k classes above the threshold, best first."""
    scores = np.asarray(scores).reshape(-1)
    order = np.argsort(-scores, kind="stable")[: max(top_k, 0)]
    return [Class(int(i), float(scores[i])) for i in order if scores[i] > score_threshold]


def get_classes(
    interpreter: Any, top_k: int = 1, score_threshold: float = -float("inf")
) -> list[Class]:
    return get_classes_from_scores(get_scores(interpreter), top_k, score_threshold)
