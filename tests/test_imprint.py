from __future__ import annotations

import numpy as np
import pytest

from workbench.imprint import (
    cosine_window,
    cosines,
    fit_scale_factor,
    imprint,
    l2_normalize,
    leave_one_out_cosines,
    train_imprinting,
)
from workbench.whitening import fit_whitening, within_class_scatter


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
    with pytest.raises(ValueError, match=r"classes \[2\] have no training"):
        imprint(x, y, 3)


def test_leave_one_out_matches_retraining_without_the_image() -> None:
    x, y = clusters(4, classes=3, dim=8)
    x[-1] = x[-2] + 0.1  # a class with a near-duplicate
    state = imprint(x, y, 3)
    loo = leave_one_out_cosines(state, x, y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        without = imprint(x[keep], y[keep], 3)
        np.testing.assert_allclose(loo[i], cosines(without, x[i : i + 1])[0], atol=1e-9)


def test_leave_one_out_keeps_a_lone_image_own_cosine() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    y = np.array([0, 1, 1])
    loo = leave_one_out_cosines(imprint(x, y, 2), x, y)
    assert loo[0, 0] == pytest.approx(1.0)


def test_scale_factor_grows_with_separation_and_never_changes_top1() -> None:
    easy_x, easy_y = clusters(20, noise=0.2)
    hard_x, hard_y = clusters(20, noise=2.0)
    easy = train_imprinting(easy_x, easy_y, 4, whiten=False)
    hard = train_imprinting(hard_x, hard_y, 4, whiten=False)
    assert easy.scale_factor > hard.scale_factor
    cos = cosines(hard.classes, hard_x)
    assert np.array_equal(hard.scores(hard_x).argmax(1), cos.argmax(1))
    assert fit_scale_factor(cos, hard_y) == fit_scale_factor(cos, hard_y)


def test_cosine_window_covers_each_images_best_class() -> None:
    cos = np.array([[0.9, 0.1], [0.2, 0.5], [-0.3, 0.7]])
    lo, hi = cosine_window(cos, scale_factor=1000.0)
    assert lo == pytest.approx(0.48) and hi == pytest.approx(0.92)


def test_cosine_window_keeps_clipped_classes_negligible() -> None:
    cos = np.array([[0.9, 0.1, 0.2], [0.2, 0.5, 0.1]])
    lo, _ = cosine_window(cos, scale_factor=20.0)
    assert lo == pytest.approx(0.5 - np.log(200) / 20)
    # The weakest image's clipped runners-up hold at most 1% of its probability.
    assert 2 * np.exp(-20.0 * (0.5 - lo)) <= 0.01 + 1e-12


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
    plain = train_imprinting(x, labels, 2, whiten=False)
    whitened = train_imprinting(x, labels, 2, whiten=True)
    acc_plain = np.mean(plain.scores(test_x).argmax(1) == labels)
    acc_white = np.mean(whitened.scores(test_x).argmax(1) == labels)
    assert acc_white > 0.95 and acc_white > acc_plain + 0.1


def test_whitening_statistics_survive_a_model_file_and_pool() -> None:
    from workbench.whitening import Whitening, fit_whitening

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
