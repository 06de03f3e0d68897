"""Classification metrics in numpy: per-class precision, recall, F1 and the confusion matrix.

They give the same numbers as scikit-learn's `precision_recall_fscore_support(...,
zero_division=0)` and `confusion_matrix` (a test checks this), written out because
importing scikit-learn costs 1.5-5 s on a small board, more than the whole evaluation of a
warm run. Time and memory grow with the images plus the classes, never with their product
or the classes squared: a report of thousands of classes is as quick as one of ten.
"""

from __future__ import annotations

import numpy as np


def confusion(truth: np.ndarray, predicted: np.ndarray, labels: list[int]) -> np.ndarray:
    """Counts [len(labels), len(labels)]: row = true label, column = predicted label.

    Pairs whose true or predicted label is not in `labels` are not counted.
    """
    n = len(labels)
    matrix = np.zeros((n, n), np.int64)
    cells = confusion_cells(truth, predicted, labels)
    matrix[cells[:, 0], cells[:, 1]] = cells[:, 2]
    return matrix


def confusion_cells(truth: np.ndarray, predicted: np.ndarray, labels: list[int]) -> np.ndarray:
    """The nonzero cells of `confusion` as rows [row, column, count], row by row.

    Pairs whose true or predicted label is not in `labels` are not counted.
    """
    position = {label: i for i, label in enumerate(labels)}
    rows = np.array([position.get(int(t), -1) for t in truth], np.int64)
    cols = np.array([position.get(int(p), -1) for p in predicted], np.int64)
    both = (rows >= 0) & (cols >= 0)
    pairs, counts = np.unique(rows[both] * len(labels) + cols[both], return_counts=True)
    return np.stack([pairs // max(len(labels), 1), pairs % max(len(labels), 1), counts], axis=1)


def per_class(
    truth: np.ndarray, predicted: np.ndarray, labels: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, support) for each of `labels`; 0 where undefined.

    Example:
    >>> p, r, f1, n = per_class(np.array([0, 0, 1]), np.array([0, 1, 1]), [0, 1])
    >>> p.tolist(), r.tolist(), n.tolist()
    ([1.0, 0.5], [0.5, 1.0], [2, 1])
    """
    truth, predicted = np.asarray(truth).reshape(-1), np.asarray(predicted).reshape(-1)
    position = {int(label): i for i, label in enumerate(labels)}
    n = len(labels)

    def positions(values: np.ndarray) -> np.ndarray:
        return np.array([position.get(int(v), n) for v in values], np.int64)  # n: not a label

    rows, cols = positions(truth), positions(predicted)
    support = np.bincount(rows, minlength=n + 1)[:n]
    claimed = np.bincount(cols, minlength=n + 1)[:n]
    hits = np.bincount(rows[rows == cols], minlength=n + 1)[:n].astype(np.float64)
    precision = np.divide(hits, claimed, out=np.zeros_like(hits), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = (support + claimed).astype(np.float64)
    f1 = np.divide(2 * hits, both, out=np.zeros_like(hits), where=both > 0)
    return precision, recall, f1, support
