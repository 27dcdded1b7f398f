"""Per-document scores: per-image captioning values that give back the corpus scores, payloads
from lmms-eval's logged samples, the sweep's sidecar and the real evaluator's output."""

import json
import math
import os
from collections import defaultdict

import numpy as np
import pytest

from mmq_eval.sweep.per_doc import PerDocStore, doc_ids, doc_stats, load_per_doc, per_doc_of, sidecar_path, task_payload
from mmq_eval.sweep.runner import run_sweep
from mmq_eval.sweep.spec import COMPONENTS, build_sweep, features_of
from mmq_eval.sweep.store import load_records
from mmq_eval.tasks import captioning, retrieval

PREDICTIONS = [
    "a large red circle left of a small blue square",
    "a small green triangle",
    "two shapes a blue circle and a yellow square",
    "a red square",
    "a blue circle",
    "a large yellow triangle above a small red circle",
]
REFERENCES = [
    ["a large red circle left of a small blue square", "a small blue square and a large red circle",
     "a big red circle next to a little blue square"],
    ["a small green triangle", "one small green triangle", "a green triangle that is small"],
    ["a blue circle and a yellow square", "a yellow square right of a blue circle",
     "two shapes a blue circle and a yellow square"],
    ["a large purple circle", "one large purple circle", "a purple circle"],
    ["a small blue circle", "one blue circle", "a blue circle"],
    ["a large yellow triangle and a small red circle", "a small red circle below a large yellow triangle"],
]


@pytest.fixture(scope="module")
def caption_records():
    docs = [{"image_id": 100 + i, "captions": refs} for i, refs in enumerate(REFERENCES)]
    return [captioning.process_results(d, [p])["cider"] for d, p in zip(docs, PREDICTIONS)]


def _ngrams(tokens, n):
    counts = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(tokens) - k + 1):
            counts[tuple(tokens[i:i + k])] += 1
    return counts


def cider_d_per_image(gts_tok, res_tok, n=4, sigma=6.0):
    """CIDEr-D of each image written from the paper's definition (Vedantam et al.; the COCO
    CIDEr-D variant: clipped tf-idf, Gaussian length penalty, x10), with the document frequency
    of every n-gram counted once per image over the whole corpus' references: the fixed IDF."""
    df = defaultdict(float)
    for refs in gts_tok.values():
        for gram in {g for ref in refs for g in _ngrams(ref.split(), n)}:
            df[gram] += 1
    log_n = math.log(len(gts_tok))

    def vec(sentence):
        counts = _ngrams(sentence.split(), n)
        v = [{} for _ in range(n)]
        for gram, tf in counts.items():
            v[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, df[gram])))
        norms = [math.sqrt(sum(x * x for x in part.values())) for part in v]
        return v, norms, len(sentence.split())

    scores = {}
    for image, refs in gts_tok.items():
        hv, hn, hl = vec(res_tok[image][0])
        total = np.zeros(n)
        for ref in refs:
            rv, rn, rl = vec(ref)
            for k in range(n):
                val = sum(min(w, rv[k].get(g, 0.0)) * rv[k].get(g, 0.0) for g, w in hv[k].items())
                if hn[k] and rn[k]:
                    val /= hn[k] * rn[k]
                total[k] += val * math.exp(-((hl - rl) ** 2) / (2 * sigma ** 2))
        scores[image] = 10.0 * total.mean() / len(refs)
    return scores


def test_per_image_cider_with_the_corpus_idf_averages_back_to_corpus_cider(caption_records):
    corpus = captioning.cider(caption_records)
    per_image = captioning.per_image_scores(caption_records)
    assert len(per_image["cider"]) == len(PREDICTIONS)
    assert np.mean(per_image["cider"]) == pytest.approx(corpus, abs=1e-6)
    # each value as the definition gives it with the corpus' document frequencies
    gts = {r["image_id"]: r["refs"] for r in caption_records}
    res = {r["image_id"]: [r["pred"]] for r in caption_records}
    gts_tok, res_tok = captioning._tokenized(gts, res)
    expected = cider_d_per_image(gts_tok, res_tok)
    for record, value in zip(caption_records, per_image["cider"]):
        assert value == pytest.approx(expected[record["image_id"]], abs=1e-9)
    assert np.mean(list(expected.values())) == pytest.approx(corpus, abs=1e-6)
    # the IDF matters: one image scored alone (its own references as the corpus) differs
    alone = captioning.cider_score({1: REFERENCES[1], 2: REFERENCES[3]}, {1: [PREDICTIONS[1]], 2: [PREDICTIONS[3]]})
    assert alone != pytest.approx(np.mean([per_image["cider"][1], per_image["cider"][3]]), abs=1e-3)


