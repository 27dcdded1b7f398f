"""Multi-process evaluation from the environment `make` builds: `accelerate launch` and `torchrun`
really start two ranks (gloo on the CPU) and give the single-process scores and answers, each
document with its own doc_hash."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
RUN = ["run", "--model", "mmq_blip2",
       "--model_args", "pretrained=mmq:shapes-blip2,llm_bits=4,method=uniform,quant_cache=none",
       "--tasks", "mmq_shapes_vqa", "--limit", "12", "--batch_size", "4", "--log_samples"]
LAUNCHERS = {
    # on a CPU, accelerate starts several processes only with --multi_gpu (its torchrun launcher);
    # `--cpu --num_processes 2` runs one process
    "accelerate": [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                   "-m", "mmq_eval.cli"],
    "torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "mmq_eval.cli"],
}


def _evaluate(launcher: list[str], out: Path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    proc = subprocess.run([*launcher, *RUN, "--output_path", str(out)], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*_samples_mmq_shapes_vqa.jsonl")).read_text().splitlines()]
    answers = {s["doc_id"]: (s["filtered_resps"], s["doc_hash"]) for s in samples}
    return proc, results, answers


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run's results and answers."""
    _, results, answers = _evaluate([str(BIN / "mmq-eval")], tmp_path_factory.mktemp("single"))
    return results, answers


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_two_processes_give_the_single_process_scores(name, single, tmp_path):
    proc, results, answers = _evaluate(LAUNCHERS[name], tmp_path)
    log = proc.stdout + proc.stderr
    assert "Running on rank 0" in log and "Running on rank 1" in log
    one_results, one_answers = single
    assert answers == one_answers and len(answers) == 12  # the same answers to the same documents
    assert len({doc_hash for _, doc_hash in answers.values()}) == 12
    assert results["results"]["mmq_shapes_vqa"]["accuracy,none"] == \
        one_results["results"]["mmq_shapes_vqa"]["accuracy,none"]
    assert results["mmq_quant"]["bpw"] == one_results["mmq_quant"]["bpw"]
