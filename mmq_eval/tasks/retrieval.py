"""Recall@K metrics of the ``mmq_*_retrieval`` tasks, in percent as the paper reports them.

Each doc's response (see ``mmq_eval.models.retrieval``) is ``{"i2t": rank, "t2i": [ranks]}``;
image-to-text recall averages over images, text-to-image recall over all captions.
"""

from __future__ import annotations

import json

from mmq_eval.data.layout import raise_if_unprepared
from mmq_eval.errors import MMQConfigError
from mmq_eval.tasks.retrieval_metrics import recall_at_k

KS = (1, 5, 10)
METRICS = tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in KS) + ("mean_recall",)


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Retrieval needs no prompt; a placeholder doc of unprepared data raises MMQDataError here."""
    raise_if_unprepared(doc)
    return ""


def process_results(doc: dict, results: list) -> dict:
    """The doc's ranks (lmms-eval hands the response over as a string), once per metric."""
    try:
        record = json.loads(results[0])
        ranks = {"i2t": int(record["i2t"]), "t2i": [int(r) for r in record["t2i"]]}
    except (IndexError, KeyError, TypeError, ValueError):
        raise MMQConfigError(
            f"retrieval task got {results!r} instead of ranks: run it with an mmq_* model "
            "(mmq_blip2 with a Blip2ForImageTextRetrieval checkpoint)"
        ) from None
    return {metric: ranks for metric in METRICS}


def recall(results: list[dict], direction: str, k: int) -> float:
    """Recall@k in percent for direction "i2t" (per image) or "t2i" (per caption)."""
    if direction == "i2t":
        ranks = [r["i2t"] for r in results]
    else:
        ranks = [rank for r in results for rank in r["t2i"]]
    return 100.0 * recall_at_k(ranks, k)


def _aggregation(direction: str, k: int):
    def aggregate(results: list[dict]) -> float:
        return recall(results, direction, k)

    aggregate.__name__ = f"{direction}_r{k}"
    aggregate.__doc__ = f"{'Image-to-text' if direction == 'i2t' else 'Text-to-image'} Recall@{k} (%)."
    return aggregate


i2t_r1, i2t_r5, i2t_r10 = (_aggregation("i2t", k) for k in KS)
t2i_r1, t2i_r5, t2i_r10 = (_aggregation("t2i", k) for k in KS)


def mean_recall(results: list[dict]) -> float:
    """Mean of the six Recall@K values (%), the usual retrieval summary."""
    return sum(recall(results, d, k) for d in ("i2t", "t2i") for k in KS) / (2 * len(KS))
