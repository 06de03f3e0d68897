"""Cross-validation for imprinting: whether and how strongly to whiten, measured on unseen images.

Each candidate (no whitening, or whitening at one of `SHRINKAGES`) is fitted on the training
images outside a fold, whitening included, and scores the images inside it. The held-out
cosines choose the candidate and, for the one chosen, set the exported head's temperature and
8-bit windows: statistics of images the candidate did not see, never of its own training
images (whose cosines to their own class are inflated, to 1.0 with one image per class).

A candidate is scored by its held-out cross-entropy at its best temperature: smoother than
accuracy, so a few hundred images tell candidates apart. Whitening is chosen only when it
beats no whitening by more than twice the standard error of the paired difference; with a
handful of images the difference is noise and the plain head stays.
"""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.extract.runtime import cpu_threads
from workbench.heads.crossval import DEFAULT_FOLDS, has_own_class, stratified_folds
from workbench.heads.whitening import class_means, within_class_basis

SHRINKAGES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
PLAIN = None  # the candidate without whitening
# Repeats of the fold split: more held-out scores for small sets, where they are cheap.
SMALL_SET = 1000
# Fewer folds from this many images on, where each fold's eigendecomposition is most of a
# warm run. Measured on 2,250-2,340 training images (flower photos; 10-class digit and
# clothing photos; Coral's MobileNet v1 and the bundled EfficientNet-Lite0; seeds 0-2, 18
# runs): 3 folds instead of 5 took 0.2-1.3 s less, chose the same whitening in 13 of 18 runs
# (else one step gentler or stronger); float top-1 -0.012 to +0.005 (mean -0.001), exported
# top-1 -0.008 to +0.007 (mean +0.001), agreement -0.006 to +0.011. On 2,500-6,839 images
# of the 25 classes together (caps 100, 200, none; both extractors; 18 runs): the same
# whitening in 18 of 18, float top-1 unchanged, exported top-1 -0.003 to +0.002, agreement
# -0.004 to +0.004, the fit 35-40% shorter.
LARGE_SET = 2000
LARGE_SET_FOLDS = 3
# Held-out rows per fold whose whitened values are kept, for the whitening layer's range.
RANGE_SAMPLE = 64
# Folds run two at a time when the embeddings have at most this many values (10 MB of
# float32): each fold holds a few [N, D] arrays, so larger sets run one fold at a time.
PARALLEL_ELEMENTS = 2_500_000
TEMPERATURES = np.geomspace(1.0, 300.0, 64)
TEMPERATURE_BLOCK = 1_000_000  # values per [T, N, C] block in `best_temperature`
Candidate = float | None


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cross_entropy_rows(
    cos: np.ndarray, labels: np.ndarray, temperature: float | np.ndarray
) -> np.ndarray:
    """Per-row cross-entropy of softmax(temperature x cos) against `labels`.

    `temperature` (> 0) may be an array shaped to broadcast against `cos` ([T, 1, 1] for T
    temperatures at once, giving [T, N]). The largest logit is the temperature times the
    largest cosine (the same float), so the maximum is taken once, over `cos`.
    """
    logits = temperature * cos - temperature * cos.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=-1))
    return log_norm - logits[..., np.arange(len(labels)), labels]


