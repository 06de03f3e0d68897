"""Last-layer backprop: softmax regression on embeddings, trained by mini-batch SGD.

The model is logits = z W + b on features z = (x - mean) M, trained on cross-entropy with an
L2 penalty reg/2 |W|^2. Compared with libcoral's SoftmaxRegression:

- the penalty enters the gradient (libcoral only adds it to the printed loss), and its
  strength is chosen by cross-validation on the training images (`choose_reg`): the best
  value runs from about 1 on 5 classes of 150 images to 0.03 on 101 classes, so no fixed
  default suits both. The grid is in units of 1/N (reg = lam / N), the scaling a Gaussian
  prior on the weights gives, so a value chosen on part of the images carries over;
- training runs in epochs, full passes over a reshuffled training set, with momentum and a
  cosine-decayed learning rate, and keeps the last epoch: picking the best epoch on a small
  validation part kept noisy early epochs and scored lower on every data set tried;
- SGD starts from zero weights (where the penalty pulls), and the penalty's step is taken
  exactly (proximal), so no penalty can make it diverge;
- the cross-validated imprinting head competes in the same folds, and is kept unless SGD is
  clearly right on more held-out images: with a few images per class SGD was up to 0.06
  below it;
- the features are conditioned first. `M` is a gently shrunk within-class whitening (see
  `workbench.heads.whitening`), scaled to unit mean square per dimension, so one learning rate and
  one penalty scale suit extractors whose outputs differ in scale and correlation. `M` is
  linear, so it is folded into the exported layer: the model still takes raw embeddings and
  ends FULLY_CONNECTED + SOFTMAX.

The head built from this (and its fallback with too few images) is `workbench.heads.softmax_head`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workbench.core.options import BackpropOptions
from workbench.core.progress import fall_back
from workbench.heads.crossval import has_own_class, stratified_folds
from workbench.heads.whitening import DecompositionError, fit_whitening

MOMENTUM = 0.9
# Multiple of the mean within-class eigenvalue added before whitening the features.
FEATURE_SHRINKAGE = 3.0
# Penalties tried by cross-validation, as lam in reg = lam / N (strong to weak).
REG_GRID = (3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0, 3.0)
CV_FOLDS = 3
CV_ROWS = 2000  # bigger sets are cross-validated on a stratified sample of this size


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    learning_rate: float
    loss: float
    train_accuracy: float
    val_accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FeatureMap:
    """z = (x - mean) @ matrix: the conditioning applied before SGD, folded in afterwards."""

    mean: np.ndarray  # [D]
    matrix: np.ndarray  # [D, D]

    @classmethod
    def identity(cls, dim: int) -> FeatureMap:
        return cls(np.zeros(dim), np.eye(dim))

    @classmethod
    def standardize(cls, x: np.ndarray) -> FeatureMap:
        """Zero mean, unit variance per dimension (constant dimensions left unscaled)."""
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.diag(1.0 / np.where(std > 1e-8, std, 1.0)))

    @classmethod
    def whiten(cls, x: np.ndarray, labels: np.ndarray, shrinkage: float) -> FeatureMap:
        """Shrunk within-class whitening, scaled to unit mean square per dimension."""
        x = np.asarray(x, np.float64)
        try:
            whitening = fit_whitening(x, labels, shrinkage=shrinkage)
        except DecompositionError as e:
            fall_back(f"whitening for SGD skipped: {e}; the features are standardized instead")
            return cls.standardize(x)
        matrix = whitening.matrix.T
        z = (x - whitening.mean) @ matrix
        rms = float(np.sqrt(np.mean(z**2)))
        return cls(whitening.mean, matrix / rms if rms > 0 else matrix)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.matrix

    def fold(self, weights: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights [D, C] and bias for raw x that give the same logits as (W, b) on z."""
        folded = self.matrix @ weights
        return folded, bias - self.mean @ folded


