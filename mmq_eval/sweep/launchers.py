"""Launchers: the local one runs a shard in-process; ``submit_array`` sends every shard of a
sweep to SLURM (or submitit's local executor) as one job array writing one results folder."""

from __future__ import annotations

from pathlib import Path

from mmq_eval.sweep.runner import ShardSummary, run_sweep
from mmq_eval.sweep.spec import Sweep


def run_shard(sweep: Sweep, out_dir: str, index: int, count: int) -> ShardSummary:
    """Body of one array task: shard ``index`` of ``count``, results into ``out_dir``."""
    return run_sweep(sweep, out_dir, (index, count))


def submit_array(sweep: Sweep, out_dir: str | Path, shards: int, cluster: str = "slurm", **params) -> list:
    """Submit ``shards`` array tasks through submitit; returns the submitit jobs.

    ``params`` go to ``AutoExecutor.update_parameters`` (``timeout_min``, ``gpus_per_node``,
    ``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_array_parallelism`` ...).
    Logs land in ``<out_dir>/submitit``.
    """
    import submitit

    out_dir = Path(out_dir)
    executor = submitit.AutoExecutor(folder=out_dir / "submitit", cluster=cluster)
    executor.update_parameters(name="mmq-sweep", **params)
    n = shards
    return executor.map_array(run_shard, [sweep] * n, [str(out_dir)] * n, list(range(n)), [n] * n)
