"""Numeric failures inside a fit fall back to a well-defined alternative, never a traceback.

On aarch64 an OpenBLAS kernel chosen for the wrong CPU made `np.linalg.eigh` raise
"Eigenvalues did not converge" on scatter matrices that decompose fine elsewhere, and
`workbench imprint` ended with a traceback. Here the failure is forced by replacing numpy's
eigh for the length of a test: always failing (no whitening can be made), or failing on
singular matrices only (the regularized retry succeeds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from pathlib import Path

import numpy as np
import pytest

from tests.builders import (
    assert_ok,
    clustered_features,
    invoke,
    tiny_extractor,
    warnings_of,
    write_model,
)
from workbench.core.options import ImprintOptions
from workbench.core.progress import Fallback, fallbacks
from workbench.heads.imprint_head import BaseState, ImprintingHead
from workbench.heads.whitening import DecompositionError, symmetric_eigen

REAL_EIGH = np.linalg.eigh
NOT_CONVERGED = "Eigenvalues did not converge"


def never_converges(matrix: np.ndarray, *args: object, **kwargs: object) -> object:
    raise np.linalg.LinAlgError(NOT_CONVERGED)


def fails_when_singular(matrix: np.ndarray, *args: object, **kwargs: object) -> object:
    """As LAPACK at its worst: gives up on rank-deficient matrices (a Gram form's are)."""
    values, vectors = REAL_EIGH(matrix, *args, **kwargs)
    if values.min() <= 1e-9 * max(float(values.max()), 1e-300):
        raise np.linalg.LinAlgError(NOT_CONVERGED)
    return values, vectors


@pytest.fixture
def broken_eigh(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[..., object]], None]:
    def use(replacement: Callable[..., object]) -> None:
        monkeypatch.setattr(np.linalg, "eigh", replacement)

    return use


def test_a_singular_matrix_is_decomposed_regularized(broken_eigh: Callable) -> None:
    rows = np.random.default_rng(0).normal(size=(20, 50))
    gram = rows.T @ rows / 20  # rank 20 of 50
    expected = REAL_EIGH(gram)[0]
    broken_eigh(fails_when_singular)
    with pytest.warns(Fallback, match="regularized"):
        values, vectors = symmetric_eigen(gram)
    np.testing.assert_allclose(values, expected, atol=1e-9 * expected.max())
    np.testing.assert_allclose((vectors * values) @ vectors.T, gram, atol=1e-9 * expected.max())


def test_a_decomposition_that_fails_twice_raises(broken_eigh: Callable) -> None:
    broken_eigh(never_converges)
    with pytest.raises(DecompositionError, match=NOT_CONVERGED):
        symmetric_eigen(np.eye(4))
    with pytest.raises(DecompositionError, match="non-finite"):
        symmetric_eigen(np.full((3, 3), np.nan))


def test_imprinting_without_a_decomposition_is_plain_imprinting(broken_eigh: Callable) -> None:
    x, y = clustered_features(120, 16, 4, seed=3)
    x = np.abs(x)
    broken_eigh(never_converges)
    with fallbacks() as used:
        head = ImprintingHead.fit(x, y, 4, ImprintOptions(whiten=True))
    assert head.whitening is None and head.choice is not None
    assert "whitening failed" in head.choice.reason
    assert len(used) == 1 and used[0].startswith("whitening skipped:")
    assert np.mean(head.scores(x).argmax(axis=1) == y) > 0.9


def test_continuing_keeps_the_bases_whitening_when_pooling_fails(broken_eigh: Callable) -> None:
    x, y = clustered_features(160, 16, 4, seed=5)
    first = ImprintingHead.fit(x[y < 3], y[y < 3], 3, ImprintOptions(whiten=1.0))
    assert first.whitening is not None
    base = BaseState(first.classes, first.cosine_range, first.whitening, first.value_range)
    broken_eigh(never_converges)
    with pytest.warns(Fallback, match="kept as the base model had it"):
        more = ImprintingHead.fit(x[y == 3], y[y == 3], 4, base=base)
    assert more.whitening is first.whitening and more.classes.num_classes == 4
    assert np.mean(more.scores(x).argmax(axis=1) == y) > 0.9


@pytest.mark.parametrize(
    ("trainer", "eigh", "expected"),
    [
        ("imprint", never_converges, "whitening skipped: the eigendecomposition failed"),
        ("imprint", fails_when_singular, "used it regularized"),
        ("backprop", never_converges, "whitening for SGD skipped"),
    ],
)
def test_the_cli_writes_a_model_warns_once_and_reports_the_path(
    broken_eigh: Callable,
    five_classes: Path,
    tmp_path: Path,
    trainer: str,
    eigh: Callable[..., object],
    expected: str,
) -> None:
    out = tmp_path / "out.tflite"
    # 128-d embeddings of 60 training images: the decompositions take the Gram form, singular
    wide = write_model(tmp_path / "wide.tflite", tiny_extractor("uint8", channels=128))
    broken_eigh(eigh)
    outcome = invoke(trainer, five_classes, "-e", wide, "-o", out, "--json")
    assert_ok(outcome)
    warned = [w for w in warnings_of(outcome) if expected in w]
    assert len(warned) == 1, outcome.describe()
    message = warned[0][len("warning: ") :]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert [m for m in report["fallbacks"] if expected in m] == [message]
    assert "Fallback: " + escape(message) in out.with_suffix(".report.html").read_text()
    assert report["top_k_accuracy"][0] > 0.8
    if trainer == "imprint" and eigh is never_converges:
        assert report["head"]["whitening"] is None
        assert "whitening failed" in report["head"]["whitening_choice"]["reason"]
    classified = invoke("classify", out, next(five_classes.rglob("*.jpg")), "--json")
    assert_ok(classified)
