"""Captioning metrics through pycocoevalcap (PTB tokenization, Bleu, METEOR, ROUGE-L, CIDEr).

lmms-eval aggregates each metric separately; the scores of one result set are computed once
(one tokenizer start, one scorer pass each) and shared by every metric's aggregation. The METEOR
Java process is started once per Python process: loading its paraphrase tables takes ~10 s,
which a sweep would otherwise pay for every configuration.
"""

from __future__ import annotations

import json
from functools import lru_cache

from pycocoevalcap.bleu.bleu import Bleu
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
    bleu, _ = Bleu(4).compute_score(gts_tok, res_tok)
    scores = {f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)}
    scores["meteor"] = float(_meteor().compute_score(gts_tok, res_tok)[0])
    scores["rouge_l"] = float(Rouge().compute_score(gts_tok, res_tok)[0])
    scores["cider"] = float(Cider().compute_score(gts_tok, res_tok)[0])
    return scores


@lru_cache(maxsize=8)
def _scores_for(payload: str) -> dict[str, float]:
    records = json.loads(payload)
    gts = {r["image_id"]: r["refs"] for r in records}
    res = {r["image_id"]: [r["pred"]] for r in records}
    return caption_scores(gts, res)


def _aggregate(results: list[dict], metric: str) -> float:
    payload = json.dumps(sorted(results, key=lambda r: r["image_id"]), sort_keys=True)
    return _scores_for(payload)[metric]


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

