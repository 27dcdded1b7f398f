"""Sweeps sharing one results folder: each configuration is evaluated once, by whichever sweep
claimed it; the claim of a dead process is taken over; claims themselves (mmq_eval.sweep.claims)."""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from filelock import FileLock, Timeout

from mmq_eval.sweep import claims as claims_module
from mmq_eval.sweep.claims import Claims
from mmq_eval.sweep.runner import run_sweep
from mmq_eval.sweep.spec import build_sweep
from mmq_eval.sweep.store import load_records
from test_sweep_run import HOOK, ROOT, SPEC

# The embedded shapes model, evaluated for real on a few documents: three configurations.
REAL_SPEC = {"model": {"pretrained": "mmq:shapes-blip2", "batch_size": 8, "quant_cache": "none"},
             "tasks": ["mmq_shapes_vqa"], "fixed": {"method": "uniform"}, "grid": {"llm_bits": [8, 4, 2]}}


def _start(spec_path, out, env, *extra):
    cmd = [sys.executable, "-m", "mmq_eval.cli", "sweep", str(spec_path), "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout=240.0):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _claim_files(out: Path) -> list[Path]:
    return sorted((out / "claims").glob("*.json"))


def _finish(proc, timeout=300) -> str:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _freeze_holding_a_claim(proc, out: Path) -> None:
    """SIGSTOP `proc` while it holds a claim and not the claims lock (inside an evaluation); a real
    evaluation can end between two looks, so look again after stopping it, and retry."""
    while True:
        _wait_for(lambda: _claim_files(out), proc)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with FileLock(str(out / "claims" / ".lock"), timeout=0):
                held = _claim_files(out)
            if held:
                return
        except Timeout:
            pass
        os.kill(proc.pid, signal.SIGCONT)


def _share_one_folder(spec: dict, tmp_path: Path, env: dict, extra=()):
    """Sweep 1 claims its first configuration and is frozen (SIGSTOP) mid-evaluation; sweep 2
    runs on the same folder, then sweep 1 is let go. Returns both outputs and the records."""
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    first = _start(spec_path, out, env, *extra)
    second = None
    try:
        _freeze_holding_a_claim(first, out)
        held = json.loads(_claim_files(out)[0].read_text())
        assert (held["pid"], held["host"]) == (first.pid, socket.gethostname())
        second = _start(spec_path, out, {**env, "FAKE_EVAL_DELAY": "0"}, *extra)
        n_configs = len(build_sweep(spec, limit=None, task_index=lambda _: set()).configs)
        results = out / "results.jsonl"
        _wait_for(lambda: results.exists() and results.read_bytes().count(b"\n") == n_configs - 1, second)
        time.sleep(0.5)
        assert second.poll() is None  # waiting for the frozen sweep's configuration
    finally:
        os.kill(first.pid, signal.SIGCONT)
    return first, _finish(first), second, _finish(second), load_records(out), out


def test_a_second_sweep_leaves_claimed_configurations_to_the_first(tmp_path):
    first, out1, second, out2, records, out = _share_one_folder(SPEC, tmp_path, {**HOOK, "FAKE_EVAL_DELAY": "3"})
    assert "shard 0/1: 1 evaluated, 0 already done, 3 evaluated by another sweep, 4 in shard" in out1
    assert "shard 0/1: 3 evaluated, 0 already done, 1 evaluated by another sweep, 4 in shard" in out2
    by_pid = collections.Counter(r["pid"] for r in records)
    assert by_pid == {first.pid: 1, second.pid: 3}
    assert len({r["config_id"] for r in records}) == 4
    assert _claim_files(out) == []


def test_two_real_sweeps_on_the_embedded_model_share_the_work(tmp_path):
    first, out1, second, out2, records, _ = _share_one_folder(REAL_SPEC, tmp_path, {}, ("--limit", "4"))
    assert "1 evaluated, 0 already done, 2 evaluated by another sweep, 3 in shard" in out1
    assert "2 evaluated, 0 already done, 1 evaluated by another sweep, 3 in shard" in out2
    assert collections.Counter(r["pid"] for r in records) == {first.pid: 1, second.pid: 2}
    assert sorted(r["features"]["llm_bits"] for r in records) == [2, 4, 8]
    for rec in records:
        assert 0.0 <= rec["results"]["mmq_shapes_vqa"]["accuracy"] <= 1.0


def test_the_claim_of_a_killed_sweep_is_taken_over(tmp_path, monkeypatch):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    proc = _start(spec_path, out, {**HOOK, "FAKE_EVAL_DELAY": "30"})
    _wait_for(lambda: _claim_files(out), proc)
    orphan = _claim_files(out)[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert orphan.exists() and not (out / "results.jsonl").exists()

    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:fake_factory")
    with pytest.warns(UserWarning, match=f"configuration {orphan.stem}: taking over the stale claim of pid {proc.pid}"):
        summary = run_sweep(build_sweep(SPEC), out, progress=False)
    assert (summary.ran, summary.skipped, summary.by_others) == (4, 0, 0)
    records = load_records(out)
    assert {r["pid"] for r in records} == {os.getpid()}
    assert orphan.stem in {r["config_id"] for r in records}
    assert _claim_files(out) == []


def _write_claim(claims: Claims, config_id: str, pid: int, host: str, job=None, age_s: float = 0.0) -> Path:
    path = claims.folder / f"{config_id}.json"
    path.write_text(json.dumps({"pid": pid, "host": host, "job": job, "since": "earlier"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.fixture
def claims(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return Claims(tmp_path)


def test_a_live_claim_is_respected_and_released_claims_are_free(claims):
    here = socket.gethostname()
    _write_claim(claims, "a", os.getppid(), here)  # our parent: alive, on this host
    holder = claims.claim("a")
    assert (holder.pid, holder.host) == (os.getppid(), here)
    assert f"pid {os.getppid()} on host {here}" in holder.describe()
    assert claims.claim("b") is None
    assert json.loads((claims.folder / "b.json").read_text())["pid"] == os.getpid()
    claims.release("b")
    assert not (claims.folder / "b.json").exists()
    claims.release("a")  # not ours: left alone
    assert (claims.folder / "a.json").exists()


def test_stale_claims_are_taken_over(claims):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_claim(claims, "dead_pid", dead.pid, socket.gethostname())
    _write_claim(claims, "silent_host", 1, "elsewhere", age_s=claims_module.STALE_AFTER_S + 5)
    (claims.folder / "torn.json").write_text('{"pid": 12')
    for config_id, previous in (("dead_pid", f"pid {dead.pid}"), ("silent_host", "host elsewhere"),
                                ("torn", "an unreadable claim file")):
        with pytest.warns(UserWarning, match=f"configuration {config_id}: taking over the stale claim of .*{previous}"):
            assert claims.claim(config_id) is None
        assert json.loads((claims.folder / f"{config_id}.json").read_text())["pid"] == os.getpid()
    _write_claim(claims, "beating_host", 1, "elsewhere", age_s=claims_module.STALE_AFTER_S - 60)
    assert claims.claim("beating_host").host == "elsewhere"


def test_a_requeued_slurm_task_takes_over_its_own_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    claims = Claims(tmp_path)
    _write_claim(claims, "mine", 1, "other-node", job="77#0")  # the task's run before its requeue
    _write_claim(claims, "theirs", 1, "other-node", job="78#0")
    with pytest.warns(UserWarning, match="stale claim of pid 1 on host other-node, SLURM job 77"):
        assert claims.claim("mine") is None
    assert claims.claim("theirs").job == "78#0"


def test_the_heartbeat_keeps_held_claims_fresh(claims, monkeypatch):
    monkeypatch.setattr(claims_module, "HEARTBEAT_S", 0.05)
    with Claims(claims.folder.parent) as mine:
        assert mine.claim("x") is None
        path = mine.folder / "x.json"
        os.utime(path, (0, 0))
        deadline = time.time() + 10
        while path.stat().st_mtime < 1 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - path.stat().st_mtime < 60
    assert not path.exists()  # released on exit
