"""Classification metrics in numpy: per-class precision, recall, F1 and the confusion matrix.

They give the same numbers as scikit-learn's `precision_recall_fscore_support(...,
zero_division=0)` and `confusion_matrix` (a test checks this), written out because
importing scikit-learn costs 1.5-5 s on a small board, more than the whole evaluation of a
warm run.
"""

from __future__ import annotations

import numpy as np


def confusion(truth: np.ndarray, predicted: np.ndarray, labels: list[int]) -> np.ndarray:
    """Counts [len(labels), len(labels)]: row = true label, column = predicted label.

    Pairs whose true or predicted label is not in `labels` are not counted.
    """
    position = {label: i for i, label in enumerate(labels)}
    rows = np.array([position.get(int(t), -1) for t in truth], np.int64)
    cols = np.array([position.get(int(p), -1) for p in predicted], np.int64)
    both = (rows >= 0) & (cols >= 0)
    n = len(labels)
    flat = np.bincount(rows[both] * n + cols[both], minlength=n * n)
    return flat.reshape(n, n)


def per_class(
    truth: np.ndarray, predicted: np.ndarray, labels: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, support) for each of `labels`; 0 where undefined.

    Example:
    >>> p, r, f1, n = per_class(np.array([0, 0, 1]), np.array([0, 1, 1]), [0, 1])
    >>> p.tolist(), r.tolist(), n.tolist()
    ([1.0, 0.5], [0.5, 1.0], [2, 1])
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    ids = np.asarray(labels)[:, None]
    hits = np.sum((truth == ids) & (predicted == ids), axis=1).astype(np.float64)
    support = np.sum(truth == ids, axis=1)
    claimed = np.sum(predicted == ids, axis=1)
    precision = np.divide(hits, claimed, out=np.zeros_like(hits), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    both = (support + claimed).astype(np.float64)
    f1 = np.divide(2 * hits, both, out=np.zeros_like(hits), where=both > 0)
    return precision, recall, f1, support
