"""Paired comparisons of evaluations on the same documents: each metric's difference, its
bootstrap interval and p-value (``mmq_eval.report.bootstrap``) from the per-document scores
(``mmq_eval.sweep.per_doc``). Used by ``mmq-eval report`` (every configuration against the
sweep's full-precision one), ``mmq-eval compare`` and ``mmq-eval regress --mode ci``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.report.bootstrap import CONFIDENCE, DEFAULT_RESAMPLES, PairedResult, paired_bootstrap, resample_counts
from mmq_eval.sweep.per_doc import TOLERANCE as PER_DOC_TOLERANCE
from mmq_eval.sweep.per_doc import doc_ids, doc_stats, per_doc_of
from mmq_eval.sweep.store import load_records, results_files

_DEFAULTS = {"layer_group": "all", "layer_type": "both"}


def config_label(features: dict) -> str:
    """Compact description, e.g. ``gptq vit=4 llm=2 layer_type=mlp``; ``none`` = full precision."""
    parts = [str(features.get("method", "?"))]
    for key, value in features.items():
        if key.endswith("_bits") and value != 16:
            parts.append(f"{key[:-5]}={value}")
        elif key.endswith(("layer_group", "layer_type")) and value != _DEFAULTS.get(key):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def is_full_precision(features: dict) -> bool:
    """Method ``none``, or every component at 16 bits."""
    bits = [v for k, v in features.items() if k.endswith("_bits")]
    return features.get("method") == "none" or (bool(bits) and all(b == 16 for b in bits))


def full_precision(records: list[dict]) -> dict | None:
    """The sweep's full-precision record (method ``none`` preferred, then the lowest config id)."""
    candidates = [r for r in records if is_full_precision(r.get("features", {}))]
    candidates.sort(key=lambda r: (r.get("features", {}).get("method") != "none", r["config_id"]))
    return candidates[0] if candidates else None


def _gives_back(stat, value: float) -> bool:
    """Whether per-document scores reproduce the recorded corpus value (they belong to it)."""
    got = stat.value()
    return math.isfinite(got) and abs(got - value) <= PER_DOC_TOLERANCE * max(1.0, abs(value))


