"""The softmax-regression head as an estimator: fit on embeddings, score, append itself.

`SoftmaxHead.fit` chooses the penalty by cross-validation, conditions the features and runs
SGD (`workbench.heads.backprop`); with fewer than MIN_PER_CLASS images in some class nothing can be
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

from workbench.core.options import BackpropOptions, ImprintOptions
from workbench.core.progress import fall_back
from workbench.heads.backprop import (
    REG_GRID,
    EpochStats,
    Prior,
    RegChoice,
    choose_reg,
    conditioned,
    sgd,
    softmax,
)
from workbench.heads.calibration import LOGIT_HEADROOM, logit_window, sharpening
from workbench.heads.imprint import imprint, leave_one_out_cosines
from workbench.heads.imprint_cv import best_temperature
from workbench.heads.imprint_head import ImprintingHead
from workbench.heads.whitening import Whitening, fit_whitening
from workbench.model.export import save_model
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail

MIN_PER_CLASS = 3  # fewer in some class: the imprinting fallback
DEFAULT_START_SCALE = 10.0  # imprinting fallback's temperature when nothing can be left out


def imprinting_start(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    whitening: Whitening | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imprinting as a linear layer on raw embeddings: W = tau * unit class directions.

    argmax_c z . w_c is imprinting's top-1 (the norm of z is shared by all classes), z the
    embeddings, or their `whitening` (folded into W and b, so the layer still takes raw
    embeddings). tau is `scale` (the imprinting head's temperature, chosen on held-out
    images) over the typical norm of z; without it, the temperature that best predicts each
    image from the other images of its class (honest only without whitening: a whitening
    fitted on an image flattens that image's own deviations). Returns W [D, C], b [C] and
    the leave-one-out logits (-inf for a class's only image).
    """
    z = x if whitening is None else whitening.apply(x)
    classes = imprint(z, labels, num_classes)
    loo, own = leave_one_out_cosines(classes, z, labels)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    typical = float(np.median(norms))
    relative = loo * (norms / typical)  # logits of a unit temperature, in cosine units
    if scale is not None:
        tau = scale / typical
    elif own.sum() >= 2:
        finite = np.where(np.isfinite(relative), relative, -1.0)
        tau = best_temperature(finite[own], labels[own]) / typical
    else:
        tau = DEFAULT_START_SCALE / typical
    weights = tau * classes.weights.T.astype(np.float64)
    bias = np.zeros(num_classes)
    if whitening is not None:  # z = (x - mean) @ M.T, so z @ W = x @ (M.T @ W) - mean @ ...
        weights = whitening.matrix.T @ weights
        bias = -(whitening.mean @ weights)
    return weights, bias, tau * typical * relative


