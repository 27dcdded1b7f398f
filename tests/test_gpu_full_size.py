"""benchmarks/gpu_full_size.py --smoke: the GPU script's whole path on tiny configs, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Linears quantized in the smoke configs:
#   BLIP-2: 3 ViT blocks x 4 + Q-Former (10 + 6) + projector + 2 OPT blocks x 6
#   LLaVA: 3 CLIP blocks x 6 + 2 projector + 2 Llama blocks x 7
#   Qwen2.5-VL: 3 vision blocks x 5 (qkv, proj, gate, up, down) + 2 merger + 2 LLM blocks x 7
LINEARS = {"blip2-opt-2.7b": 41, "llava-1.5-7b": 34, "qwen2.5-vl-7b": 31}


def _run(tmp_path, *args):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_full_size.py"), "--smoke", *args],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((tmp_path / "gpu_full_size.json").read_text())


def test_smoke_run_of_every_arch_writes_figures_and_prints_the_summaries_last(tmp_path):
    stdout, figures = _run(tmp_path, "--arch", "all")
    assert stdout.strip().splitlines()[-1].startswith("total")
    assert [f["arch"] for f in figures] == list(LINEARS)
    for f in figures:
        assert (f["mode"], f["device"], f["dtype"]) == ("smoke", "cpu", "float32")
        assert f["quantized_linears"] == LINEARS[f["arch"]]
        assert f["generated_tokens"] == 2 * 4 and f["tokens_per_s"] > 0
        assert f["reload_max_abs_logit_diff"] < 1e-4 < f["reference_max_abs_logit"]
        assert f["packed_tensor_bytes"] < f["dense_tensor_bytes"]
        assert f["packed_bytes_on_disk"] > 0
        assert f["gpu_allocated_dense"] is None  # no GPU figures on the CPU
        assert all(f[k] > 0 for k in ("build_s", "gptq_s", "export_s", "reload_s", "total_s"))


def test_all_skips_what_does_not_fit_the_budget_and_says_so(tmp_path):
    # smoke estimates are 1 s per arch: the first fits 1.5 s, the others no longer do after it ran
    stdout, figures = _run(tmp_path, "--arch", "all", "--budget-s", "1.5")
    assert figures[0]["arch"] == "blip2-opt-2.7b" and "skipped" not in figures[0]
    assert [f["arch"] for f in figures if "skipped" in f] == ["llava-1.5-7b", "qwen2.5-vl-7b"]
    assert "llava-1.5-7b: skipped (~1 s would not fit" in stdout
