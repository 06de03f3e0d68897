"""Last-layer backprop with pycoral's `SoftmaxRegression` interface.

Same constructor, training loop and serialization as pycoral: mini-batches sampled with
replacement for `num_iter` iterations, plain SGD, and the FC + softmax layer appended to the
extractor with Coral's quantization. One deliberate difference: `reg` enters the gradient
(pycoral only adds it to the printed loss), so a non-zero `reg` regularizes as documented.
For workbench's own trainer (epochs, momentum, validation-based selection) see
`workbench.heads.backprop`.

Arguments are checked where pycoral's binding takes them (the constructor, `train_with_sgd`):
one that is not a number of the right kind is a TypeError, as pybind11's "incompatible
arguments"; a number that cannot work (no features or classes, an empty batch, a learning
rate that is NaN, infinite or not positive) is a ValueError at once, rather than a numpy
error later, a model that silently trains nothing, or NaN weights that only
`serialize_model` trips over.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.heads.backprop import SoftmaxRegression as _Model
from workbench.model.export import pycoral_model_bytes, set_workbench_metadata
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail, embedding_output
from workbench.tflite.quant import representable

# The narrowest logit range written: 8-bit levels over a zero-width range would divide by 0.
MIN_LOGIT_SPAN = 1e-3


def _covering(lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi) widened symmetrically to at least MIN_LOGIT_SPAN."""
    pad = max(0.0, MIN_LOGIT_SPAN - (hi - lo)) / 2
    return lo - pad, hi + pad


def logit_bound(
    weights: np.ndarray, bias: np.ndarray, inputs: tuple[float, float]
) -> tuple[float, float]:
    """The smallest and largest logit x W + b can reach for any x with values in `inputs`.

    Each term w x is extreme at an end of the input range, so the bound is exact per class;
    over classes it is the range every logit of every possible input lies in. This is the
    range of a model that has seen no data (nothing narrower is known to hold).
    """
    lo_x, hi_x = inputs
    ends = np.stack([weights * lo_x, weights * hi_x])  # [2, D, C]
    lows = bias + ends.min(axis=0).sum(axis=0)
    highs = bias + ends.max(axis=0).sum(axis=0)
    return float(lows.min()), float(highs.max())


