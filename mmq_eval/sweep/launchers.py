"""Launchers: the local one runs a shard in-process; ``submit_array`` sends every shard of a
sweep to SLURM (or submitit's local executor) as one job array writing one results folder.

Array tasks are preemption-safe: each is a submitit ``Checkpointable`` (:class:`ShardTask`).
On the preemption / time-limit signal (``USR2``) submitit calls :meth:`ShardTask.checkpoint`,
which resubmits the same task unchanged, and requeues it; the requeued task resumes from the
results store, whose finished configurations it skips. A configuration half-way when the signal
came was never written, so it is simply evaluated again (the requeued task takes over its own
claim on it, ``mmq_eval.sweep.claims``); a written one is never redone.
"""

from __future__ import annotations

from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from mmq_eval.sweep.runner import ShardSummary, run_sweep
from mmq_eval.sweep.spec import Sweep

DEFAULT_MAX_REQUEUES = 3


def run_shard(sweep: Sweep, out_dir: str, index: int, count: int) -> ShardSummary:
    """Body of one array task: shard ``index`` of ``count``, results into ``out_dir``."""
    return run_sweep(sweep, out_dir, (index, count))


class ShardTask(Checkpointable):
    """One array task, requeued as itself on preemption or timeout (state lives in the store)."""

    def __init__(self, sweep: Sweep, out_dir: str | Path, index: int, count: int):
        self.sweep, self.out_dir, self.index, self.count = sweep, str(out_dir), index, count

    def __call__(self) -> ShardSummary:
        return run_shard(self.sweep, self.out_dir, self.index, self.count)

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Nothing to save: every finished configuration is already in the results store."""
        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"ShardTask({self.out_dir!r}, shard {self.index}/{self.count})"


def submit_array(sweep: Sweep, out_dir: str | Path, shards: int, cluster: str = "slurm",
                 max_requeues: int = DEFAULT_MAX_REQUEUES, **params) -> list:
    """Submit ``shards`` array tasks through submitit; returns the submitit jobs.

    ``params`` go to ``AutoExecutor.update_parameters`` (``timeout_min``, ``gpus_per_node``,
    ``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_array_parallelism`` ...).
    ``max_requeues`` is submitit's ``max_num_timeout``: how many times a task that reaches its
    time limit is requeued (a preempted task is requeued without using one up). Logs land in
    ``<out_dir>/submitit``.
    """
    import submitit

    if max_requeues < 0:
        raise ValueError(f"max_requeues must be >= 0, got {max_requeues}")
    out_dir = Path(out_dir)
    # only the chosen executor's prefixed argument is used (AutoExecutor drops the others)
    executor = submitit.AutoExecutor(folder=out_dir / "submitit", cluster=cluster,
                                     slurm_max_num_timeout=max_requeues, local_max_num_timeout=max_requeues)
    executor.update_parameters(name="mmq-sweep", **params)
    return executor.submit_array([ShardTask(sweep, out_dir, i, shards) for i in range(shards)])
