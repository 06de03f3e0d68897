"""Weight imprinting with pycoral's `ImprintingEngine` interface.

The engine takes a Coral-format imprinting model, hands out its extractor (the model up to and
including the L2Norm), takes embeddings one at a time, and writes the retrained model in the
same format. workbench's own exports are in this format too, so either tool can continue what
the other started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.calibration import cosine_window, scale_floor
from workbench.coral_format import read_imprinting_model, training_state_text
from workbench.errors import WorkbenchError
from workbench.export import set_workbench_metadata
from workbench.imprint import (
    ImprintedClasses,
    l2_normalize,
    leave_one_out_cosines,
    widened,
)
from workbench.surgery import copy_graph
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_imprinting_tail


class ImprintingEngine:
    """pycoral.learn.imprinting.engine.ImprintingEngine, in numpy.

    With `keep_classes` the base model's classes stay, and those it was trained on by
    imprinting (listed in its description) can take more images; otherwise the new model has
    only the classes trained here, with ids from 0.
    """

    def __init__(self, model_path: str | Path, keep_classes: bool = False) -> None:
        try:
            base = read_imprinting_model(Graph.load(model_path))
        except WorkbenchError as e:
            raise ValueError(str(e)) from None
        self._extractor = base.extractor
        self._embedding = base.embedding
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
        id (num_classes); a base class not trained by imprinting, or an id that skips ahead,
        is refused.
        """
        vector = np.asarray(embedding, np.float64).reshape(-1)
        if vector.size != self.embedding_dim:
            raise ValueError(f"embedding has {vector.size} values, expected {self.embedding_dim}")
        class_id = int(class_id)
        if class_id < 0 or class_id > self.num_classes:
            raise ValueError(
                f"class id {class_id} skips ahead: the next new class is {self.num_classes}"
            )
        state = self._classes
        if class_id < state.num_classes and not state.trainable[class_id]:
            raise ValueError(
                f"class {class_id} comes from the base model and was not trained by "
                "imprinting: it cannot be retrained"
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
        """The retrained model: extractor + Coral's imprinting tail, training state included."""
        if self.num_classes == 0:
            raise RuntimeError("no class has been trained: call train() before serialize_model()")
        classes = self._classes
        scale = self._scale_factor
        if self._trained:
            # Held-out statistics: each image's cosines with itself taken out of its class.
            units = np.stack([u for u, _ in self._trained])
            ids = np.array([c for _, c in self._trained], np.int64)
            loo, own = leave_one_out_cosines(classes, units, ids)
            window = cosine_window(loo, ids, own, scale)
            # keep resolving the base images' cosines too
            window = widened(window, self._base_window)
            scale = max(scale, scale_floor(window, classes.num_classes))
        else:
            window = self._base_window or (-1.0, 1.0)
        graph = copy_graph(self._extractor)
        append_imprinting_tail(graph, classes.weights, scale, window, embedding=self._embedding)
        graph.set_description(training_state_text(classes.norms, classes.trainable))
        set_workbench_metadata(graph, {"trainer": "imprint", "api": "pycoral"})
        return graph.to_bytes()