def test_rouge_and_bleu_per_image_give_back_the_corpus_scores(caption_records):
    per_image = captioning.per_image_scores(caption_records)
    assert np.mean(per_image["rouge_l"]) == pytest.approx(captioning.rouge_l(caption_records), abs=1e-12)
    sums = np.sum(per_image["bleu"], axis=0)
    for order in range(1, 5):
        agg = getattr(captioning, f"bleu{order}")
        assert float(captioning.bleu_from_stats(sums, order)) == pytest.approx(agg(caption_records), abs=1e-12)
    # the records in any order: values follow them
    shuffled = caption_records[::-1]
    assert captioning.per_image_scores(shuffled)["cider"] == per_image["cider"][::-1]


def test_payloads_from_logged_samples(caption_records):
    cap_metrics = {m: getattr(captioning, m)(caption_records) for m in ("cider", "bleu4", "bleu1", "rouge_l")}
    cap_metrics["meteor"] = 0.31  # no per-document decomposition: dropped
    cap_samples = [{"doc_id": i, **{m: rec for m in cap_metrics}} for i, rec in enumerate(caption_records)]
    vqa_acc = [1.0, 0.0, 0.6, 1.0, 0.3, 0.0, 1.0]
    vqa_samples = [{"doc_id": 10 + i, "accuracy": a, "f1": a} for i, a in enumerate(vqa_acc)][::-1]
    ret_records = [{"i2t": 0, "t2i": [0, 3]}, {"i2t": 7, "t2i": [1, 12, 0]}, {"i2t": 2, "t2i": [30]}]
    ret_samples = [{"doc_id": i, **{m: r for m in retrieval.METRICS}} for i, r in enumerate(ret_records)]
    results = {
        "cap": cap_metrics,
        "vqa": {"accuracy": float(np.mean(vqa_acc)), "f1": 0.123},  # f1's aggregation is not the mean
        "ret": {m: getattr(retrieval, m)(ret_records) for m in retrieval.METRICS},
        "none": {"accuracy": 0.5},
    }
    per_doc = per_doc_of({"cap": cap_samples, "vqa": vqa_samples, "ret": ret_samples}, results)
    assert set(per_doc) == {"cap", "vqa", "ret"}
    assert set(per_doc["cap"]) == {"doc_ids", "scores", "bleu"} and set(per_doc["cap"]["scores"]) == {"cider", "rouge_l"}
    assert per_doc["vqa"]["doc_ids"] == {"range": [10, 17]} and set(per_doc["vqa"]["scores"]) == {"accuracy"}
    assert per_doc["vqa"]["scores"]["accuracy"] == [1, 0, 0.6, 1, 0.3, 0, 1]  # sorted by doc id, compact
    assert doc_ids(per_doc["vqa"]) == list(range(10, 17))
    json.dumps(per_doc)  # plain JSON
    for task, payload in per_doc.items():
        stats = doc_stats(json.loads(json.dumps(payload)))
        for metric, value in results[task].items():
            if metric in stats and metric != "f1":
                assert stats[metric].value() == pytest.approx(value, rel=1e-6, abs=1e-9), (task, metric)
    assert "meteor" not in doc_stats(per_doc["cap"])
    assert task_payload([], {"accuracy": 1.0}) is None


