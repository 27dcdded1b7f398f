"""Captioning metrics through pycocoevalcap (PTB tokenization, Bleu, METEOR, ROUGE-L, CIDEr).

lmms-eval aggregates each metric separately; the scores of one result set are computed once
(one tokenizer start, one scorer pass each) and shared by every metric's aggregation. The METEOR
Java process is started once per Python process: loading its paraphrase tables takes ~10 s,
which a sweep would otherwise pay for every configuration.

The same pass keeps per-image values that give the corpus scores back (``per_image_scores``: CIDEr-D
with the corpus IDF fixed, ROUGE-L, BLEU's n-gram counts), for paired bootstraps over documents.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from pycocoevalcap.bleu.bleu_scorer import BleuScorer, cook_refs, cook_test
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def process_results(doc: dict, results: list[str]) -> dict:
    """One record per metric: the prediction with the document's reference captions."""
    record = {
        "image_id": str(doc["image_id"]),
        "pred": results[0] if results else "",
        "refs": list(doc["captions"]),
    }
    return {metric: record for metric in METRICS}


@lru_cache(maxsize=1)
def _meteor() -> Meteor:
    return Meteor()


def _tokenized(gts: dict, res: dict) -> tuple[dict, dict]:
    """References and predictions PTB-tokenised, as the COCO caption evaluation scores them."""
    tokenizer = PTBTokenizer()
    gts_tok = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
    res_tok = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
    return gts_tok, res_tok


def cider_score(gts: dict, res: dict) -> float:
    """Corpus CIDEr-D alone of predictions ``res`` against references ``gts``, both
    ``{image id: [captions]}`` (ids of any hashable type, the same in both)."""
    return float(Cider().compute_score(*_tokenized(gts, res))[0])


def caption_scores(gts: dict[str, list[str]], res: dict[str, list[str]]) -> dict[str, float]:
    """All captioning metrics of predictions ``res`` against references ``gts`` (by image id)."""
    gts_tok, res_tok = _tokenized(gts, res)
    scores, _ = _decomposable_scores(gts_tok, res_tok)
    scores["meteor"] = float(_meteor().compute_score(gts_tok, res_tok)[0])
    return {m: scores[m] for m in METRICS if m in scores}


def _decomposable_scores(gts_tok: dict, res_tok: dict) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus Bleu-1..4, ROUGE-L and CIDEr-D of tokenised captions, and the per-image values that
    pycocoevalcap computes on the way (image order of ``gts_tok``): ROUGE-L, CIDEr-D and the BLEU
    counts (:func:`bleu_stats`). Per-image CIDEr-D uses the document frequencies of the whole
    corpus' references, so it averages back exactly."""
    bleu_scorer = BleuScorer(n=4)  # what Bleu(4).compute_score does, keeping the per-image counts
    for image, refs in gts_tok.items():
        bleu_scorer += (res_tok[image][0], refs)
    bleu, _ = bleu_scorer.compute_score(option="closest", verbose=0)
    scores = {f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)}
    rouge, rouge_per_image = Rouge().compute_score(gts_tok, res_tok)
    cider, cider_per_image = Cider().compute_score(gts_tok, res_tok)
    scores["rouge_l"], scores["cider"] = float(rouge), float(cider)
    return scores, {"rouge_l": [float(v) for v in rouge_per_image], "cider": [float(v) for v in cider_per_image],
                    "bleu": [_stats_of(comps) for comps in bleu_scorer.ctest]}


def _stats_of(comps: dict) -> list[float]:
    """``[testlen, reflen, guess_1..n, correct_1..n]`` of pycocoevalcap's cooked test sentence,
    the reference length chosen as its option "closest" does."""
    testlen = comps["testlen"]
    reflen = min((abs(length - testlen), length) for length in comps["reflen"])[1]
    return [float(testlen), float(reflen), *map(float, comps["guess"]), *map(float, comps["correct"])]


