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
  exactly (proximal), so no penalty can make it diverge; with fewer than 3 images in some
  class nothing can be validated and the imprinting solution (each class's normalized
  mean direction, as FULLY_CONNECTED weights) is the head (`fallback` in the report);
- the features are conditioned first. `M` is a gently shrunk within-class whitening (see
  `workbench.whitening`), scaled to unit mean square per dimension, so one learning rate and
  one penalty scale suit extractors whose outputs differ in scale and correlation. `M` is
  linear, so it is folded into the exported layer: the model still takes raw embeddings and
  ends FULLY_CONNECTED + SOFTMAX.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from workbench.calibration import LOGIT_HEADROOM, logit_window, sharpening
from workbench.crossval import has_own_class, stratified_folds
from workbench.imprint import imprint, leave_one_out_cosines
from workbench.imprint_cv import best_temperature
from workbench.whitening import fit_whitening

DEFAULT_EPOCHS = 100
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_BATCH_SIZE = 100
DEFAULT_MOMENTUM = 0.9
# Multiple of the mean within-class eigenvalue added before whitening the features.
FEATURE_SHRINKAGE = 3.0
# Penalties tried by cross-validation, as lam in reg = lam / N (strong to weak).
REG_GRID = (3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0, 3.0)
CV_FOLDS = 3
CV_ROWS = 2000  # bigger sets are cross-validated on a stratified sample of this size
MIN_PER_CLASS = 3  # fewer in some class: the imprinting fallback
DEFAULT_START_SCALE = 10.0  # imprinting fallback's temperature when nothing can be left out


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
        whitening = fit_whitening(x, labels, shrinkage=shrinkage)
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


@dataclass(frozen=True)
class SgdSettings:
    """How SGD runs; shared by the cross-validation fits and the final one."""

    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    momentum: float = DEFAULT_MOMENTUM


def sgd(
    z: np.ndarray,
    labels: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
    regs: np.ndarray,
    settings: SgdSettings,
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
    decay = np.repeat(np.asarray(regs, np.float64), num_classes) / (1.0 - settings.momentum)
    velocity_w, velocity_b = np.zeros_like(weights), np.zeros_like(bias)
    rng = np.random.default_rng(seed)
    batches = max(1, int(np.ceil(len(y) / settings.batch_size)))
    history: list[EpochStats] = []
    for epoch in range(1, settings.epochs + 1):
        rate = settings.learning_rate * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / settings.epochs))
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
                velocity_w = settings.momentum * velocity_w + x[batch].T @ grad
                velocity_b = settings.momentum * velocity_b + grad.sum(axis=0)
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


