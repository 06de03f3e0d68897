"""The 8-bit ranges of an exported head, chosen for images it was not trained on.

An 8-bit tensor resolves 256 levels of a fixed range. Too wide a range and images whose two
best classes are close get the same level (a tie the exported model breaks by class index);
too narrow and values outside it clip. What matters is where unseen images fall, so every
range here comes from held-out statistics (cross-validation or leave-one-out), from analytic
bounds (a cosine lies in [-1, 1]), or both, and never from the training images' own outputs,
which a head fits more tightly than anything it will see later.
"""

from __future__ import annotations

import numpy as np

from workbench.tflite.graph import Graph
from workbench.tflite.quant import representable

# A held-out statistic's range is widened to mean +- SPREAD standard deviations (at least to
# its extremes), then by MARGIN: the final head was fitted on more images than each fold's.
SPREAD = 3.0
MARGIN = 0.02
# The window's bottom sits this much lower (at most) so that classes clipped to it keep under
# 1% of the probability of an image whose best class is at the estimated low end.
MAX_DEPTH = 0.05
# Fewer held-out images than this say nothing reliable about the low tail of unseen images'
# best cosines; the window's bottom is then the analytic bound. Measured through pycoral's
# engine on flower_photos over Coral's MobileNet v1 extractor (60 draws of 3 classes, 20
# held-out photos each): with 1 training image per class an estimated bottom gave 3.2% of
# held-out photos the same score for every class (top-1 agreement 96.9%), the bound 0.03%
# (99.2%); with 2 per class 0.64% and 98.9% before, none and 99.1% after.
MIN_HELD_OUT = 10
# Share of a layer's span added on both sides of an activation range (whitening output).
VALUE_HEADROOM = 0.25
# Share of the held-out best logits' spread added above them (see `logit_window`).
LOGIT_HEADROOM = 0.25


def _low(values: np.ndarray) -> float:
    return float(min(values.min(), values.mean() - SPREAD * values.std()))


def _high(values: np.ndarray) -> float:
    return float(max(values.max(), values.mean() + SPREAD * values.std()))


def best_and_runner_up(
    scores: np.ndarray, labels: np.ndarray, own_class: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best and second-best held-out score of each row (-inf marks an absent class).

    Where a row's own class was absent from training, the best score over the other classes
    is a lower bound of its best and an upper bound of its second best once its class is in:
    both are returned as that value, which keeps the window estimates conservative.
    """
    ordered = np.sort(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    best = ordered[:, -1]
    second = np.where(own_class, ordered[:, -2], best) if scores.shape[1] > 1 else best
    second = np.where(np.isfinite(second), second, best)
    return best, second


def cosine_window(
    cosines: np.ndarray,
    labels: np.ndarray,
    own_class: np.ndarray,
    scale_factor: float,
    floor: float = -1.0,
    images: int | None = None,
) -> tuple[float, float]:
    """The cosines the exported imprinting head resolves: around unseen images' best class.

    The bottom is a low estimate of held-out images' best cosine (below it, every class is
    clipped and the scores go flat), lowered by up to MAX_DEPTH so clipped classes hold under
    1% of the probability. Fewer
    than MIN_HELD_OUT held-out `images` (rows, by default) cannot support an estimate of a
    low tail: the bottom is then `floor`, the analytic bound (see `best_cosine_floor`). The
    top is a high estimate of the best cosine when held-out images were scored against their
    own class, otherwise 1 (a cosine's bound).
    """
    best, _ = best_and_runner_up(cosines, labels, own_class)
    seen = np.isfinite(best)
    if not seen.any():
        return floor, 1.0
    num_classes = cosines.shape[1]
    depth = min(float(np.log(100.0 * max(num_classes - 1, 1))) / scale_factor, MAX_DEPTH)
    lo = _low(best[seen]) - MARGIN - depth
    if (images if images is not None else int(seen.sum())) < MIN_HELD_OUT:
        lo = floor
    lo = max(lo, floor, -1.0)
    scored = best[seen & own_class]
    hi = min(1.0, _high(scored) + MARGIN) if len(scored) >= 2 else 1.0
    return lo, max(hi, lo + 1e-3)


def best_cosine_floor(extractor: Graph, embedding: int) -> float:
    """The lowest cosine an image's best class can have: 0 if the L2Norm input is never < 0.

    Coral's extractors end in ReLU6 + average pooling, so their embeddings, and the class
    vectors imprinted from them, have no negative component: every cosine between the two is
    at least 0, and an image's best class too. Otherwise (a whitened or float extractor) only
    the bound of any cosine, -1, is known.
    """
    producer = extractor.producer(embedding)
    if producer is None:
        return -1.0
    source = int(extractor.operators[producer].inputs[0])
    quant = extractor.quant(source)
    dtype = extractor.dtype(source)
    if quant is None or dtype == np.float32:
        return -1.0
    return 0.0 if representable(quant, dtype)[0] >= 0.0 else -1.0


def scale_floor(window: tuple[float, float], num_classes: int) -> float:
    """The smallest logit scale at which adjacent cosine levels give different 8-bit scores.

    Two classes one level apart differ in logit by scale x step; their probabilities differ
    by about p x scale x step, which must reach one output level (1/256) for a best class
    holding p >= 1/min(C, 10) of the probability.
    """
    step = (window[1] - window[0]) / 255.0
    return min(num_classes, 10) / (256.0 * step)


def sharpening(window: tuple[float, float], num_classes: int) -> float:
    """The factor (>= 1) by which logits must grow so adjacent 8-bit levels stay apart.

    The same reasoning as `scale_floor`, for a layer whose output is the logits: one level
    (width / 255) must move a best class holding p >= 1/min(C, 10) by one output level.
    """
    needed = min(num_classes, 10) * 255.0 / 256.0
    return max(1.0, needed / max(window[1] - window[0], 1e-12))


def value_range(
    training: tuple[float, float], held_out: tuple[float, float] | None
) -> tuple[float, float]:
    """An activation range covering training and held-out values, with headroom."""
    lo, hi = training
    if held_out is not None:
        lo, hi = min(lo, held_out[0]), max(hi, held_out[1])
    pad = VALUE_HEADROOM * (hi - lo)
    return lo - pad, hi + pad


def logit_window(logits: np.ndarray) -> tuple[float, float]:
    """The logits the exported FULLY_CONNECTED resolves, from held-out logits [N, C].

    The top covers held-out images' best logit; the bottom is a low estimate of it, lowered
    by log(100 (C - 1)) so that classes clipped to it keep under 1% of the probability, but
    by at most half the best logits' spread: every level spent below them is lost to telling
    the best two apart, which matters most when they are bunched (few images, soft scores).
    """
    best = np.max(logits, axis=1)
    lo, hi = _low(best), _high(best)
    # The final head is fitted on all images, the held-out logits come from heads fitted on
    # part of them: its logits run larger, so the top gets more room than the bottom.
    spread = max(hi - lo, 1.0)
    depth = min(float(np.log(100.0 * max(logits.shape[1] - 1, 1))), spread / 2)
    return lo - MARGIN * spread - depth, hi + LOGIT_HEADROOM * spread
