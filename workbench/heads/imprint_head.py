"""The imprinting head as an estimator: fit on embeddings, score, append itself to a model.

`ImprintingHead.fit` chooses the whitening by cross-validation (`workbench.heads.imprint_cv`),
imprints the classes and sets the exported layers' 8-bit ranges from held-out statistics
(`workbench.heads.calibration`). With a `BaseState` it continues a base model instead: the base's
classes stay, new images are added, and the base's whitening statistics are pooled with the
new images'. `append_to` writes the head onto an extractor graph in Coral's imprinting format.

    >>> import numpy as np
    >>> x = np.abs(np.random.default_rng(0).normal(size=(40, 8))) + np.eye(8)[np.arange(40) % 4]
    >>> head = ImprintingHead.fit(x, np.arange(40) % 4)
    >>> head.scores(x[:2]).shape
    (2, 4)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.core.options import ImprintOptions
from workbench.core.progress import fall_back
from workbench.extract.runtime import cpu_threads
from workbench.heads.calibration import cosine_window, scale_floor, value_range
from workbench.heads.coral_format import training_state_text
from workbench.heads.imprint import (
    ImprintedClasses,
    cosines,
    imprint,
    l2_normalize,
    leave_one_out_cosines,
    softmax,
    widened,
)
from workbench.heads.imprint_cv import (
    PARALLEL_ELEMENTS,
    PLAIN,
    SHRINKAGES,
    Candidate,
    HeldOutScores,
    WhiteningChoice,
    best_temperature,
    choose_whitening,
    cross_validate,
)
from workbench.heads.whitening import (
    DecompositionError,
    Eigen,
    Whitening,
    fit_whitening,
    float_rows,
    scatter_eigen,
)
from workbench.model.export import save_model
from workbench.tflite.graph import Graph
from workbench.tflite.heads import ImprintingTail, Transform, append_imprinting_tail

# Scale factor when no held-out image can be scored against its own class (one image per
# class): about what 2-5 images per class calibrate to, so scores stay modest.
DEFAULT_SCALE_FACTOR = 10.0
# Metadata entry holding the whitening's statistics, so a model can be extended later.
WHITENING_METADATA = "workbench_whitening"


@dataclass(frozen=True)
class BaseState:
    """What continued imprinting keeps of a base model (see `workbench.run.continuing`).

    `classes` are the kept classes (none without keep_classes); `whitening` its statistics
    when the head is re-whitened on the raw extractor; `l2norm` the L2Norm tensor of the
    extractor graph to continue from when it is not (Coral's models, unwhitened ones).
    """

    classes: ImprintedClasses
    cosine_range: tuple[float, float]
    whitening: Whitening | None = None
    value_range: tuple[float, float] | None = None
    l2norm: int | None = None


def cross_validate_and_decompose(
    x: np.ndarray, y: np.ndarray, num_classes: int, candidates: list[Candidate], seed: int
) -> tuple[HeldOutScores, tuple[np.ndarray, Eigen] | None]:
    """The candidates' cross-validation and, beside it, the whole set's scatter decomposition.

    The final whitening needs the decomposition of all training images' scatter whichever
    shrinkage wins; on small sets (where the folds run two at a time) it is one more job for
    the folds' two threads, each with one BLAS thread (on 2,340 images, three folds and it
    make two even rounds; a thread of its own beside the folds' two left the last fold
    running alone).
    Large sets compute it afterwards, when needed, to keep one fold's memory at a time.
    """
    if all(c is PLAIN for c in candidates) or x.size > PARALLEL_ELEMENTS:
        return cross_validate(x, y, num_classes, candidates, seed), None
    workers = min(cpu_threads(), 2)
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        known = pool.submit(scatter_eigen, x, y)
        held_out = cross_validate(x, y, num_classes, candidates, seed, pool=pool)
        return held_out, known.result()


@dataclass
class ImprintingHead:
    """A trained imprinting head: optional whitening, class state, export calibration.

    `cosine_range` and `value_range` (the whitening layer's output, when whitened) are the
    8-bit ranges of the exported layers, set from images held out of cross-validation.

        >>> import workbench as wb
        >>> emb = wb.embed("flowers/")
        >>> plain = ImprintOptions(whiten=False)
        >>> head = ImprintingHead.fit(emb.train_x, emb.train_y, options=plain)
        >>> head.classes.num_classes, head.whitening is None
        (3, True)
        >>> [p.name for p in head.export(emb.extractor, "flowers.tflite", labels=emb.classes)]
        ['flowers.tflite', 'flowers.txt']
    """

    classes: ImprintedClasses
    scale_factor: float
    cosine_range: tuple[float, float]
    whitening: Whitening | None = None
    value_range: tuple[float, float] | None = None
    choice: WhiteningChoice | None = None
    base_l2norm: int | None = None  # continue from this L2Norm tensor when appending

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: np.ndarray,
        num_classes: int | None = None,
        options: ImprintOptions = ImprintOptions(),
        seed: int = 0,
        base: BaseState | None = None,
    ) -> ImprintingHead:
        """Imprint the classes and calibrate the exported head on held-out images.

        `options.whiten` True: cross-validation decides whether and how strongly to whiten;
        False: Coral's plain imprinting; a number: whiten at that shrinkage. With a `base`
        holding classes, see `_continued`.
        """
        x = float_rows(embeddings)
        y = np.asarray(labels, np.int64)
        num_classes = int(y.max()) + 1 if num_classes is None else num_classes
        if base is not None and base.classes.num_classes:
            return cls._continued(x.astype(np.float64, copy=False), y, num_classes, base)
        whiten = False if base is not None and base.l2norm is not None else options.whiten
        if whiten is True:
            candidates: list[float | None] = [PLAIN, *SHRINKAGES]
        else:
            candidates = [PLAIN] if whiten is False else [float(whiten)]
        try:
            held_out, known = cross_validate_and_decompose(x, y, num_classes, candidates, seed)
            choice = choose_whitening(held_out, candidates)
            whitening = None
            if choice.shrinkage is not PLAIN:
                whitening = fit_whitening(x, y, choice.shrinkage, center=False, known=known)
        except DecompositionError as e:
            fall_back(f"whitening skipped: {e}; the head is plain imprinting")
            held_out, _ = cross_validate_and_decompose(x, y, num_classes, [PLAIN], seed)
            choice = choose_whitening(held_out, [PLAIN])
            choice = replace(choice, reason=f"whitening failed ({e})")
            whitening = None
        features = x if whitening is None else whitening.apply(x)
        floor = 0.0 if choice.shrinkage is PLAIN and x.min() >= 0 else -1.0
        scale, window = calibrate(
            held_out.cosines[choice.shrinkage].astype(np.float64), held_out.labels,
            held_out.own_class, num_classes, floor, len(y),
        )  # fmt: skip
        values = None
        if whitening is not None:
            held = held_out.value_range.get(choice.shrinkage)
            values = value_range((float(features.min()), float(features.max())), held)
        return cls(
            imprint(features, y, num_classes), scale, window, whitening, values, choice,
            base_l2norm=None if base is None else base.l2norm,
        )  # fmt: skip

    @classmethod
    def _continued(
        cls, x: np.ndarray, y: np.ndarray, num_classes: int, base: BaseState
    ) -> ImprintingHead:
        """New images imprinted onto a base's classes, calibrated by leave-one-out.

        With the base's whitening statistics the whitening is refitted on old and new images
        pooled, and the base's class vectors are carried into the new whitened space. The
        base's images are not here, so the held-out statistics are the new images'
        leave-one-out cosines (exact for the class sums; the pooled whitening includes them,
        a small optimism when the base brought many images), and the windows also cover the
        base's, which its own images needed.
        """
        state, whitening = base.classes, None
        if base.whitening is not None:
            try:
                whitening = base.whitening.pooled_with(x, y)
                carried = l2_normalize(base.whitening.carry(state.sums, whitening))
                state = replace(state, sums=carried * state.norms[:, None])
            except (DecompositionError, np.linalg.LinAlgError) as e:
                # The base's whitening as it is: its class vectors stay valid in its space.
                fall_back(
                    f"the base's whitening could not be pooled with the new images ({e}); "
                    "it is kept as the base model had it"
                )
                whitening = base.whitening
        features = x if whitening is None else whitening.apply(x)
        classes = imprint(features, y, num_classes, base=state)
        loo, own = leave_one_out_cosines(classes, features, y)
        floor = 0.0 if whitening is None and x.min() >= 0 else -1.0
        scale, window = calibrate(loo, y, own, num_classes, floor, len(y))
        values = None
        if whitening is not None:
            training = (float(features.min()), float(features.max()))
            values = widened(value_range(training, None), base.value_range)
        return cls(
            classes, scale, widened(window, base.cosine_range), whitening, values,
            base_l2norm=base.l2norm,
        )  # fmt: skip

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """What the class vectors are compared with: whitened embeddings, or raw ones."""
        return embeddings if self.whitening is None else self.whitening.apply(embeddings)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The float head: softmax(scale_factor * cos), what the exported model approximates."""
        return softmax(self.scale_factor * cosines(self.classes, self.features(embeddings)))

    def append_to(self, graph: Graph) -> ImprintingTail:
        """Append this head behind the graph's output (or its base L2Norm), Coral's format.

        The description gets Coral's per-class training state; a whitened head also stores
        its whitening statistics, so the model can be continued later.
        """
        classes = self.classes
        if self.base_l2norm is not None:
            tail = append_imprinting_tail(
                graph, classes.weights, self.scale_factor, self.cosine_range,
                embedding=self.base_l2norm,
            )  # fmt: skip
        else:
            layer = None
            if self.whitening is not None and self.value_range is not None:
                w = self.whitening
                layer = Transform(w.matrix, w.bias, self.value_range)
            tail = append_imprinting_tail(
                graph, classes.weights, self.scale_factor, self.cosine_range, transform=layer
            )
        graph.set_description(training_state_text(classes.norms, classes.trainable))
        if self.whitening is not None:
            graph.set_metadata(WHITENING_METADATA, self.whitening.to_bytes())
        return tail

    def export(
        self, extractor: str | Path | Graph, output: str | Path, labels: list[str]
    ) -> tuple[Path, Path]:
        """Write extractor + this head to `output` and its labels file; returns both paths."""
        graph = Graph.load(extractor) if not isinstance(extractor, Graph) else extractor
        graph = Graph.from_bytes(graph.to_bytes())
        tail = self.append_to(graph)
        return save_model(
            graph, output, labels, {"trainer": "imprint", "l2norm_tensor": tail.l2norm_output},
            inputs=[extractor] if not isinstance(extractor, Graph) else [],
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """How the head was made, for the report."""
        choice = self.choice
        return {
            "scale_factor": self.scale_factor,
            "cosine_range": list(self.cosine_range),
            "embedding_dim": self.classes.dim,
            "whitening": None if self.whitening is None else self.whitening.shrinkage,
            "whitening_choice": None
            if choice is None
            else {
                "held_out_loss": choice.losses,
                "held_out_images": choice.held_out_rows,
                "reason": choice.reason,
            },
        }


def calibrate(
    cos: np.ndarray,
    labels: np.ndarray,
    own_class: np.ndarray,
    num_classes: int,
    floor: float = -1.0,
    images: int | None = None,
) -> tuple[float, tuple[float, float]]:
    """Scale factor and cosine window from held-out cosines (see `workbench.heads.calibration`).

    `floor` is the lowest best cosine possible (0 for non-negative, unwhitened embeddings),
    `images` how many distinct images the held-out rows are.
    """
    scored = own_class & np.isfinite(cos[np.arange(len(labels)), labels])
    if scored.sum() >= 2:
        finite = np.where(np.isfinite(cos[scored]), cos[scored], -1.0)
        scale = best_temperature(finite, labels[scored])
    else:
        scale = DEFAULT_SCALE_FACTOR
    window = cosine_window(cos, labels, scored, scale, floor, images)
    return max(scale, scale_floor(window, num_classes)), window


def stored_whitening(graph: Graph) -> Whitening | None:
    """The whitening statistics a workbench imprinting model carries, if any (and readable)."""
    data = graph.metadata(WHITENING_METADATA)
    if not data:
        return None
    try:
        return Whitening.from_bytes(data)
    except (ValueError, KeyError, OSError, EOFError):
        return None
