"""The softmax-regression head as an estimator: fit on embeddings, score, append itself.

`SoftmaxHead.fit` chooses the penalty by cross-validation, conditions the features and runs
SGD (`workbench.backprop`); with fewer than MIN_PER_CLASS images in some class nothing can be
validated, and the head is the imprinting solution written as a linear layer. `append_to`
writes it onto an extractor as FULLY_CONNECTED + SOFTMAX, as Coral's backprop does, with the
logits' 8-bit range chosen on held-out logits.

    >>> import numpy as np
    >>> x = np.abs(np.random.default_rng(0).normal(size=(60, 8))) + np.eye(8)[np.arange(60) % 3]
    >>> head = SoftmaxHead.fit(x, np.arange(60) % 3, options=BackpropOptions(epochs=5))
    >>> head.scores(x[:2]).shape
    (2, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from workbench.backprop import (
    REG_GRID,
    EpochStats,
    RegChoice,
    choose_reg,
    conditioned,
    sgd,
    softmax,
)
from workbench.calibration import LOGIT_HEADROOM, logit_window, sharpening
from workbench.imprint import imprint, leave_one_out_cosines
from workbench.imprint_cv import best_temperature
from workbench.options import BackpropOptions
from workbench.progress import fall_back
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail

MIN_PER_CLASS = 3  # fewer in some class: the imprinting fallback
DEFAULT_START_SCALE = 10.0  # imprinting fallback's temperature when nothing can be left out


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


@dataclass
class SoftmaxHead:
    """A trained softmax-regression head on raw embeddings, and how it was trained.

    `logit_range` is the exported layer's 8-bit range, chosen on logits of images held out
    of cross-validation (left out, for the imprinting fallback).

        >>> import numpy as np
        >>> x = np.eye(4)[np.arange(40) % 4] + 0.1
        >>> head = SoftmaxHead.fit(x, np.arange(40) % 4, options=BackpropOptions(epochs=3))
        >>> head.weights.shape, len(head.history), head.reg > 0
        ((4, 4), 3, True)
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

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: np.ndarray,
        num_classes: int | None = None,
        options: BackpropOptions = BackpropOptions(),
        seed: int = 0,
        on_epoch: Callable[[EpochStats], None] | None = None,
        on_fold: Callable[[int], None] | None = None,
    ) -> SoftmaxHead:
        """Choose the penalty (unless given), condition the features, run SGD, fold back.

        `options.reg` None chooses it by cross-validation (a given one is still
        cross-validated alone, for the held-out logits that set the export range). With fewer
        than MIN_PER_CLASS images in some class the head is the imprinting solution.
        `on_fold` and `on_epoch` report progress (a finished fold; an epoch of the final fit).
        When SGD diverges (too large a learning rate, or non-finite arithmetic) the head is
        the imprinting solution too, with a `Fallback` warning.
        """
        x = np.asarray(embeddings, np.float64)
        y = np.asarray(labels, np.int64)
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        if np.bincount(y, minlength=num_classes).min() < MIN_PER_CLASS:
            return cls._imprinting_fallback(
                x, y, num_classes, f"fewer than {MIN_PER_CLASS} images in a class: nothing to "
                "validate, so the head is the imprinting solution (class directions) as "
                "FULLY_CONNECTED weights",
            )  # fmt: skip
        lams = REG_GRID if options.reg is None else (options.reg * len(y),)
        try:
            choice, held_logits, _ = choose_reg(x, y, num_classes, options, seed, lams, on_fold)
            features, start = conditioned(x, y, num_classes)
            z = features.apply(x)
            regs = np.array([choice.reg])
            weights, bias, history = sgd(z, y, start, regs, options, seed, on_epoch)
            _check_converged(history, num_classes)
        except FloatingPointError as e:
            reason = f"{e}: the head is the imprinting solution instead"
            return cls._imprinting_fallback(x, y, num_classes, reason)
        raw_w, raw_b = features.fold(weights[0], bias[0])
        return cls(
            raw_w, raw_b, history, reg=choice.reg,
            choice=choice if options.reg is None else None,
            logit_range=logit_window(held_logits), num_train=len(y),
        ).sharpened()  # fmt: skip

    @classmethod
    def _imprinting_fallback(
        cls, x: np.ndarray, y: np.ndarray, num_classes: int, reason: str
    ) -> SoftmaxHead:
        """The imprinting solution as this head, announced as a `Fallback` for `reason`."""
        fall_back(reason)
        weights, bias, held = imprinting_start(x, y, num_classes)
        # The bottom comes from left-out logits (class vectors of one image fewer: a low
        # estimate of an unseen image's best logit). For the top, the in-sample logits,
        # which include each image in its own class, are a high one.
        lo = logit_window(held)[0]
        in_sample = np.max(x @ weights + bias, axis=1)
        hi = float(in_sample.max()) + LOGIT_HEADROOM * float(np.ptp(in_sample))
        return cls(
            weights, bias, logit_range=(lo, max(hi, lo + 1.0)), num_train=len(y),
            fallback=reason,
        ).sharpened()  # fmt: skip

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

    def append_to(self, graph: Graph) -> int:
        """Append FULLY_CONNECTED + SOFTMAX behind the graph's output; returns the scores."""
        return append_softmax_regression_tail(graph, self.weights.T, self.bias, self.logit_range)

    def export(
        self, extractor: str | Path | Graph, output: str | Path, labels: list[str]
    ) -> tuple[Path, Path]:
        """Write extractor + this head to `output` and its labels file; returns both paths."""
        from workbench.export import save_model

        graph = Graph.load(extractor) if not isinstance(extractor, Graph) else extractor
        graph = Graph.from_bytes(graph.to_bytes())
        self.append_to(graph)
        return save_model(
            graph, output, labels, {"trainer": "backprop"},
            inputs=[extractor] if not isinstance(extractor, Graph) else [],
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


def _check_converged(history: list[EpochStats], num_classes: int) -> None:
    """SGD starts at zero weights, where the loss is log(C); with a sane step it ends below.

    Too large a step leaves the weights bouncing between bad states (the penalty's step is
    exact and cannot diverge; the loss's can).
    """
    start_loss, final_loss = float(np.log(num_classes)), history[-1].loss
    if not np.isfinite(final_loss) or final_loss > start_loss + 1.0:
        raise FloatingPointError(
            f"training diverged: the loss went from {start_loss:.3g} (untrained) to "
            f"{final_loss:.3g}; lower the learning rate"
        )
