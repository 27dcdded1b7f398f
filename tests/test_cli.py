"""The plugin registration and the mmq-eval / lmms-eval command lines, end to end."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mmq_eval.cli import main
from mmq_eval.tasks import tasks_path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **kwargs)


def test_tasks_path_holds_the_shapes_tasks(capsys):
    assert main(["tasks-path"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == tasks_path()
    assert (Path(printed) / "mmq_shapes" / "mmq_shapes_cap.yaml").is_file()


def test_entry_point_resolves_mmq_blip2():
    from lmms_eval import models

    from mmq_eval.models.blip2 import MMQBlip2

    assert models.get_model("mmq_blip2") is MMQBlip2


def test_task_manager_finds_our_tasks():
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=tasks_path())
    assert {"mmq_shapes_cap", "mmq_shapes_vqa"} <= set(manager.all_tasks)


def test_run_fails_loudly_on_a_bad_model_arg(tmp_path):
    proc = run([str(BIN / "mmq-eval"), "run", "--model", "mmq_blip2", "--model_args",
                "pretrained=mmq:shapes-blip2,bogus=1", "--tasks", "mmq_shapes_vqa",
                "--output_path", str(tmp_path)])
    assert proc.returncode == 2
    assert "mmq-eval: error: unknown model arg 'bogus'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_plain_lmms_eval_runs_our_task_with_our_model(tmp_path):
    proc = run([str(BIN / "lmms-eval"), "--model", "mmq_blip2", "--model_args",
                "pretrained=mmq:shapes-blip2", "--include_path", tasks_path(),
                "--tasks", "mmq_shapes_vqa", "--limit", "40", "--batch_size", "8",
                "--output_path", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("*_results.json")).read_text())
    accuracy = results["results"]["mmq_shapes_vqa"]["accuracy,none"]
    assert 0.3 < accuracy <= 1.0


def test_mmq_eval_run_records_the_quant_report(tmp_path):
    proc = run([str(BIN / "mmq-eval"), "run", "--model", "mmq_blip2", "--model_args",
                "pretrained=mmq:shapes-blip2,method=uniform,llm_bits=4,quant_cache=none",
                "--tasks", "mmq_shapes_cap", "--limit", "16", "--batch_size", "8",
                "--output_path", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bits per weight" in proc.stdout
    results = json.loads(next(tmp_path.rglob("*_results.json")).read_text())
    assert results["mmq_quant"]["pretrained"] == "mmq:shapes-blip2"
    assert 4.0 < results["mmq_quant"]["bpw"] < 16.0
    assert results["results"]["mmq_shapes_cap"]["cider,none"] > 0.5


def _run_shapes(output_path, llm_bits, capsys):
    code = main(["run", "--model", "mmq_blip2", "--model_args",
                 f"pretrained=mmq:shapes-blip2,method=uniform,llm_bits={llm_bits},quant_cache=none",
                 "--tasks", "mmq_shapes_vqa", "--limit", "4", "--batch_size", "4", "--output_path", str(output_path)])
    return code, capsys.readouterr()


def test_nested_output_paths_keep_their_own_quant_reports(tmp_path, capsys):
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    code, _ = _run_shapes(inner, 8, capsys)
    assert code == 0
    inner_file = next(inner.rglob("*_results.json"))
    future = time.time() + 3600  # as if the inner run had finished while the outer one ran
    os.utime(inner_file, (future, future))
    code, _ = _run_shapes(outer, 4, capsys)
    assert code == 0
    outer_file = next(p for p in outer.rglob("*_results.json") if inner not in p.parents)
    assert json.loads(inner_file.read_text())["mmq_quant"]["spec"]["llm_bits"] == 8
    assert json.loads(outer_file.read_text())["mmq_quant"]["spec"]["llm_bits"] == 4


def test_results_that_cannot_be_saved_fail_the_run(tmp_path, capsys):
    (tmp_path / "mmq__shapes-blip2").write_text("a file where lmms-eval puts the model's folder\n")
    code, captured = _run_shapes(tmp_path, 8, capsys)
    assert code == 1
    assert f"the results could not be saved under --output_path {tmp_path}" in captured.err
    assert list(tmp_path.rglob("*_results.json")) == []
