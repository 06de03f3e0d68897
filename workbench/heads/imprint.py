"""Weight imprinting (Qi et al., 2018), as Coral does it: class sums of normalized embeddings.

A class's weight is the normalized sum of its L2-normalized embeddings, so a class can be added
or extended at any time from its own images alone. The norm of each class's sum is kept (Coral
stores it in the model description) so training can continue later exactly where it stopped.
The trained head, its whitening and its export are `workbench.heads.imprint_head`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.core.errors import WorkbenchError
from workbench.heads.whitening import float_rows


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32 stays float32; anything else becomes float64)."""
    x = float_rows(x)
    norms = np.sqrt(np.einsum("...d,...d->...", x, x, dtype=np.float64))[..., None]
    return x / np.maximum(norms, 1e-12).astype(x.dtype)


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
    embeddings = float_rows(embeddings)  # float32 rows are summed in float64, not copied
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
    unit = l2_normalize(embeddings)
    for c in np.unique(labels):  # per-class sums: far faster than np.add.at on many rows
        sums[c] += unit[labels == c].sum(axis=0, dtype=np.float64)
    np.add.at(counts, labels, 1)
    empty = [c for c in range(num_classes) if trainable[c] and not sums[c].any()]
    if empty:
        raise WorkbenchError(
            f"classes {empty} have no training embeddings, or only all-zero ones (an "
            "extractor whose outputs are all 0 for these images gives nothing to imprint)"
        )
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
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines as if each training image had not been imprinted into its own class.

    Scoring training images against class vectors that contain them is optimistic; removing
    the image's own contribution (exact, since a class vector is a plain sum) is not. The
    only image of its class has nothing left to compare with: its own class is -inf, and the
    second array (rows that still had their class) is False for it.
    """
    unit = l2_normalize(embeddings)
    cos = unit @ classes.weights.T.astype(np.float64)
    own_sums = classes.sums[labels]  # [N, D]
    dot = np.einsum("nd,nd->n", unit, own_sums) - 1.0
    norm_sq = np.einsum("nd,nd->n", own_sums, own_sums) - 2.0 * (dot + 1.0) + 1.0
    alone = norm_sq < 1e-9
    rows = np.arange(len(labels))
    cos[rows, labels] = np.where(alone, -np.inf, dot / np.sqrt(np.maximum(norm_sq, 1e-18)))
    return cos, ~alone


def widened(window: tuple[float, float], other: tuple[float, float] | None) -> tuple[float, float]:
    """The smallest range covering both (`window` itself when there is no other)."""
    return window if other is None else (min(window[0], other[0]), max(window[1], other[1]))