@dataclass(frozen=True)
class MetricDelta:
    """One metric of two evaluations: values, difference ``new - ref`` and, where per-document
    scores of the same documents exist on both sides, its paired bootstrap ``result``."""

    task: str
    metric: str
    ref: float
    new: float
    result: PairedResult | None = None
    note: str = ""

    @property
    def column(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def delta(self) -> float:
        return self.result.delta if self.result is not None else self.new - self.ref


@dataclass
class PairedComparer:
    """Seeded bootstrap draws shared by every comparison of the same number of documents, and
    per-payload metric functions computed once."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    confidence: float = CONFIDENCE
    _counts: dict = field(default_factory=dict, repr=False)
    _stats: dict = field(default_factory=dict, repr=False)

    def counts(self, n_docs: int):
        if n_docs not in self._counts:
            self._counts[n_docs] = resample_counts(n_docs, self.resamples, self.seed)
        return self._counts[n_docs]

    def stats(self, payload: dict) -> dict:
        key = id(payload)
        if key not in self._stats:
            self._stats[key] = (payload, doc_stats(payload))  # the payload kept alive: ids stay unique
        return self._stats[key][1]

    def metric(self, task: str, metric: str, ref_value: float, new_value: float,
               ref_payload: dict | None, new_payload: dict | None) -> MetricDelta:
        """Compare one metric; without usable per-document scores the result is None and ``note`` says why."""
        if self.resamples < 1:
            return MetricDelta(task, metric, ref_value, new_value, None, "intervals off")
        if ref_payload is None or new_payload is None:
            return MetricDelta(task, metric, ref_value, new_value, None, "no per-document scores")
        ref_stat, new_stat = self.stats(ref_payload).get(metric), self.stats(new_payload).get(metric)
        if ref_stat is None or new_stat is None:
            return MetricDelta(task, metric, ref_value, new_value, None, "no per-document scores for this metric")
        if doc_ids(ref_payload) != doc_ids(new_payload):
            return MetricDelta(task, metric, ref_value, new_value, None, "different documents")
        if not (_gives_back(ref_stat, ref_value) and _gives_back(new_stat, new_value)):
            return MetricDelta(task, metric, ref_value, new_value, None, "per-document scores do not give back the value")
        result = paired_bootstrap(ref_stat, new_stat, self.counts(ref_stat.n_docs), self.confidence)
        return MetricDelta(task, metric, ref_value, new_value, result)

    def compare(self, ref_results: dict, ref_per_doc: dict | None, new_results: dict,
                new_per_doc: dict | None) -> list[MetricDelta]:
        """Every metric both result sets have (``{task: {metric: value}}``), sorted."""
        ref_per_doc, new_per_doc = ref_per_doc or {}, new_per_doc or {}
        out = []
        for task in sorted(set(ref_results) & set(new_results)):
            for metric in sorted(set(ref_results[task]) & set(new_results[task])):
                out.append(self.metric(task, metric, float(ref_results[task][metric]), float(new_results[task][metric]),
                                       ref_per_doc.get(task), new_per_doc.get(task)))
        return out


# ---- evaluations from files -------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Scores of one evaluation: a sweep configuration or an lmms-eval run."""

    label: str
    results: dict
    per_doc: dict
    bpw: float | None = None


def from_lmms_output(results_json: str | os.PathLike) -> tuple[dict, dict]:
    """``({task: {metric: value}}, {task: payload})`` of an lmms-eval ``*_results.json``; the
    payloads come from the ``*_samples_<task>.jsonl`` files lmms-eval writes beside it with
    ``--log_samples`` (none without them)."""
    from mmq_eval.sweep.evaluate import metrics_of

    path = Path(results_json)
    try:
        results = metrics_of(json.loads(path.read_text())["results"])
    except (OSError, json.JSONDecodeError, KeyError, AttributeError) as err:
        raise MMQConfigError(f"{path}: not an lmms-eval results file ({err})") from err
    prefix = path.name[: -len("_results.json")] if path.name.endswith("_results.json") else path.stem
    samples = {}
    for task in results:
        file = path.parent / f"{prefix}_samples_{task}.jsonl"
        if file.is_file():
            samples[task] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return results, per_doc_of(samples, results)


def _lmms_bpw(results_json: Path) -> float | None:
    quant = json.loads(results_json.read_text()).get("mmq_quant")
    quant = quant[-1] if isinstance(quant, list) and quant else quant
    return float(quant["bpw"]) if isinstance(quant, dict) and "bpw" in quant else None


def _select(records: list[dict], config: str | None, path) -> dict:
    if config is None:
        if len(records) == 1:
            return records[0]
        raise MMQConfigError(f"{path} holds {len(records)} configurations: choose one with its config id "
                             f"(or 'fp' for full precision): {', '.join(r['config_id'] for r in records[:20])}")
    if config == "fp":
        found = full_precision(records)
        if found is None:
            raise MMQConfigError(f"{path}: no full-precision configuration")
        return found
    matches = [r for r in records if r["config_id"] == config] or [r for r in records if r["config_id"].startswith(config)]
    if len(matches) != 1:
        raise MMQConfigError(f"{path}: {'no' if not matches else 'more than one'} configuration matches {config!r}")
    return matches[0]


def load_evaluation(path: str | os.PathLike, config: str | None = None) -> Evaluation:
    """A sweep's configuration (results ``.jsonl`` file or folder, ``config`` an id, a unique id
    prefix or ``fp``) or an lmms-eval run (its ``*_results.json``, or a folder holding one: the
    newest), with the per-document scores found beside it."""
    from mmq_eval.sweep.per_doc import load_per_doc

    path = Path(path)
    if not path.exists():
        raise MMQConfigError(f"results not found: {path}")
    lmms = None
    if path.is_file() and path.suffix == ".json":
        lmms = path
    elif path.is_dir() and not results_files(path):
        found = sorted(path.rglob("*_results.json"), key=lambda p: p.name)
        if not found:
            raise MMQConfigError(f"{path}: neither sweep results (*.jsonl) nor an lmms-eval *_results.json")
        lmms = found[-1]
    if lmms is not None:
        if config is not None:
            raise MMQConfigError(f"{lmms}: an lmms-eval run has no configurations to choose from")
        results, per_doc = from_lmms_output(lmms)
        return Evaluation(str(lmms), results, per_doc, _lmms_bpw(lmms))
    records = load_records(path)
    if not records:
        raise MMQConfigError(f"no finished configurations in {path}")
    rec = _select(records, config, path)
    per_doc = load_per_doc(path, [rec["config_id"]]).get(rec["config_id"], {})
    label = f"{rec['config_id']} ({config_label(rec.get('features', {}))})"
    return Evaluation(label, rec.get("results") or {}, per_doc, rec.get("bpw"))
