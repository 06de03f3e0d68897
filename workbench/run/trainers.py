"""The trainers `workbench.run.training.train` runs: imprinting and backprop on a folder.

A trainer names the extractor to run, fits its head on the run's embeddings and appends the
head to the extractor graph; continued imprinting from a base model is
`workbench.run.continuing.ContinueImprinting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.core.options import BackpropOptions, ImprintOptions, RunOptions, settings
from workbench.core.progress import Reporter
from workbench.heads.backprop import CV_FOLDS, EpochStats
from workbench.heads.imprint_head import ImprintingHead
from workbench.heads.softmax_head import SoftmaxHead
from workbench.run.training import Fitted, Prepared, Source
from workbench.tflite.graph import Graph


def bundled_source(run: RunOptions) -> Source:
    """The extractor given, or the EfficientNet-Lite0 bundled with workbench."""
    if run.extractor is not None:
        return Source(run.extractor)
    from workbench.models import bundled_model

    return Source(bundled_model())


def identity(num_classes: int) -> np.ndarray:
    return np.arange(num_classes, dtype=np.int64)


@dataclass
class Imprint:
    """Weight imprinting on the folder's classes (whitening chosen by cross-validation)."""

    options: ImprintOptions
    seed: int = 0
    name: str = "imprint"
    min_classes: int = 2

    def source(self, run: RunOptions) -> Source:
        return bundled_source(run)

    def fit(self, prepared: Prepared, reporter: Reporter) -> Fitted:
        embedded, classes = prepared.embedded, list(prepared.split.classes)
        # total 0: a spinner with a word (cross-validating whitening can take a while)
        with reporter.task("imprinting (cross-validating the whitening)", 0):
            head = ImprintingHead.fit(
                embedded.train_x, embedded.train_y, len(classes), self.options, self.seed
            )
        return Fitted(head, classes, identity(len(classes)), {})

    def append(self, fitted: Fitted, graph: Graph) -> dict[str, Any]:
        assert isinstance(fitted.head, ImprintingHead)
        return {"l2norm_tensor": fitted.head.append_to(graph).l2norm_output}

    def settings(self) -> dict[str, Any]:
        return settings(self.options)


@dataclass
class Backprop:
    """Softmax regression trained with SGD (penalty chosen by cross-validation)."""

    options: BackpropOptions
    seed: int = 0
    name: str = "backprop"
    min_classes: int = 2

    def source(self, run: RunOptions) -> Source:
        return bundled_source(run)

    def fit(self, prepared: Prepared, reporter: Reporter) -> Fitted:
        embedded, classes = prepared.embedded, list(prepared.split.classes)
        with reporter.task("training", CV_FOLDS + self.options.epochs) as advance:

            def on_fold(fold: int) -> None:
                following = f"fold {fold + 1}/{CV_FOLDS}" if fold < CV_FOLDS else "final fit"
                advance(1, status=f"choosing reg: {following}")

            advance(0, status=f"choosing reg: fold 1/{CV_FOLDS}")

            def on_epoch(stats: EpochStats) -> None:
                advance(1, status=f"loss {stats.loss:.3f} train {stats.train_accuracy:.3f}")

            head = SoftmaxHead.fit(
                embedded.train_x, embedded.train_y, len(classes), self.options, self.seed,
                on_epoch=on_epoch, on_fold=on_fold,
            )  # fmt: skip
        curve = [stats.to_json() for stats in head.history]
        return Fitted(head, classes, identity(len(classes)), {}, {"training_curve": curve})

    def append(self, fitted: Fitted, graph: Graph) -> dict[str, Any]:
        assert isinstance(fitted.head, SoftmaxHead)
        fitted.head.append_to(graph)
        return {}

    def settings(self) -> dict[str, Any]:
        return settings(self.options)
