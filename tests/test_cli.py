"""The plugin registration and the mmq-eval / lmms-eval command lines, end to end."""

import json
import os
import subprocess
import sys
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
