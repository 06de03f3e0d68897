"""Last-layer backprop with pycoral's `SoftmaxRegression` interface.

Same constructor, training loop and serialization as pycoral: mini-batches sampled with
replacement for `num_iter` iterations, plain SGD, and the FC + softmax layer appended to the
extractor with Coral's quantization. One deliberate difference: `reg` enters the gradient
(pycoral only adds it to the printed loss), so a non-zero `reg` regularizes as documented.
For workbench's own trainer (epochs, momentum, validation-based selection) see
`workbench.backprop`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.backprop import SoftmaxRegression as _Model
from workbench.export import set_workbench_metadata
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail


class SoftmaxRegression:
    """pycoral.learn.backprop.softmax_regression.SoftmaxRegression, in numpy."""

    def __init__(
        self,
        feature_dim: int | None = None,
        num_classes: int | None = None,
        weight_scale: float = 0.01,
        reg: float = 0.0,
    ) -> None:
        if feature_dim is None or num_classes is None:
            raise ValueError("feature_dim and num_classes are required")
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.reg = reg
        # Drawn from numpy's global generator, as pycoral does, so np.random.seed() applies.
        self.params = {
            "mat_w": weight_scale * np.random.randn(self.feature_dim, self.num_classes),
            "vec_b": np.zeros(self.num_classes),
        }
        self.logit_range: tuple[float, float] | None = None

    def _model(self) -> _Model:
        model = _Model(self.feature_dim, self.num_classes, weight_scale=0.0, reg=self.reg)
        model.weights = self.params["mat_w"]
        model.bias = self.params["vec_b"]
        return model

    def get_accuracy(self, mat_x: np.ndarray, labels: np.ndarray) -> float:
        """Share of rows of `mat_x` whose highest logit is their label."""
        return self._model().accuracy(mat_x, labels)

    def train_with_sgd(
        self,
        data: dict[str, Any],
        num_iter: int,
        learning_rate: float,
        batch_size: int = 100,
        print_every: int = 100,
    ) -> None:
        """SGD on `data` (keys data_train, labels_train, data_val, labels_val)."""
        x = np.asarray(data["data_train"], np.float64)
        y = np.asarray(data["labels_train"], np.int64)
        val_x = data.get("data_val")
        val_y = data.get("labels_val")
        model = self._model()
        for i in range(num_iter):
            batch = np.random.choice(len(y), batch_size)
            loss = model.step_sgd(x[batch], y[batch], learning_rate)
            if print_every and i % print_every == 0:
                val = (
                    100 * model.accuracy(val_x, val_y)
                    if val_x is not None and val_y is not None and len(val_y)
                    else float("nan")
                )
                print(
                    f"Loss {loss:.2f}, train acc {100 * model.accuracy(x, y):.2f}%, "
                    f"val acc {val:.2f}%"
                )
        self.params["mat_w"], self.params["vec_b"] = model.weights, model.bias
        logits = model.logits(x)
        self.logit_range = (float(logits.min()), float(logits.max()))

    def serialize_model(self, in_model_path: str | Path) -> bytes:
        """The extractor at `in_model_path` with the trained FC + softmax appended."""
        if self.logit_range is None:
            raise RuntimeError("the model is not trained: call train_with_sgd() first")
        graph = Graph.load(in_model_path)
        append_softmax_regression_tail(
            graph, self.params["mat_w"].T, self.params["vec_b"], self.logit_range
        )
        set_workbench_metadata(graph, {"trainer": "backprop", "api": "pycoral"})
        return graph.to_bytes()
