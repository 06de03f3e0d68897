"""Weight imprinting with pycoral's `ImprintingEngine` interface.

The engine takes a Coral-format imprinting model, hands out its extractor (the model up to and
including the L2Norm), takes embeddings one at a time, and writes the retrained model in the
same format. workbench's own exports are in this format too, so either tool can continue what
the other started.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.heads.calibration import best_cosine_floor, cosine_window, scale_floor
from workbench.heads.coral_format import (
    TAIL,
    imprinting_problems,
    read_imprinting_model,
    training_state_text,
)
from workbench.heads.imprint import (
    ImprintedClasses,
    l2_normalize,
    leave_one_out_cosines,
    widened,
)
from workbench.model.export import pycoral_model_bytes, set_workbench_metadata
from workbench.model.surgery import copy_graph
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_imprinting_tail

# libcoral's messages (imprinting_engine.cc), which pycoral's tests match.
NO_L2NORM = "Unsupported model architecture. Input model must have an L2Norm layer."
BAD_TAIL = "The last 4 operators must be Conv2d, Mul, Reshape, Softmax"
UNSUPPORTED = "Unsupported model architecture."
NOT_TRAINED = "Model is not trained."
BAD_EMBEDDING = "Invalid weights array shape."
FROZEN_CLASS = "Cannot change the base model classes not trained with imprinting method!"
SKIPS_AHEAD = "The class index of a new category is too large!"


# Held-out best cosines needed before the window's bottom is estimated from them: the lowest
# of n values only sees down to about the 1/(n+1) quantile, and an unseen image whose best
# class falls below the bottom gets every class clipped to it, i.e. the same score for all.
# With fewer (1-3 images of 3 classes give 3-9), the bottom is the analytic bound instead.
def _architecture_error(graph: Graph) -> ValueError | None:
    """libcoral's message for a model that is not in the imprinting format, then why.

    libcoral checks for an L2Norm first, then the last four operators; workbench's own list of
    problems (`coral_format.imprinting_problems`) follows, naming what was found.
    """
    problems = imprinting_problems(graph)
    if not problems:
        return None
    names = graph.op_names()
    if "L2_NORMALIZATION" not in names:
        lead = NO_L2NORM
    elif tuple(names[-len(TAIL) :]) != TAIL:
        lead = BAD_TAIL
    else:
        lead = UNSUPPORTED
    return ValueError(f"{lead} (not an imprinting model (Coral format): {'; '.join(problems)})")


class ImprintingEngine:
    """pycoral.learn.imprinting.engine.ImprintingEngine, in numpy.

    With `keep_classes` the base model's classes stay, and those it was trained on by
    imprinting (listed in its description) can take more images; otherwise the new model has
    only the classes trained here, with ids from 0. Exceptions are pycoral's: ValueError from
    the constructor (unreadable file, not an imprinting model), RuntimeError from `train` and
    `serialize_model`, with libcoral's message first.
    """

    def __init__(self, model_path: str | Path, keep_classes: bool = False) -> None:
        try:
            graph = Graph.load(model_path)
        except WorkbenchError as e:
            raise ValueError(f"Failed to open file: {model_path} ({e})") from None
        error = _architecture_error(graph)
        if error is not None:
            raise error
        try:
            base = read_imprinting_model(graph)
        except WorkbenchError as e:
            raise ValueError(f"{UNSUPPORTED} ({e})") from None
        self._extractor = base.extractor
        self._embedding = base.embedding
        self._floor = best_cosine_floor(base.extractor, base.embedding)
        self._scale_factor = base.scale_factor
        self._base_window = base.cosine_range if keep_classes else None
        dim = base.classes.dim
        self._classes = base.classes if keep_classes else ImprintedClasses.empty(dim)
        self._num_base = self._classes.num_classes
        self._trained: list[tuple[np.ndarray, int]] = []

    @property
    def embedding_dim(self) -> int:
        return self._classes.dim

    @property
    def num_classes(self) -> int:
        """Classes in the model so far: kept base classes plus those trained here."""
        return self._classes.num_classes

    def serialize_extractor_model(self) -> bytes:
        """The extractor: the base model up to its L2Norm output [1, 1, 1, D]."""
        return self._extractor.to_bytes()

    def train(self, embedding: np.ndarray, class_id: int) -> None:
        """Add one embedding (the extractor's output) to class `class_id`.

        `class_id` may be an existing class that was trained by imprinting, or the next new
        id (num_classes). Refused with RuntimeError, as in pycoral: an embedding of the wrong
        size, a base class not trained by imprinting, an id that skips ahead (or is negative).
        """
        vector = np.asarray(embedding, np.float64).reshape(-1)
        if vector.size != self.embedding_dim:
            raise RuntimeError(
                f"{BAD_EMBEDDING} The embedding has {vector.size} values, the extractor "
                f"gives {self.embedding_dim}."
            )
        if not np.isfinite(vector).all():
            raise RuntimeError(f"{BAD_EMBEDDING} The embedding holds NaN or infinite values.")
        class_id = operator.index(class_id)
        state = self._classes
        if class_id < 0:
            raise RuntimeError(f"Invalid class index {class_id}: class ids start at 0.")
        if class_id > state.num_classes:
            raise RuntimeError(
                f"{SKIPS_AHEAD} Class {class_id} skips ahead: the next new class is "
                f"{state.num_classes}."
            )
        if class_id < state.num_classes and not state.trainable[class_id]:
            raise RuntimeError(
                f"{FROZEN_CLASS} Class {class_id} comes from the base model and was not trained "
                "by imprinting (it has no training state in the model description): it cannot "
                "be retrained."
            )
        if class_id == state.num_classes:
            self._classes = ImprintedClasses(
                np.vstack([state.sums, np.zeros((1, state.dim))]),
                np.append(state.trainable, True),
                np.append(state.counts, 0),
            )
        unit = l2_normalize(vector)
        self._classes.sums[class_id] += unit
        self._classes.counts[class_id] += 1
        self._trained.append((unit, class_id))

    def serialize_model(self) -> bytes:
        """The retrained model: extractor + Coral's imprinting tail, training state included.

        The 8-bit cosine window is set for images the engine never saw: from leave-one-out
        cosines of the images trained here (`workbench.heads.calibration.cosine_window`), its bottom
        no higher than any of them and, with too few to estimate it, the analytic bound;
        widened to the base model's window when its classes are kept, with
        a scale factor no lower than the one at which adjacent cosine levels still give
        different 8-bit scores.
        """
        if self.num_classes == 0:
            raise RuntimeError(f"{NOT_TRAINED} Call train() before serialize_model().")
        classes = self._classes
        scale = self._scale_factor
        if self._trained:
            # Held-out statistics: each image's cosines with itself taken out of its class.
            units = np.stack([u for u, _ in self._trained])
            ids = np.array([c for _, c in self._trained], np.int64)
            loo, own = leave_one_out_cosines(classes, units, ids)
            window = cosine_window(loo, ids, own, scale, floor=self._floor)
            # keep resolving the base images' cosines too
            window = widened(window, self._base_window)
            scale = max(scale, scale_floor(window, classes.num_classes))
        else:
            window = self._base_window or (-1.0, 1.0)
        graph = copy_graph(self._extractor)
        append_imprinting_tail(graph, classes.weights, scale, window, embedding=self._embedding)
        graph.set_description(training_state_text(classes.norms, classes.trainable))
        set_workbench_metadata(graph, {"trainer": "imprint", "api": "pycoral"})
        return pycoral_model_bytes(graph, "imprint")
