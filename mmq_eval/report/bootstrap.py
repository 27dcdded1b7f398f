"""Paired bootstrap over documents: is the difference between two evaluations real?

Both evaluations scored the same documents. A metric is a function of per-document columns
summed over the documents (:class:`DocStat`): a mean (VQA accuracy, per-image CIDEr-D with the
corpus IDF fixed), a ratio of sums (text-to-image Recall@K over the captions of the images drawn),
corpus BLEU from summed n-gram statistics. One bootstrap resample draws ``n`` documents with
replacement; the *same* draw is applied to both evaluations (pairing), so document difficulty
cancels and only the difference between the two systems varies.

For resample ``b`` with multiplicities ``c_b`` (how often each document was drawn),
``delta_b = f(c_b @ X_new) - f(c_b @ X_ref)``. Reported are the full-sample difference, the
percentile 95 % interval of the ``delta_b`` (numpy's linear interpolation) and a two-sided
bootstrap p-value ``min(1, 2 * min(1 + #{delta_b <= 0}, 1 + #{delta_b >= 0}) / (B + 1))``. Two
evaluations are *indistinguishable* when the interval contains 0.

Pure functions of numpy arrays; seeded ``numpy.random.Generator`` (PCG64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class DocStat:
    """A corpus metric ``fn(column sums, n_docs)`` of per-document ``columns`` (n_docs × k).

    ``fn`` takes sums of shape ``(..., k)`` and returns the metric of shape ``(...)``.
    """

    columns: np.ndarray
    fn: Callable[[np.ndarray, int], np.ndarray]

    @property
    def n_docs(self) -> int:
        return int(self.columns.shape[0])

    def value(self) -> float:
        """The metric on all documents."""
        return float(self.fn(self.columns.sum(axis=0)[None, :], self.n_docs)[0])

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """The metric on every resample (rows of ``counts``: multiplicity of each document)."""
        return np.asarray(self.fn(counts @ self.columns, self.n_docs), dtype=float)


def _mean(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[..., 0] / n


def _ratio(sums: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[..., 0] / sums[..., 1]


def mean_stat(values) -> DocStat:
    """The mean of per-document values."""
    return DocStat(np.asarray(values, dtype=float).reshape(-1, 1), _mean)


def ratio_stat(numerators, denominators) -> DocStat:
    """Sum of numerators over sum of denominators (e.g. hits over queries of the docs drawn)."""
    return DocStat(np.column_stack([np.asarray(numerators, float), np.asarray(denominators, float)]), _ratio)


def resample_indices(n_docs: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples`` × ``n_docs`` document indices drawn with replacement (seeded)."""
    if n_docs < 1 or resamples < 1:
        raise ValueError("need at least one document and one resample")
    return np.random.default_rng(seed).integers(0, n_docs, size=(resamples, n_docs))


def resample_counts(n_docs: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Multiplicity of each document in each resample of :func:`resample_indices` (same seed,
    same draws), as a ``resamples`` × ``n_docs`` float matrix."""
    idx = resample_indices(n_docs, resamples, seed)
    offsets = (np.arange(resamples) * n_docs)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=resamples * n_docs).reshape(resamples, n_docs).astype(float)


@dataclass(frozen=True)
class PairedResult:
    """``new - ref`` on the full sample, its bootstrap interval and p-value."""

    delta: float
    lo: float
    hi: float
    p_value: float
    n_docs: int
    resamples: int

    @property
    def indistinguishable(self) -> bool:
        """True when the interval contains 0: no evidence of a difference at this level."""
        return self.lo <= 0.0 <= self.hi

    def as_dict(self) -> dict:
        return {"delta": self.delta, "ci_lo": self.lo, "ci_hi": self.hi, "p_value": self.p_value,
                "n_docs": self.n_docs, "resamples": self.resamples}


def summarize(delta: float, deltas: np.ndarray, n_docs: int, confidence: float = CONFIDENCE) -> PairedResult:
    """Percentile interval and two-sided p-value of bootstrap differences ``deltas``."""
    deltas = np.asarray(deltas, dtype=float)
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:
        nan = float("nan")
        return PairedResult(delta, nan, nan, nan, n_docs, 0)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(deltas, [100.0 * tail, 100.0 * (1.0 - tail)])
    below, above = int(np.sum(deltas <= 0)), int(np.sum(deltas >= 0))
    p_value = min(1.0, 2.0 * min(below + 1, above + 1) / (deltas.size + 1))
    return PairedResult(float(delta), float(lo), float(hi), p_value, n_docs, int(deltas.size))


def paired_bootstrap(ref: DocStat, new: DocStat, counts: np.ndarray, confidence: float = CONFIDENCE) -> PairedResult:
    """Difference ``new - ref`` of two evaluations of the same documents (rows aligned), resampled
    with the multiplicities ``counts`` (:func:`resample_counts`)."""
    if ref.n_docs != new.n_docs or counts.shape[1] != ref.n_docs:
        raise ValueError(f"paired bootstrap needs the same documents: {ref.n_docs} vs {new.n_docs} "
                         f"(resamples over {counts.shape[1]})")
    deltas = new.resampled(counts) - ref.resampled(counts)
    return summarize(new.value() - ref.value(), deltas, ref.n_docs, confidence)


def paired_bootstrap_means(ref, new, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                           confidence: float = CONFIDENCE) -> PairedResult:
    """:func:`paired_bootstrap` of the means of two aligned per-document score arrays."""
    ref, new = mean_stat(ref), mean_stat(new)
    return paired_bootstrap(ref, new, resample_counts(ref.n_docs, resamples, seed), confidence)
