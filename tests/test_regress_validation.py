"""`regress` validates what it reads: bad baselines, results and tolerances exit 2 naming the file
and the field; a current value that is NaN/Infinity against a finite baseline is a regression."""

import json

import numpy as np
import pytest
from test_regress import _records, _run, _write
from test_regress_ci import BASE_ACC
from test_regress_ci import _write as _write_with_docs

ACC = "results.mmq_shapes_vqa.accuracy"


def _baseline(tmp_path, edit):
    """A valid baseline document written by --update, then changed by `edit(doc)`."""
    path = tmp_path / "baseline.json"
    assert _run(path, _write(tmp_path / "base.jsonl", _records()), "--update") == 0
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


def _set(path_in_doc, value):
    def edit(doc):
        node = doc
        for key in path_in_doc[:-1]:
            node = node[key]
        node[path_in_doc[-1]] = value
    return edit


# (edit of the baseline document, message on stderr after "baseline <file>: ")
BAD_BASELINES = [
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], float("nan")),
     f"configs.aaaa.{ACC} is nan, not a finite number; rewrite the baseline with --update from results without "
     "NaN/Infinity"),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], float("inf")),
     f"configs.aaaa.{ACC} is inf, not a finite number"),
    (_set(["configs", "bbbb", "results", "mmq_shapes_cap", "cider"], -float("inf")),
     "configs.bbbb.results.mmq_shapes_cap.cider is -inf, not a finite number"),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], "0.64"),
     f'configs.aaaa.{ACC} is "0.64" (a string); expected a number'),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], True),
     f"configs.aaaa.{ACC} is true (a boolean); expected a number"),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], None),
     f"configs.aaaa.{ACC} is null; expected a number"),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa", "accuracy"], [0.64]),
     f"configs.aaaa.{ACC} is [0.64] (a list); expected a number"),
    (_set(["configs", "aaaa", "results", "mmq_shapes_vqa"], 0.64),
     "configs.aaaa.results.mmq_shapes_vqa is a number; expected an object"),
    (_set(["configs", "aaaa", "results"], ["mmq_shapes_vqa"]), "configs.aaaa.results is a list; expected an object"),
    (_set(["configs", "aaaa", "features"], "gptq"), "configs.aaaa.features is a string; expected an object"),
    (_set(["configs", "aaaa"], None), "configs.aaaa is null; expected an object"),
    (_set(["configs"], {}), "configs is empty, so it checks nothing; write it with --update"),
    (_set(["configs", "aaaa", "results"], {}), "configs.aaaa.results holds no metric, so it checks nothing"),
    (_set(["configs", "aaaa", "results"], {"mmq_shapes_vqa": {}}), "configs.aaaa.results holds no metric"),
]


@pytest.mark.parametrize("edit,message", BAD_BASELINES, ids=[m[:40] for _, m in BAD_BASELINES])
@pytest.mark.parametrize("mode", ["tolerance", "ci"])
def test_a_bad_baseline_exits_2_naming_the_file_and_field(tmp_path, capsys, edit, message, mode):
    baseline = _baseline(tmp_path, edit)
    capsys.readouterr()
    assert _run(baseline, tmp_path / "base.jsonl", "--mode", mode) == 2
    captured = capsys.readouterr()
    assert f"error: baseline {baseline}: {message}" in captured.err
    assert captured.out == ""


def _results(tmp_path, value=None, edit=None):
    records = _records()
    if edit is None:
        records[0]["results"]["mmq_shapes_vqa"]["accuracy"] = value
    else:
        edit(records[0])
    return _write(tmp_path / "r.jsonl", records)


@pytest.fixture
def baseline(tmp_path):
    return _baseline(tmp_path, lambda doc: None)


# (value of aaaa's accuracy in the results, message on stderr after "results <file> (config_id aaaa): ")
BAD_RESULT_TYPES = [
    ("0.64", f'{ACC} is "0.64" (a string); expected a number'),
    (False, f"{ACC} is false (a boolean); expected a number"),
    (None, f"{ACC} is null; expected a number"),
    ({"value": 0.64}, f'{ACC} is {{"value": 0.64}} (an object); expected a number'),
]