def _whole(name: str, value: Any, low: int | None) -> int:
    """`value` as an int of at least `low`: TypeError if it is no integer, ValueError if low."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # ints and numpy integers; not floats, None or text
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if low is not None and number < low:
        raise ValueError(f"{name} must be at least {low}, got {number}")
    return number


def _real(name: str, value: Any, positive: bool = False, low: float | None = None) -> float:
    """`value` as a finite float (TypeError if it is no number, ValueError if not finite or
    below the bound)."""
    if isinstance(value, bool | str | bytes) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    if positive and number <= 0:
        raise ValueError(f"{name} must be greater than 0, got {number}")
    if low is not None and number < low:
        raise ValueError(f"{name} must be at least {low}, got {number}")
    return number


class SoftmaxRegression:
    """pycoral.learn.backprop.softmax_regression.SoftmaxRegression, in numpy."""

    def __init__(
        self,
        feature_dim: int | None = None,
        num_classes: int | None = None,
        weight_scale: float = 0.01,
        reg: float = 0.0,
    ) -> None:
        self.feature_dim = _whole("feature_dim", feature_dim, 1)
        self.num_classes = _whole("num_classes", num_classes, 1)
        weight_scale = _real("weight_scale", weight_scale)
        self.reg = _real("reg", reg, low=0.0)
        # Drawn from numpy's global generator, as pycoral does, so np.random.seed() applies.
        self.params = {
            "mat_w": weight_scale * np.random.randn(self.feature_dim, self.num_classes),
            "vec_b": np.zeros(self.num_classes),
        }
        # Range of the logits seen in training (None until trained): the exported layer's
        # 8-bit range. libcoral likewise quantizes the logits over the range training saw.
        self.logit_range: tuple[float, float] | None = None

    def _model(self) -> _Model:
        model = _Model(self.feature_dim, self.num_classes, weight_scale=0.0, reg=self.reg)
        model.weights = self.params["mat_w"]
        model.bias = self.params["vec_b"]
        return model

    def _checked(self, mat_x: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings [N, feature_dim] and labels in [0, num_classes), or RuntimeError.

        pycoral's C++ model reports bad data as RuntimeError (or aborts); here every such
        problem is a RuntimeError that says what is wrong.
        """
        x = np.asarray(mat_x, np.float64)
        y = np.asarray(labels).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise RuntimeError(
                f"{what}: expected embeddings of shape [N, {self.feature_dim}], got {list(x.shape)}"
            )
        if len(y) != len(x):
            raise RuntimeError(f"{what}: {len(x)} embeddings but {len(y)} labels")
        if not np.isfinite(x).all():
            raise RuntimeError(f"{what}: the embeddings hold NaN or infinite values")
        if len(y) and (
            not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.num_classes
        ):
            raise RuntimeError(
                f"{what}: labels must be integers in [0, {self.num_classes}), got "
                f"{y.min()}..{y.max()}"
            )
        return x, y.astype(np.int64)

    def get_accuracy(self, mat_x: np.ndarray, labels: np.ndarray) -> float:
        """Share of rows of `mat_x` whose highest logit is their label (0.0 to 1.0)."""
        x, y = self._checked(mat_x, labels, "get_accuracy")
        return self._model().accuracy(x, y)

    def train_with_sgd(
        self,
        data: dict[str, Any],
        num_iter: int,
        learning_rate: float,
        batch_size: int = 100,
        print_every: int = 100,
    ) -> None:
        """SGD on `data` (keys data_train, labels_train, data_val, labels_val).

        Every `print_every` iterations (0 or less: never) the batch loss and the training and
        validation accuracy are printed, as pycoral logs them. `num_iter` may be 0 (nothing is
        trained); `batch_size` must be at least 1 and `learning_rate` a finite number above 0.
        """
        num_iter = _whole("num_iter", num_iter, 0)
        batch_size = _whole("batch_size", batch_size, 1)
        learning_rate = _real("learning_rate", learning_rate, positive=True)
        print_every = _whole("print_every", print_every, None)
        x, y = self._checked(data["data_train"], data["labels_train"], "training data")
        if not len(y):
            raise RuntimeError("training data: no embeddings to train on")
        val_x = val_y = None
        if data.get("data_val") is not None and data.get("labels_val") is not None:
            val_x, val_y = self._checked(data["data_val"], data["labels_val"], "validation data")
        model = self._model()
        for i in range(num_iter):
            batch = np.random.choice(len(y), batch_size)
            loss = model.step_sgd(x[batch], y[batch], learning_rate)
            if print_every > 0 and i % print_every == 0:
                val = (
                    100 * model.accuracy(val_x, val_y)
                    if val_x is not None and val_y is not None
                    else float("nan")
                )
                print(
                    f"Loss {loss:.2f}, train acc {100 * model.accuracy(x, y):.2f}%, "
                    f"val acc {val:.2f}%"
                )
        self.params["mat_w"], self.params["vec_b"] = model.weights, model.bias
        # The range covers the trained layer's logits on every image it was given, held-out
        # validation images included, so those do not clip.
        logits = model.logits(x if val_x is None or not len(val_x) else np.vstack([x, val_x]))
        self.logit_range = _covering(float(logits.min()), float(logits.max()))

    def serialize_model(self, in_model_path: str | Path) -> bytes:
        """The extractor at `in_model_path` with the FC + softmax layer appended.

        Works before training too, as libcoral's does (pycoral's own test serializes an
        untrained model): the initial weights are written, their logits quantized over the
        range they can reach for any output of the extractor (`logit_bound`). A missing or
        unreadable file raises ValueError("Failed to open file: ..."), as pycoral does.
        """
        try:
            graph = Graph.load(in_model_path)
        except WorkbenchError as e:
            raise ValueError(f"Failed to open file: {in_model_path} ({e})") from None
        weights, bias = self.params["mat_w"], self.params["vec_b"]
        with np.errstate(over="ignore"):  # the layer is float32, as libcoral's
            finite = (
                np.isfinite(np.asarray(weights, np.float32)).all()
                and np.isfinite(np.asarray(bias, np.float32)).all()
            )
        if not finite:
            raise ValueError(
                "the weights are not finite 32-bit numbers (training diverged: use a smaller "
                "learning_rate), so they cannot be quantized"
            )
        try:
            logit_range = self.logit_range or self._untrained_range(graph, weights, bias)
            append_softmax_regression_tail(graph, weights.T, bias, logit_range)
        except WorkbenchError as e:
            raise ValueError(f"Cannot append the layer to {in_model_path}: {e}") from None
        set_workbench_metadata(graph, {"trainer": "backprop", "api": "pycoral"})
        return pycoral_model_bytes(graph, "backprop")

    @staticmethod
    def _untrained_range(
        graph: Graph, weights: np.ndarray, bias: np.ndarray
    ) -> tuple[float, float]:
        """The logits' reach over the extractor's whole 8-bit output range (see logit_bound)."""
        output, _ = embedding_output(graph)
        quant = graph.quant(output)
        dtype = graph.dtype(output)
        if quant is None or dtype == np.float32:
            return -1.0, 1.0  # a float tail is not quantized: the range is not used
        return _covering(*logit_bound(weights, bias, representable(quant, dtype)))