def best_temperature(cos: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature (imprinting's scale factor) with the lowest cross-entropy.

    Several temperatures at once ([T, N, C] blocks of about TEMPERATURE_BLOCK values): one
    at a time, the Python overhead costs more than the arithmetic on small sets.
    """
    cos = np.asarray(cos, np.float64)
    if cos.size == 0:
        return float(TEMPERATURES[0])
    per_block = max(1, TEMPERATURE_BLOCK // cos.size)
    blocks = [
        TEMPERATURES[i : i + per_block, None, None] for i in range(0, len(TEMPERATURES), per_block)
    ]
    losses = [cross_entropy_rows(cos, labels, t).mean(axis=-1) for t in blocks]
    return float(TEMPERATURES[int(np.argmin(np.concatenate(losses)))])


@dataclass
class HeldOutScores:
    """Cosines of held-out images to the classes of candidates fitted without them.

    `cosines[candidate]` is [rows, C]; a class with no image outside a row's fold is -inf.
    Rows repeat over the repeated fold splits. `value_range[candidate]` is the span of the
    whitened values of a sample of held-out rows (what the whitening layer must hold).
    """

    labels: np.ndarray
    own_class: np.ndarray  # rows whose class had training images in the other folds
    cosines: dict[Candidate, np.ndarray]
    value_range: dict[Candidate, tuple[float, float]] = field(default_factory=dict)

    def losses(self, candidate: Candidate) -> np.ndarray:
        """Per-row cross-entropy of the rows with their own class, at the best temperature."""
        cos = self.cosines[candidate][self.own_class].astype(np.float64)
        cos = np.where(np.isfinite(cos), cos, -1.0)
        labels = self.labels[self.own_class]
        return cross_entropy_rows(cos, labels, best_temperature(cos, labels))


def _fold_cosines(
    x: np.ndarray,
    y: np.ndarray,
    test: np.ndarray,
    num_classes: int,
    candidates: list[Candidate],
    sample: np.ndarray,
) -> tuple[dict[Candidate, np.ndarray], dict[Candidate, tuple[float, float]]]:
    """Held-out cosines of every candidate fitted on the rows outside `test`.

    Whitened vectors are handled in the basis of the within-class scatter: along its axes a
    whitening is a per-axis gain, and the rest of each vector is left as it is. The cosines
    are those of the whitened vectors, without forming them: a candidate's gain enters only
    through [classes, D] class sums and per-row norms, so trying six shrinkages costs no
    more [N, D] memory than trying one.
    """
    x_train, y_train, x_test = x[~test], y[~test], x[test]
    one_hot = np.zeros((num_classes, len(y_train)), x.dtype)
    one_hot[y_train, np.arange(len(y_train))] = 1.0
    absent = np.bincount(y_train, minlength=num_classes) == 0
    cosines: dict[Candidate, np.ndarray] = {}
    ranges: dict[Candidate, tuple[float, float]] = {}
    if PLAIN in candidates:
        norms = np.sqrt(np.einsum("nd,nd->n", x_train, x_train, dtype=np.float64))
        sums = ((one_hot / np.maximum(norms, 1e-12).astype(x.dtype)) @ x_train).astype(np.float64)
        cosines[PLAIN] = unit_rows(x_test.astype(np.float64)) @ unit_rows(sums).T
    whitened = [c for c in candidates if c is not PLAIN]
    if whitened:
        full_rank = len(y_train) > x.shape[1]  # more images than dimensions
        if full_rank:  # x_train becomes the residuals: one [N, D] array fewer
            means = class_means(x_train, y_train, num_classes)
            basis = within_class_basis(x_train, y_train, overwrite=True, means=means)
            vectors = basis.vectors.astype(x.dtype)
            along_tr = x_train @ vectors
            del x_train  # the residuals: no longer needed
            for c, mean_along in enumerate(means @ vectors):  # class by class: no [N, D] temp
                along_tr[y_train == c] += mean_along
            rest_sq_tr = np.zeros(len(y_train))
        else:
            basis = within_class_basis(x_train, y_train)
            along_tr, rest_sq_tr = basis.coordinates(x_train)
        along_te, rest_sq_te = basis.coordinates(x_test)
        rest_tr = rest_te = None
        if full_rank:
            rest_sq_te = np.zeros(len(x_test))
        elif basis.vectors.shape[1] < basis.vectors.shape[0]:  # the part outside the basis
            rest_tr = x_train - along_tr @ basis.vectors.T.astype(x.dtype)
            rest_te = x_test - along_te @ basis.vectors.T.astype(x.dtype)
            del x_train
        for candidate in whitened:
            assert candidate is not None
            gain = basis.factors(candidate)
            g2 = np.square(gain).astype(x.dtype)
            norm_tr = np.sqrt(np.einsum("nr,nr,r->n", along_tr, along_tr, g2) + rest_sq_tr)
            norm_te = np.sqrt(np.einsum("nr,nr,r->n", along_te, along_te, g2) + rest_sq_te)
            weighted = one_hot / np.maximum(norm_tr, 1e-12).astype(x.dtype)
            sums_along = (weighted @ along_tr).astype(np.float64) * gain
            sums_norm_sq = np.einsum("cr,cr->c", sums_along, sums_along)
            dots = (along_te @ (sums_along * gain).T.astype(x.dtype)).astype(np.float64)
            if rest_tr is not None and rest_te is not None:
                sums_rest = (weighted @ rest_tr).astype(np.float64)
                sums_norm_sq = sums_norm_sq + np.einsum("cd,cd->c", sums_rest, sums_rest)
                dots += rest_te @ sums_rest.T
            cos = (
                dots
                / np.maximum(norm_te, 1e-12)[:, None]
                / np.sqrt(np.maximum(sums_norm_sq, 1e-24))
            )
            cosines[candidate] = cos
            if len(sample):
                z = x_test[sample] + (along_te[sample] * (gain - 1.0)) @ basis.vectors.T
                ranges[candidate] = (float(z.min()), float(z.max()))
    for cos in cosines.values():
        cos[:, absent] = -np.inf
    return cosines, ranges


def cross_validate(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    candidates: list[Candidate],
    seed: int = 0,
    folds: int | None = None,
    pool: Executor | None = None,
) -> HeldOutScores:
    """Held-out cosines of every candidate, over `folds` folds (repeated for small sets).

    By default 5 folds, or LARGE_SET_FOLDS from LARGE_SET images on, where each fold's
    eigendecomposition is most of the cost of a run and a third of the images held out
    still numbers hundreds.

    The folds are independent: on sets small enough that two folds' work arrays fit twice
    over (PARALLEL_ELEMENTS), they run two at a time in threads (numpy's linear algebra
    releases the GIL), each with one BLAS thread. The result is the same as one at a time.
    `pool`: the threads to run them in instead (the caller's, shared with other work and
    limited to one BLAS thread by the caller); on larger sets it is not used.
    """
    # float32 halves the memory of the [N, D] work arrays; sums and cosines are float64.
    x = np.asarray(embeddings, np.float32)
    y = np.asarray(labels, np.int64)
    if folds is None:
        folds = LARGE_SET_FOLDS if len(y) >= LARGE_SET else DEFAULT_FOLDS
    repeats = 2 if len(y) < SMALL_SET else 1
    rng = np.random.default_rng(seed)
    jobs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (repeat, held-out rows, sample)
    fold_sets = []
    for repeat in range(repeats):
        fold_of = stratified_folds(y, folds, seed * 1009 + repeat)
        fold_sets.append(fold_of)
        for fold in range(folds):
            test = fold_of == fold
            if test.any() and not test.all():
                jobs.append((repeat, test, rng.permutation(int(test.sum()))[:RANGE_SAMPLE]))

    def run(job: tuple[int, np.ndarray, np.ndarray]) -> tuple[dict, dict]:
        return _fold_cosines(x, y, job[1], num_classes, candidates, job[2])

    workers = min(cpu_threads(), 2) if x.size <= PARALLEL_ELEMENTS else 1
    if pool is not None and x.size <= PARALLEL_ELEMENTS:
        results = list(pool.map(run, jobs))
    elif workers > 1:
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    # float32: seven candidates' [N, C] cosines are the largest thing kept
    per_candidate = [
        {c: np.full((len(y), num_classes), -np.inf, np.float32) for c in candidates}
        for _ in range(repeats)
    ]
    lows: dict[Candidate, float] = {}
    highs: dict[Candidate, float] = {}
    for (repeat, test, _), (cos, ranges) in zip(jobs, results, strict=True):
        for c in candidates:
            per_candidate[repeat][c][test] = cos[c]
        for c, (lo, hi) in ranges.items():
            lows[c] = min(lows.get(c, lo), lo)
            highs[c] = max(highs.get(c, hi), hi)
    return HeldOutScores(
        labels=np.tile(y, repeats),
        own_class=np.concatenate([has_own_class(y, fold_of) for fold_of in fold_sets]),
        cosines={c: np.concatenate([part[c] for part in per_candidate]) for c in candidates},
        value_range={c: (lows[c], highs[c]) for c in lows},
    )


@dataclass(frozen=True)
class WhiteningChoice:
    """The candidate chosen, and each candidate's mean held-out cross-entropy."""

    shrinkage: Candidate
    losses: dict[str, float]
    held_out_rows: int
    reason: str


def choose_whitening(scores: HeldOutScores, candidates: list[Candidate]) -> WhiteningChoice:
    """The whitening with the lowest held-out loss, if it clearly beats no whitening."""
    rows = int(scores.own_class.sum())
    if len(candidates) == 1:
        only = candidates[0]
        return WhiteningChoice(only, {}, rows, "as asked")
    if rows < 2:
        return WhiteningChoice(PLAIN, {}, rows, "no held-out image had its class in training")
    losses = {c: scores.losses(c) for c in candidates}
    table = {("none" if c is PLAIN else f"{c:g}"): float(v.mean()) for c, v in losses.items()}
    whitened = [c for c in candidates if c is not PLAIN]
    best = min(whitened, key=lambda c: (losses[c].mean(), -float(c)))  # ties: gentler
    gain = losses[PLAIN] - losses[best]
    noise = 2.0 * gain.std(ddof=1) / np.sqrt(len(gain))
    if gain.mean() > noise:
        return WhiteningChoice(best, table, rows, f"held-out loss {gain.mean():.3f} lower")
    return WhiteningChoice(PLAIN, table, rows, "whitening did not clearly help held-out images")
