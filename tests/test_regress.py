"""Regression gate: tolerances, failures naming metric and values, --update, bad input."""

import argparse
import json

import pytest

from mmq_eval import regress

FEATS = {"method": "gptq", "vit_bits": 4, "llm_bits": 4}


def _records(cider=2.90, acc=0.64):
    return [
        {"config_id": "aaaa", "features": FEATS, "bpw": 6.3,
         "results": {"mmq_shapes_cap": {"cider": cider, "bleu4": 0.61}, "mmq_shapes_vqa": {"accuracy": acc}}},
        {"config_id": "bbbb", "features": {"method": "none"}, "bpw": 16.0,
         "results": {"mmq_shapes_cap": {"cider": 3.10, "bleu4": 0.65}, "mmq_shapes_vqa": {"accuracy": 0.70}}},
    ]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run(baseline, results, *extra):
    parser = argparse.ArgumentParser()
    regress.register(parser.add_subparsers())
    args = parser.parse_args(["regress", "--baseline", str(baseline), "--results", str(results), *extra])
    return args.func(args)


@pytest.fixture
def baseline(tmp_path):
    path = tmp_path / "ci" / "baseline.json"
    assert _run(path, _write(tmp_path / "base.jsonl", _records()), "--update") == 0
    return path


def test_update_round_trip(baseline, tmp_path, capsys):
    doc = json.loads(baseline.read_text())
    assert doc["configs"]["aaaa"]["results"]["mmq_shapes_cap"]["cider"] == 2.90
    assert _run(baseline, tmp_path / "base.jsonl") == 0
    assert "all within tolerance" in capsys.readouterr().out


def test_within_tolerance_passes(baseline, tmp_path):
    # cider drops 0.10: beyond abs-tol 0.02 but within rel-tol 5% of 2.90 (0.145).
    assert _run(baseline, _write(tmp_path / "r.jsonl", _records(cider=2.80, acc=0.63))) == 0


def test_planted_drop_fails_naming_metric_and_values(baseline, tmp_path, capsys):
    assert _run(baseline, _write(tmp_path / "r.jsonl", _records(acc=0.55))) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("REGRESSION"))
    assert "mmq_shapes_vqa/accuracy" in line and "0.6400" in line and "0.5500" in line
    assert "cider" not in line


def test_tighter_tolerance_catches_small_drop(baseline, tmp_path):
    results = _write(tmp_path / "r.jsonl", _records(cider=2.80))
    assert _run(baseline, results, "--rel-tol", "0.01") == 1
    assert _run(baseline, results, "--abs-tol", "0.2", "--rel-tol", "0") == 0


def test_missing_metric_and_config_fail(baseline, tmp_path, capsys):
    recs = _records()
    del recs[0]["results"]["mmq_shapes_cap"]["bleu4"]
    assert _run(baseline, _write(tmp_path / "r.jsonl", recs)) == 1
    assert "MISSING metric: mmq_shapes_cap/bleu4" in capsys.readouterr().out
    assert _run(baseline, _write(tmp_path / "r2.jsonl", recs[1:])) == 1
    assert "MISSING configuration: mmq_shapes_cap/cider [aaaa" in capsys.readouterr().out


def test_missing_files_exit_2(baseline, tmp_path, capsys):
    assert _run(baseline, tmp_path / "absent.jsonl") == 2
    assert "absent.jsonl" in capsys.readouterr().err
    assert _run(tmp_path / "nobase.json", tmp_path / "base.jsonl") == 2
    assert "nobase.json" in capsys.readouterr().err
