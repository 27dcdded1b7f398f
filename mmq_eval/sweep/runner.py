"""Run a sweep shard: one loaded model, one quantize-and-evaluate per configuration."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from mmq_eval.errors import MMQConfigError
from mmq_eval.sweep.evaluate import make_evaluator
from mmq_eval.sweep.per_doc import PerDocStore, sidecar_path
from mmq_eval.sweep.spec import Sweep, shard_configs
from mmq_eval.sweep.store import ResultStore, finished_ids, shard_path


@dataclass(frozen=True)
class ShardSummary:
    """What one shard run did."""

    total: int  # configurations in this shard
    skipped: int  # already finished before this run
    ran: int
    results_file: Path


def run_sweep(sweep: Sweep, out_dir: str | Path, shard: tuple[int, int] = (0, 1),
              progress: bool = True) -> ShardSummary:
    """Evaluate this shard's unfinished configurations, appending one line to the results each
    (and, when the evaluator gives per-document scores, one to the sidecar ``per_doc/`` first)."""
    index, count = shard
    configs = shard_configs(sweep.configs, index, count)
    done = finished_ids(out_dir)
    todo = [c for c in configs if c.config_id not in done]
    store = ResultStore(shard_path(out_dir, index, count))
    per_doc_store = PerDocStore(sidecar_path(store.path))
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="cfg",
               desc=f"sweep {index}/{count}", disable=not progress, dynamic_ncols=True)
    evaluator = make_evaluator(sweep.model, sweep.tasks, sweep.limit) if todo else None
    no_effect = set()  # configurations that quantize only blocks which cannot affect outputs
    for cfg in todo if hasattr(evaluator, "check") else []:
        try:
            effective = evaluator.check(cfg.quant)
        except MMQConfigError as err:
            raise MMQConfigError(f"configuration {cfg.config_id} ({_describe(cfg.features)}): {err}") from err
        if effective is False:
            no_effect.add(cfg.config_id)
            tqdm.write(f"warning: configuration {cfg.config_id} ({_describe(cfg.features)}) quantizes only blocks "
                       "that do not affect outputs: it scores as full precision (recorded with effective: false)")
    host = socket.gethostname()
    for cfg in todo:
        bar.set_postfix_str(_describe(cfg.features), refresh=False)
        start = time.perf_counter()
        bpw, results, *rest = evaluator(cfg.quant)
        if rest and rest[0]:
            per_doc_store.add(cfg.config_id, rest[0])
        store.append({
            "config_id": cfg.config_id,
            "model": sweep.model["pretrained"],
            "quant": cfg.quant.to_dict(),
            "features": cfg.features,
            "bpw": bpw,
            "results": results,
            "elapsed_s": round(time.perf_counter() - start, 3),
            "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": host,
            "shard": f"{index}/{count}",
            **({"effective": False} if cfg.config_id in no_effect else {}),
        })
        bar.update(1)
    bar.close()
    return ShardSummary(len(configs), len(configs) - len(todo), len(todo), store.path)


def _describe(features: dict) -> str:
    """One line naming a configuration by its sweep features."""
    return " ".join(f"{k}={v}" for k, v in features.items())