def imprinting_prior(head: ImprintingHead, num_classes: int) -> Prior:
    """The cross-validated imprinting `head` as SGD's competitor in `choose_reg`: its
    whitening's shrinkage (or none) and its temperature, fitted on the rows given, as a layer
    on raw embeddings. One temperature for every fold and the final fit keeps their logits on
    one scale, so the 8-bit range chosen on the folds' held-out logits fits the final layer
    (a temperature from leave-one-out cosines, inflated by the whitening, did not: 0.23
    agreement on one draw)."""
    shrinkage = None if head.whitening is None else head.whitening.shrinkage

    def layer(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        whitening = None
        if shrinkage is not None:
            whitening = fit_whitening(x, labels, shrinkage, center=False)
        weights, bias, _ = imprinting_start(x, labels, num_classes, whitening, head.scale_factor)
        return weights, bias

    return layer


@dataclass
class SoftmaxHead:
    """A trained softmax-regression head on raw embeddings, and how it was trained.

    `logit_range` is the exported layer's 8-bit range, chosen on logits of images held out
    of cross-validation (left out, for the imprinting fallback).

        >>> import numpy as np
        >>> x = np.eye(4)[np.arange(40) % 4] + 0.1
        >>> given = BackpropOptions(epochs=3, reg=0.01)  # SGD as given, no imprinting rival
        >>> head = SoftmaxHead.fit(x, np.arange(40) % 4, options=given)
        >>> head.weights.shape, len(head.history), head.method
        ((4, 4), 3, 'sgd')
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
    method: str = "sgd"  # or "imprinting": the cross-validated imprinting head as weights
    whitening: float | None = None  # the imprinting head's whitening (its shrinkage)

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
        cross-validated alone, for the held-out logits that set the export range), and the
        cross-validated imprinting head (`ImprintingHead.fit`: whitened where that helps)
        competes on the same folds: it is kept, as a linear layer, unless SGD gets clearly
        more held-out images right. So is it, with a `Fallback` warning, with fewer than
        MIN_PER_CLASS images in some class (nothing to validate) or when SGD diverges.
        `on_fold` and `on_epoch` report progress (a finished fold; an epoch of the final fit).
        """
        x = np.asarray(embeddings, np.float64)
        y = np.asarray(labels, np.int64)
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        imprinted = ImprintingHead.fit(x, y, num_classes, ImprintOptions(), seed)
        whitening = imprinted.whitening
        if np.bincount(y, minlength=num_classes).min() < MIN_PER_CLASS:
            return cls._imprinting(x, y, num_classes, imprinted).fell_back(
                f"fewer than {MIN_PER_CLASS} images in a class: nothing to validate, so the "
                "head is the cross-validated imprinting solution as FULLY_CONNECTED weights"
            )
        lams = REG_GRID if options.reg is None else (options.reg * len(y),)
        shrinkage = None if whitening is None else whitening.shrinkage
        # a penalty given is trained as given; else the imprinting head competes with SGD
        prior = imprinting_prior(imprinted, num_classes) if options.reg is None else None
        try:
            search = choose_reg(x, y, num_classes, options, seed, lams, on_fold, prior)
            if prior is not None and search.choice.reg is None:  # SGD not clearly better
                weights, bias = prior(x, y)
                return cls(
                    weights, bias, reg=None, choice=search.choice,
                    logit_range=logit_window(search.logits), num_train=len(y),
                    method="imprinting", whitening=shrinkage,
                ).sharpened()  # fmt: skip
            features, start = conditioned(x, y, num_classes)
            z = features.apply(x)
            regs = np.array([search.choice.reg])
            weights, bias, history = sgd(z, y, start, regs, options, seed, on_epoch)
            _check_converged(history, num_classes)
        except FloatingPointError as e:
            return cls._imprinting(x, y, num_classes, imprinted).fell_back(
                f"{e}: the head is the imprinting solution instead"
            )
        raw_w, raw_b = features.fold(weights[0], bias[0])
        return cls(
            raw_w, raw_b, history, reg=search.choice.reg,
            choice=search.choice if options.reg is None else None,
            logit_range=logit_window(search.logits), num_train=len(y), whitening=shrinkage,
        ).sharpened()  # fmt: skip

    @classmethod
    def _imprinting(
        cls, x: np.ndarray, y: np.ndarray, num_classes: int, head: ImprintingHead
    ) -> SoftmaxHead:
        """The cross-validated imprinting `head` (its whitening and temperature) as a linear
        layer: the same top-1 as that head."""
        whitening = head.whitening
        weights, bias, held = imprinting_start(x, y, num_classes, whitening, head.scale_factor)
        # The bottom comes from left-out logits (class vectors of one image fewer: a low
        # estimate of an unseen image's best logit), and no higher than the imprinting head's
        # own window (chosen on held-out images) gives at the smallest norm seen. For the top,
        # the in-sample logits, which include each image in its own class, are a high one.
        z = x if whitening is None else whitening.apply(x)
        norms = np.linalg.norm(z, axis=1)
        lowest = head.scale_factor * head.cosine_range[0] * float(norms.min() / np.median(norms))
        lo = min(logit_window(held)[0], lowest)
        in_sample = np.max(x @ weights + bias, axis=1)
        hi = float(in_sample.max()) + LOGIT_HEADROOM * float(np.ptp(in_sample))
        return cls(
            weights, bias, logit_range=(lo, max(hi, lo + 1.0)), num_train=len(y),
            method="imprinting", whitening=None if whitening is None else whitening.shrinkage,
        ).sharpened()  # fmt: skip

    def fell_back(self, reason: str) -> SoftmaxHead:
        """This head, announced as a `Fallback` for `reason` (kept in the summary)."""
        fall_back(reason)
        return replace(self, fallback=reason)

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
            "method": self.method,
            "imprint_whitening": self.whitening,
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