class SoftmaxRegression:
    """A linear classifier with a softmax output and plain SGD steps (pycoral's model)."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        weight_scale: float = 0.05,
        reg: float = 0.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.weights = rng.standard_normal((feature_dim, num_classes)) * weight_scale
        self.bias = np.zeros(num_classes)
        self.reg = reg

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weights + self.bias

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.logits(x).argmax(axis=1) == np.asarray(labels)))

    def loss_and_gradients(
        self, x: np.ndarray, labels: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean cross-entropy plus reg/2 * |W|^2, and its gradients for W and b."""
        x = np.asarray(x, np.float64)
        n = len(labels)
        rows = np.arange(n)
        probs = softmax(self.logits(x))
        loss = -float(np.mean(np.log(probs[rows, labels] + 1e-12)))
        loss += 0.5 * self.reg * float(np.sum(self.weights**2))
        probs[rows, labels] -= 1.0
        probs /= n
        return loss, x.T @ probs + self.reg * self.weights, probs.sum(axis=0)

    def step_sgd(self, x: np.ndarray, labels: np.ndarray, learning_rate: float) -> float:
        """One plain SGD step on a mini-batch; returns the batch loss before the step."""
        loss, grad_w, grad_b = self.loss_and_gradients(x, labels)
        self.weights -= learning_rate * grad_w
        self.bias -= learning_rate * grad_b
        return loss


def sgd(
    z: np.ndarray,
    labels: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    regs: np.ndarray,
    options: BackpropOptions,
    seed: int,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[EpochStats]]:
    """Train one model per penalty in `regs` at once, on the same batches; the last epoch.

    All models see the same shuffles, so each is exactly what a run of its own would give;
    training them together turns many small matrix products into one. Returns weights
    [K, D, C], biases [K, C] and (for K = 1) the per-epoch curve.
    """
    x = np.asarray(z, np.float64)
    y = np.asarray(labels, np.int64)
    k = len(regs)
    dim, num_classes = start[0].shape
    weights = np.repeat(start[0][None], k, axis=0).transpose(1, 0, 2).reshape(dim, k * num_classes)
    bias = np.tile(start[1], k)
    # With momentum b the loss gradient is followed 1/(1-b) times over; the decay matches it.
    decay = np.repeat(np.asarray(regs, np.float64), num_classes) / (1.0 - MOMENTUM)
    velocity_w, velocity_b = np.zeros_like(weights), np.zeros_like(bias)
    rng = np.random.default_rng(seed)
    batches = max(1, int(np.ceil(len(y) / options.batch_size)))
    history: list[EpochStats] = []
    for epoch in range(1, options.epochs + 1):
        rate = options.learning_rate * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / options.epochs))
        total = 0.0
        # Even batches: a remainder batch of one image would make a noisy last step.
        for batch in np.array_split(rng.permutation(len(y)), batches):
            with np.errstate(all="ignore"):  # a diverging run is caught once per epoch
                logits = (x[batch] @ weights + bias).reshape(len(batch), k, num_classes)
                logits -= logits.max(axis=2, keepdims=True)
                probs = np.exp(logits)
                probs /= probs.sum(axis=2, keepdims=True)
                picked = probs[np.arange(len(batch)), :, y[batch]]
                total += -float(np.log(picked[:, 0] + 1e-12).sum())
                probs[np.arange(len(batch)), :, y[batch]] -= 1.0
                grad = probs.reshape(len(batch), -1) / len(batch)
                velocity_w = MOMENTUM * velocity_w + x[batch].T @ grad
                velocity_b = MOMENTUM * velocity_b + grad.sum(axis=0)
                # The penalty's step is taken exactly (a proximal step), which is stable for
                # any penalty and step size; its fixed point is that of loss + reg/2 |W|^2.
                weights = (weights - rate * velocity_w) / (1.0 + rate * decay)
                bias = bias - rate * velocity_b
        if not np.all(np.isfinite(weights)):
            raise FloatingPointError(f"training diverged in epoch {epoch}; lower the learning rate")
        if k == 1:
            accuracy = float(np.mean((x @ weights + bias).argmax(axis=1) == y))
            loss = total / len(y) + 0.5 * float(regs[0]) * float(np.sum(weights**2))
            history.append(EpochStats(epoch, float(rate), loss, accuracy, None))
            if on_epoch is not None:
                on_epoch(history[-1])
    shaped = weights.reshape(dim, k, num_classes).transpose(1, 0, 2)
    return shaped, bias.reshape(k, num_classes), history


