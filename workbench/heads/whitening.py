"""Within-class whitening of embeddings: z = T (x - mean).

Raw embeddings of a pretrained extractor are dominated by a few directions of large variance
that differ from photo to photo of the same class (light, background, pose). Cosine similarity
is blind to that, so nearest-class-vector decisions (imprinting) are too. Whitening with the
pooled within-class covariance turns those nuisance directions down:

    T = (S_w + mean_eigenvalue(S_w) * I) ^ (-1/2)

The shrinkage toward the identity keeps T well-conditioned with few images, and with no
within-class spread at all (one image per class) T is the identity. Because S_w describes
nuisance variation rather than the classes themselves, T carries over to classes added later.

Imprinting whitens without centering (mean zero): centering on the training mean mixes the
classes' own mean into every embedding, which with a handful of images over a few classes
costs up to 0.08 top-1 on flower_photos. How strongly to whiten (or whether to at all) is
chosen by cross-validation on the training images (`workbench.heads.imprint_cv`), for which
`WithinClassBasis` gives the whitening at every shrinkage from one eigendecomposition.
Backprop conditions its features with a centered whitening (`fit_whitening(center=True)`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from workbench.core.progress import fall_back

# The regularized retry's ridge, as a share of the matrix's mean eigenvalue: far below the
# shrinkage any whitening adds (half the mean eigenvalue or more), so the whitening it gives
# is the same to about a millionth; but it makes a singular matrix (a Gram form, whose
# rank is the images less the classes) positive definite, where LAPACK converges best.
RETRY_RIDGE = 1e-6


class DecompositionError(ArithmeticError):
    """An eigendecomposition failed even regularized: no whitening can be made from it."""


def symmetric_eigen(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.linalg.eigh` of a symmetric matrix, retried regularized if it fails.

    LAPACK's eigensolver can fail to converge (`LinAlgError`) or return non-finite values
    when the BLAS under it is broken: on aarch64 under some OpenBLAS builds it did, on
    scatter matrices that decompose fine elsewhere. The retry decomposes the matrix plus a
    small ridge (RETRY_RIDGE of its mean eigenvalue) and takes the ridge off the eigenvalues
    again, with a `Fallback` warning; if that fails too, DecompositionError, and the
    caller does without whitening.
    """
    matrix = np.asarray(matrix, np.float64)
    if not np.all(np.isfinite(matrix)):
        raise DecompositionError("the scatter matrix has non-finite values")
    first = _eigh(matrix)
    if not isinstance(first, str):
        return first
    level = max(float(np.trace(matrix)) / max(len(matrix), 1), np.finfo(np.float64).tiny)
    ridge = RETRY_RIDGE * level
    ridged = matrix.copy()
    ridged[np.diag_indices(len(matrix))] += ridge
    retry = _eigh(ridged)
    if isinstance(retry, str):
        raise DecompositionError(
            f"the eigendecomposition failed ({first}), and regularized too ({retry})"
        )
    fall_back(
        f"an eigendecomposition failed ({first}); used it regularized by {RETRY_RIDGE:g} "
        "of the mean eigenvalue instead (the whitening is the same to about a millionth)"
    )
    return retry[0] - ridge, retry[1]


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """`np.linalg.eigh(matrix)`, or why it failed."""
    try:
        values, vectors = np.linalg.eigh(matrix)
    except np.linalg.LinAlgError as e:
        return str(e) or "LinAlgError"
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(vectors))):
        return "non-finite eigenvectors"
    return values, vectors


