"""Paired bootstrap: intervals and p-values against brute-force loops on synthetic per-document
scores; planted drops are found, zero-mean perturbations are not; corpus statistics (BLEU,
Recall@K) resampled through their per-document columns equal the reference scorers run on the
resampled documents."""

import math

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu_scorer import BleuScorer

from mmq_eval.report import bootstrap
from mmq_eval.report.bootstrap import (
    paired_bootstrap,
    paired_bootstrap_means,
    resample_counts,
    resample_indices,
    summarize,
)
from mmq_eval.sweep.per_doc import doc_stats, stored_bleu
from mmq_eval.tasks import captioning, retrieval


def percentile_linear(values, q):
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def brute_force(ref, new, resamples, seed, statistic=lambda xs: sum(xs) / len(xs)):
    """Loop over the same document draws, recompute both statistics on the drawn documents."""
    idx = resample_indices(len(ref), resamples, seed)
    deltas = []
    for row in idx:
        deltas.append(statistic([new[i] for i in row]) - statistic([ref[i] for i in row]))
    below = sum(d <= 0 for d in deltas)
    above = sum(d >= 0 for d in deltas)
    p = min(1.0, 2 * min(below + 1, above + 1) / (resamples + 1))
    return statistic(new) - statistic(ref), percentile_linear(deltas, 2.5), percentile_linear(deltas, 97.5), p


def test_interval_and_p_value_equal_a_brute_force_loop():
    rng = np.random.default_rng(7)
    ref = rng.gamma(2.0, 1.0, size=150)  # per-image CIDEr-like scores
    new = ref + rng.normal(-0.1, 0.6, size=150)
    result = paired_bootstrap_means(ref, new, resamples=1000, seed=3)
    delta, lo, hi, p = brute_force(list(ref), list(new), 1000, 3)
    assert result.resamples == 1000 and result.n_docs == 150
    assert result.delta == pytest.approx(delta, abs=1e-12)
    assert result.lo == pytest.approx(lo, abs=1e-12)
    assert result.hi == pytest.approx(hi, abs=1e-12)
    assert result.p_value == pytest.approx(p, abs=1e-12)
    assert result.lo < result.delta < result.hi


def test_draws_are_seeded_and_counts_match_indices():
    a, b = resample_indices(40, 200, seed=5), resample_indices(40, 200, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, resample_indices(40, 200, seed=6))
    counts = resample_counts(40, 200, seed=5)
    assert counts.shape == (200, 40) and np.all(counts.sum(axis=1) == 40)
    for row, idx in zip(counts, a):
        assert np.array_equal(row, np.bincount(idx, minlength=40))


def test_p_value_and_interval_conventions():
    same = paired_bootstrap_means([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], resamples=500)
    assert (same.delta, same.lo, same.hi, same.p_value) == (0.0, 0.0, 0.0, 1.0) and same.indistinguishable
    all_above = summarize(0.5, np.full(999, 0.5), 10)
    assert all_above.p_value == pytest.approx(2 / 1000) and not all_above.indistinguishable
    assert math.isnan(summarize(0.1, np.array([np.nan]), 3).lo)


def test_planted_drop_is_flagged_and_zero_mean_perturbation_is_not():
    flagged_noise, flagged_drop = 0, 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        ref = rng.binomial(1, 0.6, size=400).astype(float)  # per-question VQA accuracy
        # a real drop: 15 % of the correct answers become wrong
        dropped = ref.copy()
        correct = np.flatnonzero(ref == 1)
        dropped[rng.choice(correct, size=int(0.15 * len(correct)), replace=False)] = 0.0
        # zero-mean perturbation: as many answers flip each way, chosen at random
        noisy = ref.copy()
        wrong = np.flatnonzero(ref == 0)
        k = 20
        noisy[rng.choice(correct, size=k, replace=False)] = 0.0
        noisy[rng.choice(wrong, size=k, replace=False)] = 1.0
        drop = paired_bootstrap_means(ref, dropped, resamples=1000, seed=seed)
        noise = paired_bootstrap_means(ref, noisy, resamples=1000, seed=seed)
        assert drop.delta < 0 and noise.delta == pytest.approx(0.0, abs=1e-12)
        flagged_drop += not drop.indistinguishable and drop.hi < 0 and drop.p_value < 0.05
        flagged_noise += not noise.indistinguishable
    assert flagged_drop == 40
    assert flagged_noise == 0


