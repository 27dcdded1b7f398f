"""Run a sweep shard: one loaded model, one quantize-and-evaluate per configuration."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from mmq_eval.errors import MMQConfigError
from mmq_eval.sweep.claims import Claims
from mmq_eval.sweep.evaluate import make_evaluator
from mmq_eval.sweep.per_doc import PerDocStore, sidecar_path
from mmq_eval.sweep.spec import Sweep, shard_configs
from mmq_eval.sweep.store import ResultStore, finished_ids, shard_path


#: Seconds between looks at configurations that another sweep process is evaluating.
WAIT_POLL_S = 2.0


@dataclass(frozen=True)
class ShardSummary:
    """What one shard run did."""

    total: int  # configurations in this shard
    skipped: int  # already finished before this run
    ran: int  # evaluated by this run
    results_file: Path
    by_others: int = 0  # finished meanwhile by another sweep process sharing the folder


def run_sweep(sweep: Sweep, out_dir: str | Path, shard: tuple[int, int] = (0, 1),
              progress: bool = True) -> ShardSummary:
    """Evaluate this shard's unfinished configurations, appending one line to the results each
    (and, when the evaluator gives per-document scores, one to the sidecar ``per_doc/`` first).

    Every configuration is claimed before it is evaluated (``mmq_eval.sweep.claims``): one that
    another live sweep process holds is left to it, and this run waits for its result (or takes
    it over once the claim is stale) before returning.
    """
    index, count = shard
    configs = shard_configs(sweep.configs, index, count)
    done = finished_ids(out_dir)
    todo = [c for c in configs if c.config_id not in done]
    store = ResultStore(shard_path(out_dir, index, count))
    per_doc_store = PerDocStore(sidecar_path(store.path))
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="cfg",
               desc=f"sweep {index}/{count}", disable=not progress, dynamic_ncols=True)
    evaluator = make_evaluator(sweep.model, sweep.tasks, sweep.limit) if todo else None
    no_effect = _check_all(evaluator, todo)
    ran = by_others = 0
    announced: set[str] = set()
    with Claims(out_dir) as claims:
        while todo:
            waiting = []
            for cfg in todo:
                holder = claims.claim(cfg.config_id)
                if holder is not None:
                    if cfg.config_id not in announced:
                        announced.add(cfg.config_id)
                        tqdm.write(f"configuration {cfg.config_id} ({_describe(cfg.features)}) is being evaluated "
                                   f"by another sweep ({holder.describe()}): using its result when it is stored "
                                   f"(if that process hangs, delete {claims.path(cfg.config_id)})")
                    waiting.append(cfg)
                    continue
                try:
                    if cfg.config_id in finished_ids(out_dir):  # stored by another sweep meanwhile
                        by_others += 1
                    else:
                        bar.set_postfix_str(_describe(cfg.features), refresh=False)
                        _evaluate(sweep, cfg, evaluator, store, per_doc_store, shard, cfg.config_id in no_effect)
                        ran += 1
                finally:
                    claims.release(cfg.config_id)
                bar.update(1)
            if waiting:
                time.sleep(WAIT_POLL_S)
            todo = waiting
    bar.close()
    return ShardSummary(len(configs), len(configs) - ran - by_others, ran, store.path, by_others)


def _check_all(evaluator, configs: list) -> set[str]:
    """Run the evaluator's model-dependent checks on every configuration before the first
    evaluation; the ids of those that cannot affect outputs."""
    no_effect = set()
    for cfg in configs if hasattr(evaluator, "check") else []:
        try:
            effective = evaluator.check(cfg.quant)
        except MMQConfigError as err:
            raise MMQConfigError(f"configuration {cfg.config_id} ({_describe(cfg.features)}): {err}") from err
        if effective is False:
            no_effect.add(cfg.config_id)
            tqdm.write(f"warning: configuration {cfg.config_id} ({_describe(cfg.features)}) quantizes only blocks "
                       "that do not affect outputs: it scores as full precision (recorded with effective: false)")
    return no_effect


def _evaluate(sweep: Sweep, cfg, evaluator, store: ResultStore, per_doc_store: PerDocStore,
              shard: tuple[int, int], no_effect: bool) -> None:
    """Quantize and score one configuration; store its per-document scores, then its record."""
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
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "shard": f"{shard[0]}/{shard[1]}",
        **({"effective": False} if no_effect else {}),
    })


def _describe(features: dict) -> str:
    """One line naming a configuration by its sweep features."""
    return " ".join(f"{k}={v}" for k, v in features.items())
