from __future__ import annotations

import numpy as np
import pytest

from workbench.core.errors import WorkbenchError
from workbench.core.options import ImprintOptions
from workbench.heads.calibration import cosine_window, scale_floor
from workbench.heads.crossval import has_own_class, stratified_folds
from workbench.heads.imprint import (
    cosines,
    imprint,
    l2_normalize,
    leave_one_out_cosines,
)
from workbench.heads.imprint_cv import PLAIN, best_temperature, cross_validate
from workbench.heads.imprint_head import ImprintingHead
from workbench.heads.whitening import fit_whitening, within_class_basis, within_class_scatter


def clusters(
    n_per_class: int, dim: int = 16, classes: int = 4, noise: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centers[labels] + noise * rng.normal(size=(len(labels), dim))
    return x, labels


def test_class_weight_is_normalized_sum_of_normalized_embeddings() -> None:
    x, y = clusters(5)
    state = imprint(x, y, 4)
    for c in range(4):
        expected = l2_normalize(l2_normalize(x[y == c]).sum(axis=0))
        np.testing.assert_allclose(state.weights[c], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.norms, np.linalg.norm(state.sums, axis=1))
    assert state.counts.tolist() == [5, 5, 5, 5]


def test_continuing_from_a_base_equals_training_at_once() -> None:
    x, y = clusters(6)
    first = (y < 2) | (np.arange(len(y)) % 2 == 0)  # classes 0, 1 and half of 2, 3
    base = imprint(x[first & (y < 2)], y[first & (y < 2)], 2)
    more = imprint(x[~(first & (y < 2))], y[~(first & (y < 2))], 4, base=base)
    at_once = imprint(x, y, 4)
    np.testing.assert_allclose(more.sums, at_once.sums, atol=1e-9)


def test_base_classes_not_trained_by_imprinting_cannot_be_retrained() -> None:
    x, y = clusters(3, classes=2)
    base = imprint(x, y, 2)
    base.trainable[:] = [False, True]
    with pytest.raises(ValueError, match=r"classes \[0\] come from the base model"):
        imprint(x[:1], np.array([0]), 2, base=base)
    extended = imprint(x[:1], np.array([2]), 3, base=base)
    assert extended.trainable.tolist() == [False, True, True]


def test_a_class_without_embeddings_is_refused() -> None:
    x, y = clusters(3, classes=2)
    with pytest.raises(WorkbenchError, match=r"classes \[2\] have no training"):
        imprint(x, y, 3)


def test_leave_one_out_matches_retraining_without_the_image() -> None:
    x, y = clusters(4, classes=3, dim=8)
    x[-1] = x[-2] + 0.1  # a class with a near-duplicate
    state = imprint(x, y, 3)
    loo, own = leave_one_out_cosines(state, x, y)
    assert own.all()
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        without = imprint(x[keep], y[keep], 3)
        np.testing.assert_allclose(loo[i], cosines(without, x[i : i + 1])[0], atol=1e-9)


def test_leave_one_out_of_a_lone_image_has_no_own_class() -> None:
    # Its own class is itself: cosine 1.0 in training, nothing like an unseen image.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    y = np.array([0, 1, 1])
    loo, own = leave_one_out_cosines(imprint(x, y, 2), x, y)
    assert loo[0, 0] == -np.inf and own.tolist() == [False, True, True]


def test_temperature_grows_with_separation_and_never_changes_top1() -> None:
    easy_x, easy_y = clusters(20, noise=0.2)
    hard_x, hard_y = clusters(20, noise=2.0)
    easy = ImprintingHead.fit(easy_x, easy_y, 4, ImprintOptions(whiten=False))
    hard = ImprintingHead.fit(hard_x, hard_y, 4, ImprintOptions(whiten=False))
    assert easy.scale_factor > hard.scale_factor
    cos = cosines(hard.classes, hard_x)
    assert np.array_equal(hard.scores(hard_x).argmax(1), cos.argmax(1))
    assert best_temperature(cos, hard_y) == best_temperature(cos, hard_y)


def test_cosine_window_covers_held_out_best_classes_with_margin() -> None:
    rng = np.random.default_rng(0)
    best = rng.uniform(0.4, 0.8, size=200)
    cos = np.stack([best, best - rng.uniform(0.0, 0.3, size=200)], axis=1)
    labels = np.zeros(200, np.int64)
    lo, hi = cosine_window(cos, labels, np.ones(200, bool), scale_factor=30.0)
    assert lo < best.min() - 0.02 and hi > best.max() + 0.02 and hi <= 1.0
    assert hi - lo < 1.0  # at most half of Coral's [-1, 1]: twice as fine


def test_cosine_window_without_own_class_reaches_the_bound() -> None:
    # One image per class: held-out rows only saw other classes, a low estimate of their
    # best; nothing says how high an unseen image's own class goes, so the top is 1.
    cos = np.array([[-np.inf, 0.5, 0.3], [0.4, -np.inf, 0.45], [0.2, 0.6, -np.inf]])
    lo, hi = cosine_window(cos, np.arange(3), np.zeros(3, bool), scale_factor=10.0)
    assert hi == 1.0 and lo < 0.45


def test_scale_floor_keeps_adjacent_levels_apart() -> None:
    assert scale_floor((0.0, 1.0), 5) == pytest.approx(5 * 255 / 256)
    assert scale_floor((0.0, 0.5), 100) == pytest.approx(10 * 255 / 128)


def test_folds_are_stratified_and_small_classes_have_no_own_class_held_out() -> None:
    labels = np.repeat([0, 1, 2], [10, 3, 1])
    folds = stratified_folds(labels, 5, seed=0)
    assert np.bincount(folds[labels == 0], minlength=5).tolist() == [2] * 5
    assert len(set(folds[labels == 1])) == 3
    own = has_own_class(labels, folds)
    assert own[labels < 2].all() and not own[labels == 2].any()


def test_plain_held_out_cosines_are_imprinting_without_the_fold() -> None:
    x, y = clusters(6, classes=3, dim=8)
    scores = cross_validate(x, y, 3, [PLAIN], seed=1, folds=3)
    folds = stratified_folds(y, 3, seed=1 * 1009)
    for fold in range(3):
        rows = folds == fold
        without = imprint(x[~rows], y[~rows], 3)
        np.testing.assert_allclose(
            scores.cosines[PLAIN][: len(y)][rows], cosines(without, x[rows]), atol=1e-6
        )


def test_whitened_held_out_cosines_match_whitening_without_the_fold() -> None:
    x, y = clusters(8, classes=3, dim=6, noise=1.0)
    scores = cross_validate(x, y, 3, [2.0], seed=0, folds=4)
    folds = stratified_folds(y, 4, seed=0)
    rows = folds == 0
    whitening = fit_whitening(x[~rows], y[~rows], 2.0, center=False)
    fitted = imprint(whitening.apply(x[~rows]), y[~rows], 3)
    np.testing.assert_allclose(
        scores.cosines[2.0][: len(y)][rows], cosines(fitted, whitening.apply(x[rows])), atol=1e-6
    )


def test_basis_gives_the_whitening_at_any_shrinkage() -> None:
    rng = np.random.default_rng(2)
    for n, dim in ((10, 30), (60, 12)):  # the Gram and the scatter route
        x, y = rng.normal(size=(n, dim)), np.arange(n) % 3
        basis = within_class_basis(x, y)
        for shrinkage in (0.5, 4.0):
            direct = fit_whitening(x, y, shrinkage, center=False).matrix
            np.testing.assert_allclose(basis.matrix(shrinkage), direct, atol=1e-9)


def test_one_image_per_class_is_plain_imprinting_whatever_is_asked() -> None:
    x, y = clusters(1, classes=5)
    head = ImprintingHead.fit(x, y, 5, ImprintOptions(whiten=True))
    assert head.whitening is None and head.cosine_range[1] == 1.0
    assert "no held-out image" in head.choice.reason


def test_whitening_is_identity_without_within_class_spread() -> None:
    x = np.random.default_rng(0).normal(size=(3, 5))
    w = fit_whitening(x, np.arange(3))
    np.testing.assert_allclose(w.matrix, np.eye(5))
    np.testing.assert_allclose(w.apply(x), x - x.mean(axis=0))


def test_whitening_turns_down_nuisance_directions_and_helps_imprinting() -> None:
    rng = np.random.default_rng(1)
    n, dim = 60, 12
    labels = np.repeat([0, 1], n)
    x = rng.normal(0.0, 0.3, size=(2 * n, dim))
    x[:, 0] += np.where(labels == 0, 1.0, -1.0)  # the class signal
    x[:, 1:4] += rng.normal(0.0, 4.0, size=(2 * n, 3))  # loud nuisance, same for both classes
    x += 5.0  # a common offset, as non-negative pooled features have
    w = fit_whitening(x, labels)
    spread = within_class_scatter(w.apply(x), labels)
    before = within_class_scatter(x, labels)
    # Shrinkage toward the mean eigenvalue (about 4 here) scales a direction's variance by
    # level / (variance + level): about 0.2 for the nuisance, about 1 for the signal.
    assert spread[1, 1] / spread[0, 0] < 0.3 * before[1, 1] / before[0, 0]
    test_x = x + rng.normal(0.0, 0.3, size=x.shape)
    plain = ImprintingHead.fit(x, labels, 2, ImprintOptions(whiten=False))
    whitened = ImprintingHead.fit(
        x, labels, 2, ImprintOptions(whiten=True)
    )  # cross-validation decides
    assert whitened.whitening is not None and whitened.choice is not None
    assert whitened.choice.losses["none"] > min(whitened.choice.losses.values())
    acc_plain = np.mean(plain.scores(test_x).argmax(1) == labels)
    acc_white = np.mean(whitened.scores(test_x).argmax(1) == labels)
    assert acc_white >= 0.9 and acc_white > acc_plain + 0.1


def test_whitening_statistics_survive_a_model_file_and_pool() -> None:
    from workbench.heads.whitening import Whitening, fit_whitening

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6)) * [5, 1, 1, 0.5, 2, 1]
    y = np.repeat([0, 1, 2], 20)
    w = fit_whitening(x[:40], y[:40])
    restored = Whitening.from_bytes(w.to_bytes())
    np.testing.assert_allclose(restored.matrix, w.matrix, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(restored.mean, w.mean, rtol=1e-6)
    assert restored.count == 40
    # Pooling old statistics with new classes is the same as fitting on all (same mean).
    pooled = w.pooled_with(x[40:], y[40:])
    direct = fit_whitening(x, y)
    assert pooled.count == 60
    np.testing.assert_allclose(pooled.scatter, direct.scatter, atol=1e-9)
    # Carrying whitened vectors between the two spaces is exact for unnormalized ones.
    z_old = w.apply(x)
    np.testing.assert_allclose(w.carry(z_old, pooled), pooled.apply(x), atol=1e-9)


def test_folds_in_threads_give_the_same_scores_as_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from threadpoolctl import threadpool_limits

    import workbench.heads.imprint_cv as imprint_cv

    x, y = clusters(30, classes=4, dim=40, noise=1.0)
    candidates = [PLAIN, 1.0, 4.0]
    with threadpool_limits(limits=1, user_api="blas"):
        threaded = cross_validate(x, y, 4, candidates, seed=3)
        monkeypatch.setattr(imprint_cv, "PARALLEL_ELEMENTS", 0)  # one fold at a time
        alone = cross_validate(x, y, 4, candidates, seed=3)
    for c in candidates:
        assert np.array_equal(threaded.cosines[c], alone.cosines[c])
    assert threaded.value_range == alone.value_range
    assert np.array_equal(threaded.own_class, alone.own_class)


def test_whitening_from_a_known_decomposition_is_the_direct_one() -> None:
    from workbench.heads.whitening import scatter_eigen

    # more images than dimensions (the scatter's own decomposition) and fewer (the Gram form,
    # whose eigenvectors leave out the directions of eigenvalue 0)
    for per_class, dim in ((40, 12), (3, 40)):
        x, y = clusters(per_class, classes=3, dim=dim, noise=1.0)
        vectors = scatter_eigen(x, y)[1][1]
        assert vectors.shape[1] == (dim if len(x) >= dim else len(x) - 3)
        for shrinkage in (0.5, 4.0):
            direct = fit_whitening(x, y, shrinkage, center=False).matrix
            known = fit_whitening(x, y, shrinkage, center=False, known=scatter_eigen(x, y))
            np.testing.assert_allclose(known.matrix, direct, atol=1e-10)


def test_decomposition_beside_the_folds_is_the_same_as_alone() -> None:
    from threadpoolctl import threadpool_limits

    from workbench.heads.imprint_head import cross_validate_and_decompose
    from workbench.heads.whitening import scatter_eigen

    x, y = clusters(30, classes=4, dim=40, noise=1.0)
    candidates = [PLAIN, 1.0, 4.0]
    held_out, known = cross_validate_and_decompose(x, y, 4, candidates, seed=3)
    with threadpool_limits(limits=1, user_api="blas"):
        alone = cross_validate(x, y, 4, candidates, seed=3)
        scatter, (values, vectors) = scatter_eigen(x, y)
    for c in candidates:
        assert np.array_equal(held_out.cosines[c], alone.cosines[c])
    assert known is not None
    assert np.array_equal(known[0], scatter) and np.array_equal(known[1][0], values)
    assert np.array_equal(known[1][1], vectors)