@dataclass(frozen=True)
class Whitening:
    """z = (x - mean) @ matrix.T; `matrix` is symmetric [D, D].

    `scatter` and `count` are the statistics it was made from (pooled within-class scatter
    of `count` embeddings), kept so a model can later be extended with new classes and
    re-whitened with the pooled statistics of old and new images.
    """

    matrix: np.ndarray
    mean: np.ndarray
    scatter: np.ndarray | None = None
    count: int = 0
    shrinkage: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whitened rows; float32 input stays float32 (half the memory on large sets)."""
        x = np.asarray(x)
        dtype = np.float32 if x.dtype == np.float32 else np.float64
        centered = np.subtract(x, self.mean, dtype=dtype)
        return centered @ self.matrix.T.astype(dtype)

    @property
    def bias(self) -> np.ndarray:
        """The affine form z = matrix @ x + bias, as a layer computes it."""
        return -(self.matrix @ self.mean)

    def pooled_with(self, embeddings: np.ndarray, labels: np.ndarray) -> Whitening:
        """The whitening of this one's images and new ones (their classes all new), pooled.

        The centering mean is kept: class vectors made in this whitening's space can then be
        carried into the new one by a linear map (see `carry`).
        """
        if self.scatter is None:
            raise ValueError("this whitening has no statistics to pool with")
        new = np.asarray(embeddings, np.float64)
        total = self.count + len(new)
        pooled = (self.count * self.scatter + len(new) * within_class_scatter(new, labels)) / total
        return whitening_from_scatter(pooled, self.mean, total, self.shrinkage)

    def carry(self, vectors: np.ndarray, into: Whitening) -> np.ndarray:
        """Map vectors of this whitened space into `into`'s: z' = T' T^-1 z.

        Exact for whitened (unnormalized) embeddings; for a class vector, a sum of normalized
        whitened embeddings, it holds to the extent their norms are alike, which is close in
        hundreds of dimensions: on flower_photos it recovers all but 0.001-0.013 of the top-1
        accuracy of whitening every class at once.
        """
        carry = into.matrix @ np.linalg.inv(self.matrix)
        return np.asarray(vectors, np.float64) @ carry.T

    def to_bytes(self) -> bytes:
        """The statistics, compact (float16 upper triangle of the scatter), for a model file.

        Stored uncompressed: float16 covariances compress by under a tenth, and compressing
        took 30-70 ms of every export.
        """
        if self.scatter is None:
            raise ValueError("this whitening has no statistics to store")
        upper = self.scatter[np.triu_indices(len(self.scatter))].astype(np.float16)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            scatter_upper=upper,
            mean=self.mean.astype(np.float32),
            count=np.int64(self.count),
            shrinkage=np.float64(self.shrinkage),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        with np.load(io.BytesIO(data)) as stored:
            mean = stored["mean"].astype(np.float64)
            dim = len(mean)
            scatter = np.zeros((dim, dim))
            scatter[np.triu_indices(dim)] = stored["scatter_upper"].astype(np.float64)
            scatter = scatter + np.triu(scatter, 1).T
            return whitening_from_scatter(
                scatter, mean, int(stored["count"]), float(stored["shrinkage"])
            )


def float_rows(x: np.ndarray) -> np.ndarray:
    """`x` as floats for the [N, D] work: float32 stays float32 (what extraction gives; half
    the memory of large sets), anything else becomes float64. Sums are taken in float64."""
    x = np.asarray(x)
    return x if x.dtype == np.float32 else x.astype(np.float64, copy=False)


def class_means(x: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """[classes, D] mean of each class's rows, in the rows' dtype (zero for absent classes)."""
    labels = np.asarray(labels)
    count = int(labels.max()) + 1 if num_classes is None else num_classes
    means = np.zeros((count, x.shape[1]), x.dtype)
    for c in np.unique(labels):
        means[c] = x[labels == c].mean(axis=0, dtype=np.float64)
    return means


def within_class_residuals(
    embeddings: np.ndarray,
    labels: np.ndarray,
    overwrite: bool = False,
    means: np.ndarray | None = None,
) -> np.ndarray:
    """Each row minus its class mean, [N, D] in the rows' precision (`float_rows`).

    `overwrite` turns `embeddings` into the residuals in place instead of copying them, for
    callers that hold a copy of their own; `means` are the `class_means` if already known.
    """
    x = float_rows(embeddings)
    labels = np.asarray(labels)
    if means is None:
        means = class_means(x, labels)  # before any row is overwritten
    residuals = x if overwrite else x.copy()
    for c in np.unique(labels):
        residuals[labels == c] -= means[c]
    return residuals


def within_class_scatter(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pooled covariance of embeddings around their class means."""
    return _scatter_of(within_class_residuals(embeddings, labels))


def _scatter_of(residuals: np.ndarray) -> np.ndarray:
    return (residuals.T @ residuals).astype(np.float64) / max(len(residuals), 1)


Eigen = tuple[np.ndarray, np.ndarray]
"""(eigenvalues, eigenvectors) of a scatter matrix, as `np.linalg.eigh` gives them."""


def scatter_eigen(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, Eigen]:
    """The within-class scatter and its eigen-decomposition, for `fit_whitening(known=)`.

    Any shrinkage's whitening follows from one decomposition (adding a ridge shifts the
    eigenvalues only), so it can be computed before the shrinkage is chosen. With fewer
    images than dimensions it comes from the smaller Gram form (`within_class_basis`): the
    eigenvectors of the non-zero eigenvalues only, the others being 0 (a 1024-d scatter of
    480 or 750 images: 0.03 or 0.06 s instead of 0.25 s).
    """
    residuals = within_class_residuals(embeddings, labels)  # once, for both
    scatter = _scatter_of(residuals)
    if len(residuals) < residuals.shape[1]:
        basis = _basis_of(residuals)
        return scatter, (basis.eigenvalues, basis.vectors)
    return scatter, symmetric_eigen(scatter)


