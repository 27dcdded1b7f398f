"""Per-document scores: extracted from lmms-eval's logged samples, kept in a sidecar of the
results, turned back into corpus metrics for the paired bootstrap (``mmq_eval.report``).

One task's per-document payload (documents in ``doc_id`` order)::

    {"doc_ids": {"range": [0, 200]} or [3, 7, ...],
     "scores": {metric: [value per doc]},    # the metric is their mean (VQA accuracy, CIDEr-D, ROUGE-L)
     "bleu":   [[testlen, reflen, correct_1..4] per doc],   # corpus Bleu-1..4 from sums
     "ranks":  {"i2t": [rank per image], "t2i": [[rank per caption] per image]}}   # Recall@K

Only what reproduces the task's corpus value from all documents (within 1e-6, relative above 1)
is kept: a metric whose lmms-eval aggregation is not the mean of its per-document values (METEOR,
an arbitrary stock-task metric) has no per-document scores.

The sidecar of a sweep folder is ``OUT/per_doc/<results file name>``: one JSON line per
configuration, ``{"config_id": ..., "tasks": {task: payload}}``, appended (locked, fsynced,
torn last line ignored) before the configuration's results line, so every finished
configuration has its line. It sits in a subfolder because every ``*.jsonl`` of ``OUT`` is read
as results. Floats keep 12 significant digits.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from mmq_eval.report.bootstrap import DocStat, mean_stat, ratio_stat
from mmq_eval.sweep.store import ResultStore

SUBDIR = "per_doc"
KS = (1, 5, 10)
TOLERANCE = 1e-6
_CAPTION_KEYS = {"image_id", "pred", "refs"}
_RECALL = re.compile(r"^(i2t|t2i)_r(\d+)$")


# ---- payload -> corpus metrics ----------------------------------------------------------------
def doc_ids(payload: dict) -> list:
    """The documents of a payload, in order."""
    ids = payload.get("doc_ids", [])
    if isinstance(ids, dict):
        return list(range(*ids["range"]))
    return list(ids)


def _bleu_fn(order: int):
    def fn(sums, n_docs):
        from mmq_eval.tasks.captioning import bleu_from_stats

        return bleu_from_stats(sums, order)

    return fn


def _mean_recall(sums, n_docs):
    return (sums[..., 0:3].sum(axis=-1) / n_docs + sums[..., 3:6].sum(axis=-1) / sums[..., 6]) / 6.0


def doc_stats(payload: dict) -> dict[str, DocStat]:
    """Every corpus metric the payload can reproduce, as a function of per-document columns."""
    import numpy as np

    stats = {metric: mean_stat(values) for metric, values in payload.get("scores", {}).items()}
    if payload.get("bleu"):
        stored = np.asarray(payload["bleu"], dtype=float)  # testlen, reflen, correct_1..4
        guess = np.maximum(0.0, stored[:, :1] - np.arange(4)[None, :])  # n-grams of the prediction
        columns = np.column_stack([stored[:, :2], guess, stored[:, 2:]])
        for order in range(1, 5):
            stats[f"bleu{order}"] = DocStat(columns, _bleu_fn(order))
    ranks = payload.get("ranks")
    if ranks:
        i2t = np.asarray(ranks["i2t"], dtype=float)
        t2i = [np.asarray(r, dtype=float) for r in ranks["t2i"]]
        n_caps = np.asarray([len(r) for r in t2i], dtype=float)
        hits = {}
        for k in KS:
            hits["i2t", k] = 100.0 * (i2t < k)
            hits["t2i", k] = np.asarray([100.0 * np.sum(r < k) for r in t2i])
            stats[f"i2t_r{k}"] = mean_stat(hits["i2t", k])
            stats[f"t2i_r{k}"] = ratio_stat(hits["t2i", k], n_caps)
        columns = np.column_stack([*(hits["i2t", k] for k in KS), *(hits["t2i", k] for k in KS), n_caps])
        stats["mean_recall"] = DocStat(columns, _mean_recall)
    return stats


# ---- lmms-eval samples -> payload -------------------------------------------------------------
def _compact(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return float(f"{value:.12g}")


def stored_bleu(stats: list) -> list:
    """The stored part of an image's BLEU counts ``[testlen, reflen, guess_1..4, correct_1..4]``
    (``captioning.bleu_stats``): guess_k = max(0, testlen - k + 1) follows from testlen."""
    return list(stats[:2]) + list(stats[6:])


def _encode_ids(ids: list) -> list | dict:
    if ids and all(isinstance(i, int) for i in ids) and ids == list(range(ids[0], ids[0] + len(ids))):
        return {"range": [ids[0], ids[0] + len(ids)]}
    return ids


def _close(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= TOLERANCE * max(1.0, abs(b))


def task_payload(samples: list[dict], metrics: dict[str, float]) -> dict | None:
    """A task's per-document payload from lmms-eval's logged samples (each holding its
    ``doc_id`` and the task's ``process_results`` output under the metric names) and the task's
    corpus ``metrics``; None when no metric can be reproduced per document."""
    by_doc: dict = {}
    for sample in samples:
        by_doc.setdefault(sample.get("doc_id"), sample)
    if not by_doc or None in by_doc:
        return None
    docs = [by_doc[i] for i in sorted(by_doc)]
    payload: dict = {"doc_ids": _encode_ids(sorted(by_doc))}
    scores: dict = {}
    for metric in metrics:
        values = [doc.get(metric) for doc in docs]
        if all(isinstance(v, (int, float)) for v in values):
            scores[metric] = [_compact(v) for v in values]
    first = {m: docs[0].get(m) for m in metrics}
    caption_metric = next((m for m, v in first.items() if isinstance(v, dict) and _CAPTION_KEYS <= set(v)), None)
    if caption_metric is not None:
        from mmq_eval.tasks.captioning import per_image_scores

        try:
            per_image = per_image_scores([doc[caption_metric] for doc in docs])
        except (KeyError, TypeError, ValueError):
            per_image = {}
        for metric in ("cider", "rouge_l"):
            if metric in metrics and metric in per_image:
                scores[metric] = [_compact(v) for v in per_image[metric]]
        if per_image and any(m.startswith("bleu") for m in metrics):
            payload["bleu"] = [[_compact(v) for v in stored_bleu(row)] for row in per_image["bleu"]]
    rank_metric = next((m for m, v in first.items() if isinstance(v, dict) and {"i2t", "t2i"} <= set(v)), None)
    if rank_metric is not None and any(_RECALL.match(m) or m == "mean_recall" for m in metrics):
        try:
            payload["ranks"] = {"i2t": [int(doc[rank_metric]["i2t"]) for doc in docs],
                                "t2i": [[int(r) for r in doc[rank_metric]["t2i"]] for doc in docs]}
        except (KeyError, TypeError, ValueError):
            pass
    if scores:
        payload["scores"] = scores
    return _verified(payload, metrics)


def _verified(payload: dict, metrics: dict[str, float]) -> dict | None:
    """``payload`` without the parts that do not give back the corpus values."""
    stats = doc_stats(payload)
    good = {m for m, stat in stats.items() if m in metrics and _close(stat.value(), float(metrics[m]))}
    payload["scores"] = {m: v for m, v in payload.get("scores", {}).items() if m in good}
    if not payload["scores"]:
        del payload["scores"]
    if "bleu" in payload and not any(f"bleu{k}" in good for k in range(1, 5)):
        del payload["bleu"]
    if "ranks" in payload and not any(_RECALL.match(m) or m == "mean_recall" for m in good):
        del payload["ranks"]
    return payload if {"scores", "bleu", "ranks"} & set(payload) else None


def per_doc_of(samples: dict[str, list[dict]], results: dict[str, dict[str, float]]) -> dict[str, dict]:
    """``{task: payload}`` for every task of ``results`` whose logged ``samples`` give per-document scores."""
    out = {}
    for task, metrics in results.items():
        payload = task_payload(samples.get(task) or [], metrics)
        if payload is not None:
            out[task] = payload
    return out


# ---- the sidecar ------------------------------------------------------------------------------
def sidecar_path(results_file: str | os.PathLike) -> Path:
    """The per-document sidecar of one results file: ``per_doc/<its name>`` beside it."""
    results_file = Path(results_file)
    return results_file.parent / SUBDIR / results_file.name


def _lines(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    yield from (raw for raw in data.split(b"\n")[:-1] if raw.strip())


def _line_id(raw: bytes) -> str | None:
    match = re.match(rb'\{"config_id": "([^"]*)"', raw)
    return match.group(1).decode() if match else None


class PerDocStore(ResultStore):
    """Append-only sidecar, one line per configuration, with the results store's guarantees; its
    folder appears with the first line, and a present configuration is found by its id alone
    (the payloads are not parsed)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    def _contains(self, config_id: str) -> bool:
        return any(_line_id(raw) == config_id for raw in _lines(self.path))

    def _line(self, record: dict) -> bytes:
        return (json.dumps(record, separators=(",", ":")).replace('{"config_id":', '{"config_id": ', 1)
                + "\n").encode()

    def add(self, config_id: str, tasks: dict) -> bool:
        """Write the configuration's payloads; False (nothing written) if it has a line already."""
        return self.append({"config_id": config_id, "tasks": tasks})


def _sidecar_files(path: Path) -> list[Path]:
    if not path.exists():
        return []
    if path.is_file() and path.parent.name == SUBDIR:
        return [path]
    folder = path if path.is_dir() else path.parent
    return sorted((folder / SUBDIR).glob("*.jsonl"))


def read_per_doc(files, config_ids=None) -> dict[str, dict]:
    """``{config_id: {task: payload}}`` of sidecar ``files`` (one JSON line per configuration);
    first line of each configuration kept, ``config_ids`` (if given) only."""
    wanted = None if config_ids is None else set(config_ids)
    out: dict[str, dict] = {}
    for file in files:
        for raw in _lines(Path(file)):
            cid = _line_id(raw)
            if cid is None or cid in out or (wanted is not None and cid not in wanted):
                continue
            try:
                out[cid] = json.loads(raw)["tasks"]
            except (json.JSONDecodeError, KeyError):
                continue
    return out


def load_per_doc(path: str | os.PathLike, config_ids=None) -> dict[str, dict]:
    """The per-document scores kept beside results ``path`` (a results file, its folder, or a
    file of its ``per_doc/`` folder): :func:`read_per_doc` of the sidecars; empty without any."""
    return read_per_doc(_sidecar_files(Path(path)), config_ids)