def conditioned(
    x: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[FeatureMap, tuple[np.ndarray, np.ndarray]]:
    """The feature map of these images, and SGD's start on its features: all zeros.

    Zero is where the penalty pulls; the imprinting solution as a start looked attractive,
    but on features with a large shared offset its bias dwarfs the weights, and once the
    penalty shrinks the weights that bias alone decides (seen: 1 in 6 right on 6 classes).
    """
    features = FeatureMap.whiten(x, labels, FEATURE_SHRINKAGE)
    return features, (np.zeros((x.shape[1], num_classes)), np.zeros(num_classes))


@dataclass(frozen=True)
class RegChoice:
    """The penalty chosen by cross-validation and each candidate's held-out loss.

    `reg` None: the prior head won (see `choose_reg`); its loss is the one named "prior".
    """

    reg: float | None
    losses: dict[str, float]
    held_out_rows: int
    folds: int


# A penalty at the edge of the grid that wins says the grid is too short there: it is
# extended past that edge by the grid's own step, EDGE_STEPS values at a time, at most
# MAX_EXTENSIONS times.
EDGE_STEPS = 2
MAX_EXTENSIONS = 3
Prior = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(training rows, their labels) -> weights [D, C] and bias [C] of another head on raw rows
(the imprinting head), which competes with SGD in `choose_reg`."""


@dataclass(frozen=True)
class RegSearch:
    """What the penalty search chose, and the held-out logits it chose on."""

    choice: RegChoice
    logits: np.ndarray  # [rows, C] held-out logits of the choice (SGD's, or the prior's)
    rows: np.ndarray  # their indices into the training set


def choose_reg(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: BackpropOptions,
    seed: int,
    lams: tuple[float, ...] = REG_GRID,
    on_fold: Callable[[int], None] | None = None,
    prior: Prior | None = None,
) -> RegSearch:
    """Cross-validate the penalty reg = lam / N: every fold trains the final procedure.

    Big sets are cross-validated on a stratified sample of at most CV_ROWS images. When the
    lowest held-out loss is at an edge of the grid, the grid is extended past it (see
    EDGE_STEPS); the penalty chosen is the strongest within one standard error of that
    lowest loss (`one_standard_error`). A `prior` head, fitted on the same folds, is chosen
    instead (`choice.reg` None) unless SGD at that penalty gets clearly more held-out
    images right (`clearly_more_right`).
    """
    rows = _sample_rows(labels, CV_ROWS, seed)
    cx, cy = x[rows], labels[rows]
    fold_of = stratified_folds(cy, CV_FOLDS, seed)
    tests = [fold_of == f for f in range(CV_FOLDS)]
    tests = [test for test in tests if test.any() and not test.all()]
    folds = []  # each fold's conditioned features, made once for every penalty tried
    for test in tests:
        features, start = conditioned(cx[~test], cy[~test], num_classes)
        folds.append((test, features.apply(cx[~test]), features.apply(cx[test]), start))

    def held_out(candidates: list[float], progress: bool = False) -> np.ndarray:
        held = np.full((len(candidates), len(cy), num_classes), np.nan)
        for done, (test, z_train, z_test, start) in enumerate(folds, start=1):
            regs = np.asarray(candidates) / int((~test).sum())
            weights, bias, _ = sgd(z_train, cy[~test], start, regs, options, seed)
            held[:, test] = z_test[None] @ weights + bias[:, None]
            if progress and on_fold is not None:
                on_fold(done)
        return held

    grid = list(lams)
    held = held_out(grid, progress=True)
    scored = has_own_class(cy, fold_of) & np.isfinite(held[0]).all(axis=1)
    y = cy[scored]
    losses = [_cross_entropy(h[scored], y) for h in held]
    for _ in range(MAX_EXTENSIONS if len(grid) > 1 else 0):
        best = int(np.argmin(losses))
        if best not in (0, len(grid) - 1):
            break
        edge, inner = (grid[0], grid[1]) if best == 0 else (grid[-1], grid[-2])
        more = [edge * (edge / inner) ** k for k in range(1, EDGE_STEPS + 1)]
        more_held = held_out(more)
        more_losses = [_cross_entropy(h[scored], y) for h in more_held]
        if best == 0:  # stronger penalties go first, keeping the grid strong to weak
            grid, losses = more[::-1] + grid, more_losses[::-1] + losses
            held = np.concatenate([more_held[::-1], held])
        else:
            grid, losses = grid + more, losses + more_losses
            held = np.concatenate([held, more_held])
    best = one_standard_error(held[:, scored], y, losses)
    reg: float | None = float(grid[best]) / len(labels)
    logits = held[best][scored]
    named = {f"{lam / len(labels):.3g}": float(v) for lam, v in zip(grid, losses, strict=True)}
    if prior is not None:
        prior_held = np.full((len(cy), num_classes), np.nan)
        for test, *_ in folds:
            weights, bias = prior(cx[~test], cy[~test])
            prior_held[test] = cx[test] @ weights + bias
        prior_held = prior_held[scored]
        named = {"prior": _cross_entropy(prior_held, y), **named}
        if not clearly_more_right(logits, prior_held, y):
            reg, logits = None, prior_held
    choice = RegChoice(reg, named, held_out_rows=int(scored.sum()), folds=CV_FOLDS)
    return RegSearch(choice, logits, rows[scored])


def one_standard_error(held: np.ndarray, labels: np.ndarray, losses: list[float]) -> int:
    """The strongest penalty whose held-out loss is within one standard error of the lowest.

    The lowest loss among many penalties, measured on a few dozen held-out images with a
    few images per class, is partly luck; a weaker penalty (more room to fit those images)
    is taken only when it is better by more than that (the usual one-standard-error rule).
    `held` [penalties, rows, C] runs from strong to weak, as the grid does.
    """
    best = int(np.argmin(losses))
    if not np.isfinite(losses[best]) or len(labels) < 2:
        return best
    rows = cross_entropy_rows(held[best], labels)
    bar = losses[best] + float(rows.std(ddof=1)) / np.sqrt(len(rows))
    return next(j for j, loss in enumerate(losses) if loss <= bar)


def clearly_more_right(logits: np.ndarray, other: np.ndarray, labels: np.ndarray) -> bool:
    """Whether `logits` get more rows right than `other` by more than a standard error.

    Paired over the same held-out rows: only the images exactly one of the two gets right
    count, and the standard error says how much of their difference luck could be.
    Measured on flower photos, emoji, clip art and clothing (5 to 70 classes, 2 to 200
    images per class): with the imprinting head as `other`, SGD is kept where it gains (up
    to +0.047 top-1 on 70 emoji classes at 50 images each) and the imprinting head where SGD
    would lose (up to -0.021 before).
    """
    right = (logits.argmax(axis=1) == labels).astype(np.float64)
    gain = right - (other.argmax(axis=1) == labels).astype(np.float64)
    if len(gain) < 2:
        return False
    return float(gain.mean()) > float(gain.std(ddof=1)) / np.sqrt(len(gain))


def cross_entropy_rows(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy of softmax(logits) against `labels`."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(labels)), labels]


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    if not np.isfinite(logits).all():
        return float("inf")
    return float(np.mean(cross_entropy_rows(logits, labels)))


def _sample_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """All rows, or a stratified random sample of about `limit` of them."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = rng.random(len(labels)) < limit / len(labels)
    for c in np.unique(labels):  # every class keeps at least 3 images
        rows = np.flatnonzero(labels == c)
        keep[rng.permutation(rows)[: min(3, len(rows))]] = True
    return np.flatnonzero(keep)