def bleu_stats(ref_captions: list[str], prediction: str, n: int = 4) -> list[float]:
    """One image's sufficient statistics of corpus BLEU as pycocoevalcap computes it (option
    "closest"), from tokenised captions: ``[testlen, reflen, guess_1..n, correct_1..n]``. Summed
    over images they give the corpus score (:func:`bleu_from_stats`)."""
    return _stats_of(cook_test(prediction, cook_refs(ref_captions, n=n), n=n))


def bleu_from_stats(sums, order: int, n: int = 4):
    """Corpus Bleu-``order`` from summed :func:`bleu_stats` (``sums[..., k]``; arrays broadcast),
    with pycocoevalcap's smoothing constants and brevity penalty."""
    sums = np.asarray(sums, dtype=float)
    tiny, small = 1e-15, 1e-9
    log_prec = sum(np.log((sums[..., 2 + n + k] + tiny) / (sums[..., 2 + k] + small)) for k in range(order))
    score = np.exp(log_prec / order)
    ratio = (sums[..., 0] + tiny) / (sums[..., 1] + small)
    penalty = np.exp(np.minimum(0.0, 1.0 - 1.0 / ratio))
    return score * penalty


class _Evaluation:
    """One result set scored once: tokenised captions, corpus scores and per-image values."""

    def __init__(self, payload: str):
        records = json.loads(payload)
        gts = {r["image_id"]: r["refs"] for r in records}
        res = {r["image_id"]: [r["pred"]] for r in records}
        self.gts_tok, self.res_tok = _tokenized(gts, res)
        self.scores, self.per_image = _decomposable_scores(self.gts_tok, self.res_tok)
        self.image_ids = list(self.gts_tok)
        self._meteor: float | None = None

    @property
    def meteor(self) -> float:
        if self._meteor is None:
            self._meteor = float(_meteor().compute_score(self.gts_tok, self.res_tok)[0])
        return self._meteor


def _payload(results: list[dict]) -> str:
    return json.dumps(sorted(results, key=lambda r: r["image_id"]), sort_keys=True)


@lru_cache(maxsize=8)
def _evaluation(payload: str) -> _Evaluation:
    return _Evaluation(payload)


def _aggregate(results: list[dict], metric: str) -> float:
    evaluation = _evaluation(_payload(results))
    return evaluation.meteor if metric == "meteor" else evaluation.scores[metric]


def per_image_scores(results: list[dict]) -> dict:
    """Per-document values of one result set (the records ``process_results`` returned, in
    document order) that give back the corpus scores:

    - ``cider``, ``rouge_l``: each image's score; their mean is the corpus score (CIDEr-D with the
      document frequencies of the whole corpus' references, as pycocoevalcap computes it);
    - ``bleu``: each image's :func:`bleu_stats`; :func:`bleu_from_stats` of their sum is corpus
      Bleu-1..4.

    METEOR has no such decomposition (its corpus score comes from statistics summed in Java).
    The result set is scored once per process: after lmms-eval's aggregation this costs nothing.
    """
    evaluation = _evaluation(_payload(results))
    row = {image_id: i for i, image_id in enumerate(evaluation.image_ids)}
    order = [row[r["image_id"]] for r in results]
    if len(set(order)) != len(order):
        raise ValueError("per-image scores need one record per image id")
    return {metric: [values[i] for i in order] for metric, values in evaluation.per_image.items()}


def bleu4(results: list[dict]) -> float:
    """Corpus Bleu-4."""
    return _aggregate(results, "bleu4")


def bleu1(results: list[dict]) -> float:
    """Corpus Bleu-1."""
    return _aggregate(results, "bleu1")


def bleu2(results: list[dict]) -> float:
    """Corpus Bleu-2."""
    return _aggregate(results, "bleu2")


def bleu3(results: list[dict]) -> float:
    """Corpus Bleu-3."""
    return _aggregate(results, "bleu3")


def meteor(results: list[dict]) -> float:
    """METEOR (needs Java)."""
    return _aggregate(results, "meteor")


def rouge_l(results: list[dict]) -> float:
    """ROUGE-L."""
    return _aggregate(results, "rouge_l")


def cider(results: list[dict]) -> float:
    """CIDEr-D as in the COCO caption evaluation."""
    return _aggregate(results, "cider")

