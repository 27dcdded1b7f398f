"""SLURM launcher path, exercised with submitit's local executor: two array tasks, one folder;
a task signalled mid-way is requeued and resumes from the results store."""

import json
import os
import time
from pathlib import Path

import pytest
from submitit.local.local import LocalJobEnvironment
from test_sweep_run import HOOK, SPEC, fake_factory

from mmq_eval.sweep.launchers import ShardTask, submit_array
from mmq_eval.sweep.runner import run_sweep
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


# --- preemption / timeout: the array task is signalled mid-way, requeued and resumes ----------

SIX = {**SPEC, "grid": {"vit_bits": [8, 4, 3], "llm_bits": [4, 2]}}  # 6 configurations, one shard
HOLD_AT = 3  # the first run of the task stops at its 3rd configuration and waits to be signalled


def preemptible_factory(model, tasks, limit):
    """:func:`fake_factory` that logs ``<pid> start|end <quant>`` per evaluation to $FAKE_EVAL_LOG;
    the first process to reach its ``HOLD_AT``-th configuration writes its pid to $FAKE_EVAL_HOLD
    and waits there, half-way through that configuration, for the test's signal."""
    log, hold = Path(os.environ["FAKE_EVAL_LOG"]), Path(os.environ["FAKE_EVAL_HOLD"])
    score = fake_factory(model, tasks, limit)
    calls = 0

    def note(event, key):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {event} {key}\n")

    def evaluate(spec):
        nonlocal calls
        calls += 1
        key = json.dumps(spec.to_dict(), sort_keys=True)
        note("start", key)
        if calls == HOLD_AT and not hold.exists():
            tmp = hold.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, hold)
            time.sleep(60)  # the signal's handler exits from inside this sleep
            raise RuntimeError("held configuration was never signalled")
        result = score(spec)
        note("end", key)
        return result

    return evaluate


def _submit_held(tmp_path, monkeypatch, max_requeues, timeout_min):
    """Submit SIX as one local array task; return (sweep, out, job, pid) once the task is held."""
    for key, value in HOOK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_submitit:preemptible_factory")
    monkeypatch.setenv("FAKE_EVAL_DELAY", "0.3")
    monkeypatch.setenv("FAKE_EVAL_LOG", str(tmp_path / "evals.log"))
    monkeypatch.setenv("FAKE_EVAL_HOLD", str(tmp_path / "hold"))
    sweep = build_sweep(SIX)
    out = tmp_path / "out"
    (job,) = submit_array(sweep, out, shards=1, cluster="local", max_requeues=max_requeues,
                          timeout_min=timeout_min)
    deadline = time.time() + 60
    while not (tmp_path / "hold").exists():
        assert not job.done() and time.time() < deadline, job.stderr()
        time.sleep(0.05)
    pid = int((tmp_path / "hold").read_text())
    assert len(load_records(out)) == HOLD_AT - 1  # two written, the third half-way
    # SLURM (and submitit's local controller at its time limit) signal the task itself.
    # (LocalJob._interrupt() signals the controller, which has no handler for it and just dies.)
    os.kill(pid, LocalJobEnvironment._usr_sig())
    return sweep, out, job, pid


def _evaluations(tmp_path):
    """``{pid: [(event, quant key), ...]}`` in the order they happened."""
    runs = {}
    for line in (tmp_path / "evals.log").read_text().splitlines():
        pid, event, key = line.split(" ", 2)
        runs.setdefault(int(pid), []).append((event, key))
    return runs


# timeout_min=60: a signal this early is a preemption (no requeue used up); under 10 minutes
# submitit counts any signal as reaching the time limit, which uses up one of max_requeues
@pytest.mark.parametrize("timeout_min, case, left", [(60, "preempted", 1), (5, "timed-out", 0)])
def test_signalled_array_task_is_requeued_and_runs_each_config_once(tmp_path, monkeypatch, timeout_min, case, left):
    start = time.time()
    sweep, out, job, pid = _submit_held(tmp_path, monkeypatch, max_requeues=1, timeout_min=timeout_min)
    summary = job.result()
    assert (summary.total, summary.skipped, summary.ran) == (6, HOLD_AT - 1, 6 - HOLD_AT + 1)
    lines = (out / "results.jsonl").read_text().splitlines()
    ids = [json.loads(line)["config_id"] for line in lines]
    assert sorted(ids) == sorted(c.config_id for c in sweep.configs)  # every configuration exactly once

    runs = _evaluations(tmp_path)
    assert len(runs) == 2 and next(iter(runs)) == pid  # the signalled process, then the requeued one
    first, second = runs.values()
    held = first[-1][1]
    assert [e for e, _ in first] == ["start", "end"] * (HOLD_AT - 1) + ["start"]  # cut off half-way
    assert second[0] == ("start", held)  # the half-done one is evaluated again, first
    finished_first = {k for e, k in first if e == "end"}
    assert not finished_first & {k for _, k in second}  # written ones are not redone
    assert len({k for e, k in second if e == "end"}) == 6 - HOLD_AT + 1

    log = job.stdout()
    assert f"this job is {case}" in log and f"Requeued job {job.job_id} ({left} remaining timeouts)" in log
    assert time.time() - start < 60


def test_timeout_beyond_max_requeues_stops_and_a_rerun_resumes(tmp_path, monkeypatch):
    sweep, out, job, _ = _submit_held(tmp_path, monkeypatch, max_requeues=0, timeout_min=5)
    assert job.exception() is not None
    assert "timed-out too many times" in job.stdout()
    assert len(load_records(out)) == HOLD_AT - 1
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:fake_factory")
    monkeypatch.setenv("FAKE_EVAL_DELAY", "0")
    summary = run_sweep(sweep, out, progress=False)
    assert (summary.skipped, summary.ran) == (HOLD_AT - 1, 6 - HOLD_AT + 1)
    assert sorted(r["config_id"] for r in load_records(out)) == sorted(c.config_id for c in sweep.configs)


def test_shard_task_checkpoint_resubmits_itself(tmp_path):
    task = ShardTask(build_sweep(SPEC), tmp_path, 1, 2)
    delayed = task.checkpoint()
    assert delayed.function is task and delayed.args == () and delayed.kwargs == {}