def whitening_from_scatter(
    scatter: np.ndarray,
    mean: np.ndarray,
    count: int,
    shrinkage: float = 1.0,
    eigen: Eigen | None = None,
) -> Whitening:
    """T = (S + shrinkage * mean_eigenvalue(S) * I) ^ (-1/2), scaled to keep a unit gain.

    `eigen`: the decomposition of S if already known (see `scatter_eigen`); with fewer
    eigenvectors than dimensions, the directions it leaves out have eigenvalue 0.
    """
    dim = len(scatter)
    level = float(np.trace(scatter)) / dim
    ridge = shrinkage * level
    if level <= 0.0:
        matrix = np.eye(dim)
    else:
        if eigen is not None:
            eigenvalues, vectors = eigen[0] + ridge, eigen[1]
        else:
            ridged = scatter.copy()
            ridged[np.diag_indices(dim)] += ridge
            eigenvalues, vectors = symmetric_eigen(ridged)
            del ridged
        eigenvalues = np.maximum(eigenvalues, ridge * 1e-6)
        # Scaled so a typical direction keeps unit gain: only the relative weighting matters
        # to cosines, and values near the input's keep the exported layer's range familiar.
        gains = np.sqrt(ridge / eigenvalues)
        if vectors.shape[1] < dim:  # the directions left out keep gain 1 (eigenvalue 0)
            matrix = np.eye(dim) + (vectors * (gains - 1.0)) @ vectors.T
        else:
            matrix = (vectors * gains) @ vectors.T
    return Whitening(matrix, np.asarray(mean, np.float64), scatter, count, shrinkage)


def fit_whitening(
    embeddings: np.ndarray,
    labels: np.ndarray,
    shrinkage: float = 1.0,
    center: bool = True,
    known: tuple[np.ndarray, Eigen] | None = None,
) -> Whitening:
    """Shrunk within-class whitening (centered on the training mean unless `center` is off).

    `shrinkage` is the multiple of the mean eigenvalue added to every eigenvalue: larger
    values whiten more gently (infinity would leave the embeddings as they are).
    """
    x = float_rows(embeddings)
    mean = x.mean(axis=0, dtype=np.float64) if center else np.zeros(x.shape[1])
    if known is not None:  # (scatter, its eigen-decomposition) from `scatter_eigen`
        return whitening_from_scatter(known[0], mean, len(x), shrinkage, eigen=known[1])
    return whitening_from_scatter(within_class_scatter(x, labels), mean, len(x), shrinkage)


@dataclass(frozen=True)
class WithinClassBasis:
    """The eigenvectors of the within-class scatter with non-zero eigenvalues.

    With n images in D dimensions the scatter has rank at most n - classes, so with few
    images the decomposition comes from the n x n Gram matrix instead of the D x D scatter.
    In the rotated frame (`coordinates`) a whitening at any shrinkage is a per-axis scale,
    which makes trying several shrinkages as cheap as trying one.
    """

    vectors: np.ndarray  # [D, r], orthonormal columns
    eigenvalues: np.ndarray  # [r]
    level: float  # mean eigenvalue over all D dimensions (the shrinkage unit)

    def factors(self, shrinkage: float) -> np.ndarray:
        """Per-axis gain of the whitening along `vectors`; the gain is 1 elsewhere."""
        ridge = shrinkage * self.level
        if ridge <= 0.0:
            return np.ones_like(self.eigenvalues)
        return np.sqrt(ridge / (self.eigenvalues + ridge))

    def matrix(self, shrinkage: float) -> np.ndarray:
        """The [D, D] whitening matrix: identity plus a correction in the span of `vectors`."""
        dim = self.vectors.shape[0]
        scaled = self.vectors * (self.factors(shrinkage) - 1.0)
        return np.eye(dim) + scaled @ self.vectors.T

    def coordinates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(components along `vectors` [N, r], squared norm of the rest [N]) of each row.

        The [N, r] result keeps the dtype of `x` (float32 halves the memory of large sets);
        the norms are float64.
        """
        x = float_rows(x)
        along = x @ self.vectors.astype(x.dtype, copy=False)
        total = np.einsum("nd,nd->n", x, x, dtype=np.float64)
        rest = np.maximum(total - np.einsum("nr,nr->n", along, along, dtype=np.float64), 0)
        return along, rest


def within_class_basis(
    embeddings: np.ndarray,
    labels: np.ndarray,
    overwrite: bool = False,
    means: np.ndarray | None = None,
) -> WithinClassBasis:
    """The within-class scatter's eigen-decomposition, through the smaller Gram form.

    `overwrite` and `means` as for `within_class_residuals`.
    """
    return _basis_of(within_class_residuals(embeddings, labels, overwrite, means))


def _basis_of(residuals: np.ndarray) -> WithinClassBasis:
    """`within_class_basis` of residuals already taken (left as they are)."""
    # [N, D] in the input's precision; the eigenproblem in float64
    n, dim = residuals.shape
    level = float(np.einsum("nd,nd->", residuals, residuals, dtype=np.float64)) / max(n, 1) / dim
    if n < dim:
        gram = (residuals @ residuals.T).astype(np.float64) / max(n, 1)
        values, u = symmetric_eigen(gram)
        keep = values > 1e-10 * max(float(values.max(initial=0.0)), 1e-300)
        values, u = values[keep], u[:, keep]
        vectors = (residuals.T @ u.astype(residuals.dtype)).astype(np.float64) / np.sqrt(
            values * max(n, 1)
        )
    else:
        values, vectors = symmetric_eigen((residuals.T @ residuals).astype(np.float64) / n)
        values = np.maximum(values, 0.0)
    return WithinClassBasis(vectors, values, level)