def imprinting_start(
    x: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imprinting as a linear layer on raw embeddings: W = tau * unit class directions.

    argmax_c x . w_c is imprinting's top-1 (the norm of x is shared by all classes). tau is
    the temperature that best predicts each image from the other images of its class.
    Returns W [D, C], b [C] and those leave-one-out logits (-inf for a class's only image).
    """
    classes = imprint(x, labels, num_classes)
    loo, own = leave_one_out_cosines(classes, x, labels)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    typical = float(np.median(norms))
    relative = loo * (norms / typical)  # logits of a unit temperature, in cosine units
    if own.sum() >= 2:
        finite = np.where(np.isfinite(relative), relative, -1.0)
        tau = best_temperature(finite[own], labels[own]) / typical
    else:
        tau = DEFAULT_START_SCALE / typical
    weights = tau * classes.weights.T.astype(np.float64)
    return weights, np.zeros(num_classes), tau * typical * relative


def _conditioned(
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
    """The penalty chosen by cross-validation and each candidate's held-out loss."""

    reg: float
    losses: dict[str, float]
    held_out_rows: int
    folds: int


def choose_reg(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    settings: SgdSettings,
    seed: int,
    lams: tuple[float, ...] = REG_GRID,
    on_fold: Callable[[int], None] | None = None,
) -> tuple[RegChoice, np.ndarray, np.ndarray]:
    """Cross-validate the penalty reg = lam / N: every fold trains the final procedure.

    Big sets are cross-validated on a stratified sample of at most CV_ROWS images. Returns
    the choice (as reg for all of `x`), the held-out logits at the chosen penalty and the
    rows they belong to.
    """
    rows = _sample_rows(labels, CV_ROWS, seed)
    cx, cy = x[rows], labels[rows]
    fold_of = stratified_folds(cy, CV_FOLDS, seed)
    held = np.full((len(lams), len(cy), num_classes), np.nan)
    for fold in range(CV_FOLDS):
        test = fold_of == fold
        if not test.any() or test.all():
            continue
        features, start = _conditioned(cx[~test], cy[~test], num_classes)
        regs = np.asarray(lams) / int((~test).sum())
        weights, bias, _ = sgd(features.apply(cx[~test]), cy[~test], start, regs, settings, seed)
        held[:, test] = features.apply(cx[test])[None] @ weights + bias[:, None]
        if on_fold is not None:
            on_fold(fold + 1)
    own = has_own_class(cy, fold_of)
    scored = own & np.isfinite(held[0]).all(axis=1)
    losses = np.array([_cross_entropy(held[j][scored], cy[scored]) for j in range(len(lams))])
    best = int(np.argmin(losses))
    choice = RegChoice(
        reg=float(lams[best]) / len(labels),
        losses={f"{lam / len(labels):.3g}": float(v) for lam, v in zip(lams, losses, strict=True)},
        held_out_rows=int(scored.sum()),
        folds=CV_FOLDS,
    )
    return choice, held[best][scored], rows[scored]


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    if not np.isfinite(logits).all():
        return float("inf")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float(np.mean(log_norm - shifted[np.arange(len(labels)), labels]))


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


@dataclass
class SoftmaxHead:
    """A trained softmax-regression head on raw embeddings, and how it was trained.

    `logit_range` is the exported layer's 8-bit range, chosen on logits of images held out
    of cross-validation (left out, for the imprinting fallback).
    """

    weights: np.ndarray  # [D, C], for raw embeddings
    bias: np.ndarray  # [C]
    history: list[EpochStats] = field(default_factory=list)
    reg: float | None = None
    choice: RegChoice | None = None
    logit_range: tuple[float, float] = (-1.0, 1.0)
    fallback: str | None = None
    num_train: int = 0
    sharpened_by: float = 1.0

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, np.float64) @ self.weights + self.bias

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The float head the exported FULLY_CONNECTED + SOFTMAX approximates."""
        return softmax(self.logits(embeddings))

    def sharpened(self) -> SoftmaxHead:
        """This head with logits scaled up, if needed, for its 8-bit export to resolve them.

        Scaling logits never changes the top-1; it makes the scores more confident, which
        the exported 8-bit softmax needs to tell two close classes apart (`sharpening`).
        """
        factor = sharpening(self.logit_range, len(self.bias))
        if factor == 1.0:
            return self
        lo, hi = self.logit_range
        return replace(
            self, weights=self.weights * factor, bias=self.bias * factor,
            logit_range=(lo * factor, hi * factor), sharpened_by=factor,
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """How the head was trained, for the report."""
        choice = self.choice
        return {
            "embedding_dim": int(self.weights.shape[0]),
            "num_train": self.num_train,
            "reg": self.reg,
            "epochs_run": len(self.history),
            "fallback": self.fallback,
            "logit_range": list(self.logit_range),
            "sharpened_by": self.sharpened_by,
            "reg_choice": None
            if choice is None
            else {
                "held_out_loss": choice.losses,
                "held_out_images": choice.held_out_rows,
                "folds": choice.folds,
            },
        }


def train_backprop(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reg: float | None = None,
    momentum: float = DEFAULT_MOMENTUM,
    seed: int = 0,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_fold: Callable[[int], None] | None = None,
) -> SoftmaxHead:
    """Choose the penalty (unless given), condition the features, run SGD, fold back to raw.

    `reg` None chooses it by cross-validation (a given `reg` is still cross-validated alone,
    for the held-out logits that set the export range). With fewer than MIN_PER_CLASS images
    in some class the head is the imprinting solution. `on_fold` and `on_epoch` report
    progress (a finished cross-validation fold; a finished epoch of the final fit).
    """
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, np.int64)
    settings = SgdSettings(epochs, learning_rate, batch_size, momentum)
    if np.bincount(y, minlength=num_classes).min() < MIN_PER_CLASS:
        return _imprinting_fallback(x, y, num_classes)
    lams = REG_GRID if reg is None else (reg * len(y),)
    choice, held_logits, _ = choose_reg(x, y, num_classes, settings, seed, lams, on_fold)
    features, start = _conditioned(x, y, num_classes)
    z = features.apply(x)
    weights, bias, history = sgd(z, y, start, np.array([choice.reg]), settings, seed, on_epoch)
    # SGD starts at zero weights, where the loss is log(C); with a sane step it ends below
    # that, while too large a step leaves the weights bouncing between bad states.
    start_loss, final_loss = float(np.log(num_classes)), history[-1].loss
    if not np.isfinite(final_loss) or final_loss > start_loss + 1.0:
        raise FloatingPointError(
            f"training diverged: the loss went from {start_loss:.3g} (untrained) to "
            f"{final_loss:.3g}; lower the learning rate"
        )
    raw_w, raw_b = features.fold(weights[0], bias[0])
    return SoftmaxHead(
        raw_w,
        raw_b,
        history,
        reg=choice.reg,
        choice=choice if reg is None else None,
        logit_range=logit_window(held_logits),
        num_train=len(y),
    ).sharpened()


def _imprinting_fallback(x: np.ndarray, y: np.ndarray, num_classes: int) -> SoftmaxHead:
    weights, bias, held = imprinting_start(x, y, num_classes)
    # The bottom comes from left-out logits (class vectors of one image fewer: a low
    # estimate of an unseen image's best logit). For the top, the in-sample logits, which
    # include each image in its own class, are a high one.
    lo = logit_window(held)[0]
    in_sample = np.max(x @ weights + bias, axis=1)
    hi = float(in_sample.max()) + LOGIT_HEADROOM * float(np.ptp(in_sample))
    return SoftmaxHead(
        weights,
        bias,
        logit_range=(lo, max(hi, lo + 1.0)),
        fallback=f"fewer than {MIN_PER_CLASS} images in a class: nothing to validate, so the "
        "head is the imprinting solution (class directions) as FULLY_CONNECTED weights",
        num_train=len(y),
    ).sharpened()
