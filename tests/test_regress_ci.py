"""Regression gate, ``--mode ci``: a metric regresses only when the whole interval of its drop
lies above the tolerance; the baseline keeps per-document scores beside it."""

import json

import numpy as np
import pytest
from test_regress import _run  # mmq-eval regress through its own parser

from mmq_eval import regress
from mmq_eval.report.bootstrap import paired_bootstrap_means
from mmq_eval.sweep.per_doc import PerDocStore, read_per_doc, sidecar_path

N = 100
BASE_ACC = np.array([1.0] * 64 + [0.0] * 36)  # accuracy 0.64 on 100 questions


def _flip(acc, to_wrong=0, to_right=0):
    acc = acc.copy()
    right, wrong = np.flatnonzero(acc == 1), np.flatnonzero(acc == 0)
    acc[right[:to_wrong]] = 0.0
    acc[wrong[:to_right]] = 1.0
    return acc


def _write(folder, acc, cider_shift=0.0):
    """Two configurations; the first gets ``acc`` and the CIDEr shift, the second stays put."""
    folder.mkdir(parents=True, exist_ok=True)
    cider = np.linspace(1.0, 5.0, 50)
    recs, docs = [], {}
    for cid, a, c in (("aaaa", acc, cider + cider_shift), ("bbbb", BASE_ACC, cider)):
        recs.append({"config_id": cid, "features": {"method": "gptq" if cid == "aaaa" else "none", "llm_bits": 4},
                     "bpw": 6.3, "results": {"mmq_shapes_vqa": {"accuracy": float(a.mean())},
                                             "mmq_shapes_cap": {"cider": float(c.mean()), "bleu4": 0.61}}})
        docs[cid] = {"mmq_shapes_vqa": {"doc_ids": {"range": [0, N]}, "scores": {"accuracy": a.tolist()}},
                     "mmq_shapes_cap": {"doc_ids": {"range": [0, 50]}, "scores": {"cider": c.tolist()}}}
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    store = PerDocStore(sidecar_path(folder / "results.jsonl"))
    for cid, tasks in docs.items():
        store.add(cid, tasks)
    return folder


@pytest.fixture
def baseline(tmp_path, capsys):
    path = tmp_path / "ci" / "baseline.json"
    assert _run(path, _write(tmp_path / "base", BASE_ACC), "--update") == 0
    assert "per-document scores of 2" in capsys.readouterr().out
    return path


def test_update_writes_the_per_document_scores_beside_the_baseline(baseline, tmp_path):
    docs = baseline.with_name("baseline.per_doc.jsonl")
    assert docs.is_file() and set(read_per_doc([docs])) == {"aaaa", "bbbb"}
    assert json.loads(baseline.read_text())["format"] == regress.FORMAT
    # results without per-document scores: the stale file goes
    plain = tmp_path / "plain.jsonl"
    plain.write_text((tmp_path / "base" / "results.jsonl").read_text())
    assert _run(baseline, plain, "--update") == 0
    assert not docs.exists()
    assert _run(baseline, plain, "--mode", "ci") == 2


def test_unchanged_scores_pass(baseline, tmp_path, capsys):
    assert _run(baseline, tmp_path / "base", "--mode", "ci") == 0
    out = capsys.readouterr().out
    assert "drop 95% CI" in out and "[+0.0000, +0.0000]" in out
    assert "mode ci: 4 metric(s) by their 95% interval" in out  # bleu4 by the tolerance rule
    assert "tolerance rule" in out


def test_planted_drop_fails_and_zero_mean_perturbation_passes(baseline, tmp_path, capsys):
    # 20 of 64 right answers turn wrong: drop 0.20, its whole interval far above the tolerance 0.032
    assert _run(baseline, _write(tmp_path / "drop", _flip(BASE_ACC, to_wrong=20)), "--mode", "ci") == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("REGRESSION"))
    assert "mmq_shapes_vqa/accuracy [aaaa" in line and "0.6400" in line and "0.4400" in line
    assert "entirely above the tolerance 0.0320" in line
    # 6 answers flip each way: nothing changed on average
    assert _run(baseline, _write(tmp_path / "noise", _flip(BASE_ACC, to_wrong=6, to_right=6)), "--mode", "ci") == 0
    # a planted CIDEr drop on every image fails too (the tolerance 5 % of 3.0 = 0.15)
    assert _run(baseline, _write(tmp_path / "cider", BASE_ACC, cider_shift=-0.3), "--mode", "ci") == 1


def test_a_drop_within_noise_fails_the_fixed_tolerance_but_not_the_interval(baseline, tmp_path, capsys):
    # 4 right answers of 100 turn wrong: a drop of 0.04 > tolerance 0.032 by the point estimate,
    # but 4 questions are no evidence of a drop beyond the tolerance
    results = _write(tmp_path / "small", _flip(BASE_ACC, to_wrong=4))
    assert _run(baseline, results) == 1
    capsys.readouterr()
    assert _run(baseline, results, "--mode", "ci") == 0
    row = next(l for l in capsys.readouterr().out.splitlines() if "aaaa" in l and "accuracy" in l)
    ci = paired_bootstrap_means(BASE_ACC, _flip(BASE_ACC, to_wrong=4), 1000, seed=0)
    assert f"[{-ci.hi:+.4f}, {-ci.lo:+.4f}]" in row and row.rstrip().endswith("ok")
    assert -ci.hi < 0.032 < -ci.lo + 1  # the interval reaches below the tolerance


def test_missing_metric_still_fails_in_ci_mode(baseline, tmp_path, capsys):
    folder = _write(tmp_path / "missing", BASE_ACC)
    recs = [json.loads(l) for l in (folder / "results.jsonl").read_text().splitlines()]
    del recs[0]["results"]["mmq_shapes_cap"]["bleu4"]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert _run(baseline, folder, "--mode", "ci") == 1
    assert "MISSING metric: mmq_shapes_cap/bleu4" in capsys.readouterr().out


def test_per_document_scores_that_do_not_match_the_values_fall_back_to_the_tolerances(baseline, tmp_path, capsys):
    # the current results' values say 0.44 but their per-document scores say 0.64: not used
    folder = _write(tmp_path / "stale", _flip(BASE_ACC, to_wrong=20))
    docs = folder / "per_doc" / "results.jsonl"
    good = _write(tmp_path / "good", BASE_ACC) / "per_doc" / "results.jsonl"
    docs.write_text(good.read_text())
    assert _run(baseline, folder, "--mode", "ci") == 1  # the tolerance rule still catches the drop
    row = next(l for l in capsys.readouterr().out.splitlines() if "aaaa" in l and "accuracy" in l)
    assert "tolerance rule" in row and row.rstrip().endswith("REGRESSION")
