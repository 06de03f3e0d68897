"""Weight imprinting (Qi et al., 2018), as Coral does it, plus what the export needs.

A class's weight is the normalized sum of its L2-normalized embeddings, so a class can be added
or extended at any time from its own images alone. The norm of each class's sum is kept (Coral
stores it in the model description) so training can continue later exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.whitening import Whitening, fit_whitening

# Margin around the cosines seen in training when choosing the 8-bit window of the exported
# model: held-out images come a little closer to or further from the class vectors.
COSINE_MARGIN = 0.02
SCALE_FACTOR_GRID = np.geomspace(1.0, 200.0, 64)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class ImprintedClasses:
    """The state of an imprinting head: one row per class.

    `sums` holds the (unnormalized) sum of normalized embeddings for classes trained by
    imprinting; base-model classes that were not (`trainable` False) keep their weight there.
    """

    sums: np.ndarray  # [C, D] float64
    trainable: np.ndarray  # [C] bool
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # images per class

    @property
    def num_classes(self) -> int:
        return int(self.sums.shape[0])

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    @property
    def weights(self) -> np.ndarray:
        """Unit-norm class vectors [C, D]: what the 1x1 convolution holds."""
        return l2_normalize(self.sums).astype(np.float32)

    @property
    def norms(self) -> np.ndarray:
        """Norm of each class sum (Coral's per-class training state)."""
        return np.linalg.norm(self.sums, axis=1)

    @classmethod
    def empty(cls, dim: int) -> ImprintedClasses:
        return cls(np.zeros((0, dim)), np.zeros(0, bool), np.zeros(0, np.int64))


def imprint(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    base: ImprintedClasses | None = None,
) -> ImprintedClasses:
    """Add each embedding (normalized) to its class sum; classes beyond `base` are new.

    A label that names a base class not trained by imprinting is refused, as Coral does: its
    weight came from elsewhere and summing into it would be meaningless.
    """
    embeddings = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels, np.int64)
    dim = embeddings.shape[1]
    state = base if base is not None else ImprintedClasses.empty(dim)
    if state.dim != dim:
        raise ValueError(f"embeddings are {dim}-d, the base head has {state.dim}-d classes")
    if num_classes < state.num_classes:
        raise ValueError("num_classes cannot drop classes of the base head")
    sums = np.zeros((num_classes, dim))
    sums[: state.num_classes] = state.sums
    trainable = np.ones(num_classes, bool)
    trainable[: state.num_classes] = state.trainable
    counts = np.zeros(num_classes, np.int64)
    counts[: len(state.counts)] = state.counts
    frozen = sorted({int(c) for c in labels if c < state.num_classes and not state.trainable[c]})
    if frozen:
        raise ValueError(f"classes {frozen} come from the base model and cannot be retrained")
    np.add.at(sums, labels, l2_normalize(embeddings))
    np.add.at(counts, labels, 1)
    empty = [c for c in range(num_classes) if trainable[c] and not sums[c].any()]
    if empty:
        raise ValueError(f"classes {empty} have no training embeddings")
    return ImprintedClasses(sums, trainable, counts)


def cosines(classes: ImprintedClasses, embeddings: np.ndarray) -> np.ndarray:
    """cos(embedding, class vector) for every pair: [N, C]."""
    return l2_normalize(embeddings) @ classes.weights.T.astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def leave_one_out_cosines(
    classes: ImprintedClasses, embeddings: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Cosines as if each training image had not been imprinted into its own class.

    Scoring training images against class vectors that contain them is optimistic; removing
    the image's own contribution (exact, since a class vector is a plain sum) is not.
    """
    unit = l2_normalize(embeddings)
    cos = unit @ classes.weights.T.astype(np.float64)
    own_sums = classes.sums[labels]  # [N, D]
    dot = np.einsum("nd,nd->n", unit, own_sums) - 1.0
    norm_sq = np.einsum("nd,nd->n", own_sums, own_sums) - 2.0 * (dot + 1.0) + 1.0
    alone = norm_sq < 1e-9  # the only image of its class: nothing left to compare with
    rows = np.arange(len(labels))
    cos[rows, labels] = np.where(
        alone, cos[rows, labels], dot / np.sqrt(np.maximum(norm_sq, 1e-18))
    )
    return cos


def fit_scale_factor(cos: np.ndarray, labels: np.ndarray) -> float:
    """The logit scale (softmax temperature) that best predicts the labels: calibrated scores.

    It does not change the top-1 class, only how confident the scores are.
    """
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    best, best_loss = float(SCALE_FACTOR_GRID[0]), np.inf
    for s in SCALE_FACTOR_GRID:
        logits = s * cos
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits[rows, labels] - np.log(np.exp(logits).sum(axis=1))
        loss = -float(log_p.mean())
        if loss < best_loss:
            best, best_loss = float(s), loss
    return best


def cosine_window(cos: np.ndarray, scale_factor: float) -> tuple[float, float]:
    """The cosines the exported model resolves with its 256 levels: around each image's top-1.

    Only an image's best class must be told apart from the runner-up, so the levels are spent
    on the range of best-class cosines (about half the range of all cosines). A class below
    the window is clipped to its bottom; the bottom sits low enough that even for the training
    image with the weakest best class, the clipped classes together keep under 1% of the
    probability: e^(-s * depth) * (C - 1) <= 0.01.
    """
    top1 = cos.max(axis=1)
    num_classes = cos.shape[1]
    depth = max(COSINE_MARGIN, float(np.log(100.0 * max(num_classes - 1, 1))) / scale_factor)
    lo = max(-1.0, float(top1.min()) - depth)
    hi = min(1.0, float(top1.max()) + COSINE_MARGIN)
    return lo, max(hi, lo + 1e-3)


def widened(window: tuple[float, float], other: tuple[float, float] | None) -> tuple[float, float]:
    """The smallest range covering both (`window` itself when there is no other)."""
    return window if other is None else (min(window[0], other[0]), max(window[1], other[1]))


@dataclass
class ImprintingHead:
    """A trained imprinting head: optional whitening, class state, export calibration."""

    classes: ImprintedClasses
    scale_factor: float
    cosine_range: tuple[float, float]
    whitening: Whitening | None = None

    def features(self, embeddings: np.ndarray) -> np.ndarray:
        """What the class vectors are compared with: whitened embeddings, or raw ones."""
        return embeddings if self.whitening is None else self.whitening.apply(embeddings)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """The float head: softmax(scale_factor * cos), what the exported model approximates."""
        return softmax(self.scale_factor * cosines(self.classes, self.features(embeddings)))


def train_imprinting(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    whiten: bool = True,
) -> ImprintingHead:
    """Imprint the classes (after whitening, by default) and calibrate the exported head."""
    labels = np.asarray(labels)
    whitening = fit_whitening(embeddings, labels) if whiten else None
    features = embeddings if whitening is None else whitening.apply(embeddings)
    classes = imprint(features, labels, num_classes)
    loo = leave_one_out_cosines(classes, features, labels)
    scale_factor = fit_scale_factor(loo, labels)
    return ImprintingHead(classes, scale_factor, cosine_window(loo, scale_factor), whitening)
