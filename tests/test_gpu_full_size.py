"""benchmarks/gpu_full_size.py --smoke: the GPU script's whole path on a tiny config, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_figures_and_prints_the_summary_last(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_full_size.py"), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("total")

    f = json.loads((tmp_path / "gpu_full_size.json").read_text())
    assert (f["mode"], f["device"], f["dtype"]) == ("smoke", "cpu", "float32")
    # 3 ViT blocks x 4 + Q-Former (10 + 6) + projector + 2 OPT blocks x 6
    assert f["quantized_linears"] == 41
    assert f["generated_tokens"] == 2 * 4 and f["tokens_per_s"] > 0
    assert f["reload_max_abs_logit_diff"] < 1e-4 < f["reference_max_abs_logit"]
    assert f["packed_tensor_bytes"] < f["dense_tensor_bytes"]
    assert f["packed_bytes_on_disk"] > 0
    assert f["gpu_allocated_dense"] is None  # no GPU figures on the CPU
    assert all(f[k] > 0 for k in ("build_s", "gptq_s", "export_s", "reload_s", "total_s"))