def test_continuous_zero_mean_noise_is_rarely_flagged():
    """With noise that does move the sample mean, the interval covers 0 about 95 % of the time."""
    flagged = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        ref = rng.gamma(2.0, 1.0, size=200)
        result = paired_bootstrap_means(ref, ref + rng.normal(0, 0.5, 200), resamples=1000, seed=seed)
        flagged += not result.indistinguishable
    assert flagged <= 8  # expected 3 of 60


CAPTIONS = [
    ("a red circle left of a blue square", ["a red circle left of a blue square", "a blue square and a red circle"]),
    ("a small green triangle", ["a small green triangle", "one small green triangle", "a green triangle"]),
    ("two shapes", ["a blue circle and a yellow square", "two shapes a blue circle and a yellow square"]),
    ("a red square", ["a large purple circle", "a purple circle"]),
    ("a large yellow circle right of a red triangle", ["a large yellow circle", "a yellow circle right of a red triangle"]),
]


def _pycoco_bleu(docs):
    scorer = BleuScorer(n=4)
    for pred, refs in docs:
        scorer += (pred, refs)
    return scorer.compute_score(option="closest")[0]


def test_bleu_from_per_image_statistics_equals_pycocoevalcap_on_resampled_documents():
    new_docs = CAPTIONS
    ref_docs = [(refs[0], refs) for _, refs in CAPTIONS]  # a better system: the first reference
    stats_new = {"bleu": [stored_bleu(captioning.bleu_stats(refs, pred)) for pred, refs in new_docs]}
    stats_ref = {"bleu": [stored_bleu(captioning.bleu_stats(refs, pred)) for pred, refs in ref_docs]}
    for order in range(1, 5):
        assert doc_stats(stats_new)[f"bleu{order}"].value() == pytest.approx(_pycoco_bleu(new_docs)[order - 1], abs=1e-12)
    result = paired_bootstrap(doc_stats(stats_ref)["bleu4"], doc_stats(stats_new)["bleu4"],
                              resample_counts(len(CAPTIONS), 50, seed=1))
    delta, lo, hi, p = brute_force(ref_docs, new_docs, 50, 1, statistic=lambda docs: _pycoco_bleu(docs)[3])
    assert (result.delta, result.lo, result.hi, result.p_value) == pytest.approx((delta, lo, hi, p), abs=1e-9)


def test_recall_from_ranks_equals_the_task_metric_on_resampled_documents():
    rng = np.random.default_rng(0)
    captions = rng.integers(1, 6, size=60)  # captions per image (the same documents for both)

    def records(scale):
        return [{"i2t": int(rng.integers(0, scale)), "t2i": [int(r) for r in rng.integers(0, scale, size=n)]}
                for n in captions]

    def payload(recs):
        return {"ranks": {"i2t": [r["i2t"] for r in recs], "t2i": [r["t2i"] for r in recs]}}

    ref, new = records(8), records(20)
    for metric in retrieval.METRICS:
        stat_new = doc_stats(payload(new))[metric]
        agg = getattr(retrieval, metric)
        assert stat_new.value() == pytest.approx(agg(new), abs=1e-4)  # the task's recall is float32
        result = paired_bootstrap(doc_stats(payload(ref))[metric], stat_new, resample_counts(60, 30, seed=2))
        delta, lo, hi, p = brute_force(ref, new, 30, 2, statistic=agg)
        assert (result.delta, result.lo, result.hi) == pytest.approx((delta, lo, hi), abs=1e-3), metric
        assert result.p_value == pytest.approx(p)


def test_mismatched_documents_are_refused():
    with pytest.raises(ValueError, match="same documents"):
        paired_bootstrap(bootstrap.mean_stat([1, 2, 3]), bootstrap.mean_stat([1, 2]), resample_counts(3, 10))
