"""Sweep runner: a fake evaluator, crash-and-resume with SIGKILL, torn-line repair."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmq_eval.errors import MMQConfigError
from mmq_eval.sweep.evaluate import make_evaluator, metrics_of
from mmq_eval.sweep.runner import run_sweep
from mmq_eval.sweep.spec import COMPONENTS, build_sweep, features_of
from mmq_eval.sweep.store import ResultStore, load_records

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"model": {"pretrained": "mmq:shapes-blip2", "batch_size": 4},
        "tasks": ["mmq_shapes_cap", "mmq_shapes_vqa"],
        "fixed": {"method": "uniform"},
        "grid": {"vit_bits": [8, 4], "llm_bits": [4, 2]}}
HOOK = {"MMQ_SWEEP_EVALUATOR": "test_sweep_run:fake_factory",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def fake_factory(model, tasks, limit):
    """Scores from the spec's bits; ``FAKE_EVAL_DELAY`` seconds per configuration."""
    delay = float(os.environ.get("FAKE_EVAL_DELAY", "0"))

    def evaluate(spec):
        time.sleep(delay)
        feats = features_of(spec)
        bits = [feats[f"{c}_bits"] for c in COMPONENTS]
        return sum(bits) / len(bits), {t: {"score": min(bits) / 16} for t in tasks}

    return evaluate


def _sweep_cmd(spec_path, out):
    return [sys.executable, "-m", "mmq_eval.cli", "sweep", str(spec_path), "--out", str(out)]


def test_sigkill_mid_sweep_then_resume_gives_each_config_once(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    results = out / "results.jsonl"
    env = {**os.environ, **HOOK, "FAKE_EVAL_DELAY": "1.0"}
    proc = subprocess.Popen(_sweep_cmd(spec_path, out), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= results.read_bytes().count(b"\n") < 4

    env["FAKE_EVAL_DELAY"] = "0"
    done = subprocess.run(_sweep_cmd(spec_path, out), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stdout
    lines = results.read_text().splitlines()
    ids = [json.loads(line)["config_id"] for line in lines]
    assert len(ids) == 4 and len(set(ids)) == 4
    for line in lines:
        rec = json.loads(line)
        assert rec["bpw"] > 0 and set(rec["results"]) == set(SPEC["tasks"])
        assert rec["shard"] == "0/1" and rec["quant"]["method"] == "uniform"
        assert {"config_id", "model", "features", "elapsed_s", "finished_at", "host"} <= set(rec)


def test_torn_last_line_is_ignored_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:fake_factory")
    sweep = build_sweep(SPEC)
    run_sweep(sweep, tmp_path, progress=False)
    path = tmp_path / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # a crash mid-write of the third line
    assert len(load_records(tmp_path)) == 2
    summary = run_sweep(sweep, tmp_path, progress=False)
    assert (summary.skipped, summary.ran) == (2, 2)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["config_id"] for r in recs) == sorted(c.config_id for c in sweep.configs)


def test_store_appends_a_config_once(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    assert store.append({"config_id": "x", "bpw": 4.0})
    assert not store.append({"config_id": "x", "bpw": 5.0})
    assert load_records(tmp_path) == [{"config_id": "x", "bpw": 4.0}]


def test_shards_write_their_own_files_and_skip_each_others_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:fake_factory")
    sweep = build_sweep(SPEC)
    for i in range(2):
        assert run_sweep(sweep, tmp_path, (i, 2), progress=False).ran == 2
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["results.shard0of2.jsonl", "results.shard1of2.jsonl"]
    assert run_sweep(sweep, tmp_path, progress=False).ran == 0  # unsharded rerun finds all done


def test_lmms_eval_results_become_plain_metrics(monkeypatch):
    results = {"mmq_shapes_cap": {"alias": "mmq_shapes_cap", "cider,none": 2.9, "cider_stderr,none": "N/A"},
               "mmq_shapes_vqa": {"accuracy,none": 0.64, "accuracy_stderr_clt,none": 0.01, "accuracy,strict": 0.6}}
    assert metrics_of(results) == {"mmq_shapes_cap": {"cider": 2.9},
                                   "mmq_shapes_vqa": {"accuracy": 0.64, "accuracy_strict": 0.6}}
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "no_such_module:factory")
    with pytest.raises(MMQConfigError, match="MMQ_SWEEP_EVALUATOR"):
        make_evaluator({}, [], None)


class CheckingEvaluator:
    """A fake whose model-dependent check rejects 2-bit LLMs."""

    def check(self, spec):
        if spec.component_bits("llm") == 2:
            raise MMQConfigError("llm_bits=2 not supported by this model")

    def __call__(self, spec):
        raise AssertionError("evaluated before every configuration was checked")


def checking_factory(model, tasks, limit):
    return CheckingEvaluator()


def test_model_checks_run_before_the_first_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:checking_factory")
    with pytest.raises(MMQConfigError, match=r"configuration \w+ \(method=uniform .*llm_bits=2 .*\): llm_bits=2 not supported"):
        run_sweep(build_sweep(SPEC), tmp_path, progress=False)
    assert load_records(tmp_path) == []


class NoEffectEvaluator:
    """A fake whose model-dependent check says 8-bit ViTs cannot affect outputs."""

    def check(self, spec):
        return spec.component_bits("vit") != 8

    def __call__(self, spec):
        return 5.0, {"mmq_shapes_cap": {"cider": 1.0}}


def no_effect_factory(model, tasks, limit):
    return NoEffectEvaluator()


def test_configurations_without_effect_are_flagged_in_the_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_run:no_effect_factory")
    run_sweep(build_sweep(SPEC), tmp_path, progress=False)
    records = load_records(tmp_path)
    flagged = {r["features"]["vit_bits"]: r.get("effective", True) for r in records}
    assert len(records) == 4 and flagged == {8: False, 4: True}
    assert capsys.readouterr().out.count("do not affect outputs") == 2
