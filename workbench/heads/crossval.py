"""Stratified folds of the training images, for choices that must hold for unseen images.

Both trainers choose settings (how strongly to whiten, how strongly to regularize) and the
8-bit ranges of the exported layers from images a fitted candidate did not see. The folds
are drawn per class, so every fold holds about the same share of every class; a class with
fewer images than folds appears in only some of them.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FOLDS = 5


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row: each class shuffled, then dealt out in turn."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        assignment[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return assignment


def has_own_class(labels: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """Rows whose class keeps at least one image outside the row's fold.

    Only these rows say how well a candidate fitted without them predicts them; for the
    others the candidate never saw their class at all.
    """
    labels = np.asarray(labels)
    pairs = {(int(c), int(f)) for c, f in zip(labels, fold_of, strict=True)}
    folds_of_class: dict[int, set[int]] = {}
    for c, f in pairs:
        folds_of_class.setdefault(c, set()).add(f)
    return np.array(
        [len(folds_of_class[int(c)] - {int(f)}) > 0 for c, f in zip(labels, fold_of, strict=True)],
        bool,
    )