def test_sidecar_appends_once_and_survives_a_torn_line(tmp_path):
    path = sidecar_path(tmp_path / "results.jsonl")
    assert path == tmp_path / "per_doc" / "results.jsonl"
    store = PerDocStore(path)
    assert not path.parent.exists()  # nothing written yet
    assert store.add("aaa", {"t": {"doc_ids": {"range": [0, 2]}, "scores": {"m": [1, 0]}}})
    assert not store.add("aaa", {"t": {"doc_ids": {"range": [0, 2]}, "scores": {"m": [0, 0]}}})
    with open(path, "ab") as fh:
        fh.write(b'{"config_id": "bbb", "tasks": {"t": {"doc')  # a crash mid-write
    assert set(load_per_doc(tmp_path)) == {"aaa"}
    assert store.add("bbb", {"t": {"scores": {"m": [1, 1]}}})
    (tmp_path / "results.jsonl").write_text("")
    assert load_per_doc(tmp_path / "results.jsonl") == {
        "aaa": {"t": {"doc_ids": {"range": [0, 2]}, "scores": {"m": [1, 0]}}}, "bbb": {"t": {"scores": {"m": [1, 1]}}}}
    assert set(load_per_doc(tmp_path, ["bbb"])) == {"bbb"}
    assert load_per_doc(tmp_path / "elsewhere") == {}


SPEC = {"model": {"pretrained": "mmq:shapes-blip2", "batch_size": 4}, "tasks": ["mmq_shapes_vqa"],
        "fixed": {"method": "uniform"}, "grid": {"vit_bits": [16, 4], "llm_bits": [16, 2]}}


def per_doc_factory(model, tasks, limit):
    """A fake evaluator with per-document scores: the fewer bits, the more wrong answers."""

    def evaluate(spec):
        feats = features_of(spec)
        low = min(feats[f"{c}_bits"] for c in COMPONENTS)
        acc = [float(i % 16 < low) for i in range(40)]
        payload = {"doc_ids": {"range": [0, 40]}, "scores": {"accuracy": acc}}
        return 16.0, {t: {"accuracy": float(np.mean(acc))} for t in tasks}, {t: payload for t in tasks}

    return evaluate


def test_sweep_writes_the_sidecar_beside_unchanged_records(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_per_doc:per_doc_factory")
    sweep = build_sweep(SPEC)
    run_sweep(sweep, tmp_path, progress=False)
    records = load_records(tmp_path)  # the sidecar folder is not read as results
    assert len(records) == 4 and all(set(r["results"]) == {"mmq_shapes_vqa"} for r in records)
    assert not any("per_doc" in r or "tasks" in r for r in records)
    lines = (tmp_path / "per_doc" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["config_id"] for line in lines) == sorted(r["config_id"] for r in records)
    per_doc = load_per_doc(tmp_path)
    for rec in records:
        stat = doc_stats(per_doc[rec["config_id"]]["mmq_shapes_vqa"])["accuracy"]
        assert stat.value() == pytest.approx(rec["results"]["mmq_shapes_vqa"]["accuracy"])
    (tmp_path / "results.jsonl").write_text("".join(line + "\n" for line in (tmp_path / "results.jsonl").read_text().splitlines()[:2]))
    assert run_sweep(sweep, tmp_path, progress=False).ran == 2  # rerun: the sidecar keeps one line each
    assert len((tmp_path / "per_doc" / "results.jsonl").read_text().splitlines()) == 4


@pytest.mark.usefixtures("one_torch_thread")
def test_real_evaluator_returns_per_document_scores_that_give_back_its_results():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmq_eval.quant.spec import QuantSpec
    from mmq_eval.sweep.evaluate import LmmsEvaluator

    evaluator = LmmsEvaluator({"pretrained": "mmq:shapes-blip2", "batch_size": 16, "device": "cpu",
                               "quant_cache": "none"}, ["mmq_shapes_cap", "mmq_shapes_vqa"], limit=12)
    bpw, results, per_doc = evaluator(QuantSpec())
    assert bpw == 16.0 and set(per_doc) == {"mmq_shapes_cap", "mmq_shapes_vqa"}
    assert doc_ids(per_doc["mmq_shapes_vqa"]) == list(range(12))
    for task, payload in per_doc.items():
        stats = doc_stats(payload)
        expected = {"mmq_shapes_cap": {"cider", "rouge_l", "bleu1", "bleu4"}, "mmq_shapes_vqa": {"accuracy"}}[task]
        assert expected <= set(stats) & set(results[task])
        for metric in expected:
            assert stats[metric].value() == pytest.approx(results[task][metric], abs=1e-9), metric
