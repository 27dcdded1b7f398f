"""SLURM launcher path, exercised with submitit's local executor: two array tasks, one folder."""

import os

from test_sweep_run import HOOK, SPEC

from mmq_eval.sweep.launchers import submit_array
from mmq_eval.sweep.spec import build_sweep
from mmq_eval.sweep.store import load_records


def test_two_local_array_tasks_fill_one_results_folder(tmp_path, monkeypatch):
    for key, value in HOOK.items():
        monkeypatch.setenv(key, value)
    sweep = build_sweep(SPEC)
    jobs = submit_array(sweep, tmp_path, shards=2, cluster="local", timeout_min=5)
    summaries = [job.result() for job in jobs]
    assert [s.ran for s in summaries] == [2, 2]
    ids = [r["config_id"] for r in load_records(tmp_path)]
    assert sorted(ids) == sorted(c.config_id for c in sweep.configs)
    assert {r["shard"] for r in load_records(tmp_path)} == {"0/2", "1/2"}
    assert os.listdir(tmp_path / "submitit")