@pytest.mark.parametrize("value,message", BAD_RESULT_TYPES, ids=[m[:40] for _, m in BAD_RESULT_TYPES])
def test_a_result_of_the_wrong_type_exits_2_naming_the_file_and_field(baseline, tmp_path, capsys, value, message):
    results = _results(tmp_path, value)
    assert _run(baseline, results) == 2
    assert f"error: results {results} (config_id aaaa): {message}" in capsys.readouterr().err


def test_a_results_entry_that_is_not_an_object_exits_2(baseline, tmp_path, capsys):
    results = _results(tmp_path, edit=lambda rec: rec.update(results=[1, 2]))
    assert _run(baseline, results) == 2
    assert f"error: results {results} (config_id aaaa): results is a list; expected an object" in capsys.readouterr().err
    results = _results(tmp_path, edit=lambda rec: rec.update(features="gptq"))
    assert _run(baseline, results) == 2
    assert "(config_id aaaa): features is a string; expected an object" in capsys.readouterr().err


def test_a_line_that_is_not_an_object_exits_2_naming_the_file(baseline, tmp_path, capsys):
    results = tmp_path / "odd.jsonl"
    results.write_text(json.dumps(_records()[0]) + "\n[1, 2]\n")
    assert _run(baseline, results) == 2
    assert f"error: results {results}: a line is not a JSON object with a string config_id" in capsys.readouterr().err


@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")])
def test_a_non_finite_result_against_a_finite_baseline_is_a_regression(baseline, tmp_path, capsys, value, shown):
    assert _run(baseline, _results(tmp_path, value)) == 1
    out = capsys.readouterr().out
    failures = [line for line in out.splitlines() if line.startswith(("REGRESSION", "MISSING"))]
    assert failures == ["REGRESSION mmq_shapes_vqa/accuracy [aaaa gptq llm=4 vit=4]: "
                        f"baseline 0.6400, current {shown}: not a finite number (the run produced NaN/Infinity for "
                        "this metric)"]
    assert "1 failure(s)" in out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_result_is_a_regression_in_ci_mode_too(tmp_path, capsys, value):
    baseline = tmp_path / "ci" / "baseline.json"
    assert _run(baseline, _write_with_docs(tmp_path / "base", BASE_ACC), "--update") == 0
    folder = _write_with_docs(tmp_path / "cur", np.array(BASE_ACC))
    lines = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    lines[0]["results"]["mmq_shapes_vqa"]["accuracy"] = value
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    capsys.readouterr()
    assert _run(baseline, folder, "--mode", "ci") == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("REGRESSION"))
    assert line.startswith("REGRESSION mmq_shapes_vqa/accuracy [aaaa") and f"current {value}: not a finite" in line


def test_update_refuses_non_finite_results(tmp_path, capsys):
    results = _results(tmp_path, float("nan"))
    target = tmp_path / "new" / "baseline.json"
    assert _run(target, results, "--update") == 2
    assert (f"error: results {results} (config_id aaaa): {ACC} is nan, not a finite number; --update writes only "
            "finite scores: rerun that configuration") in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize("flag,value", [("--abs-tol", "nan"), ("--rel-tol", "nan"), ("--abs-tol", "inf"),
                                        ("--rel-tol", "-0.1")])
def test_a_bad_tolerance_exits_2_naming_it(baseline, tmp_path, capsys, flag, value):
    assert _run(baseline, tmp_path / "base.jsonl", flag, value) == 2
    shown = {"nan": "nan", "inf": "inf", "-0.1": "-0.1"}[value]
    assert f"error: {flag} {shown}: must be a finite number >= 0" in capsys.readouterr().err


def test_integer_scores_are_numbers(baseline, tmp_path):
    records = _records()
    records[1]["results"]["mmq_shapes_vqa"]["accuracy"] = 1  # an int, above the baseline 0.70
    assert _run(baseline, _write(tmp_path / "r.jsonl", records)) == 0
