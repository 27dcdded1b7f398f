"""Sizes of checkpoints on disk and the resident memory a fresh process needs to load them.

Memory is measured in a child process (``python -m mmq_eval.export.memory DIR``) so that each
checkpoint starts from the same imported-libraries baseline, from Linux's ``/proc/self/status``:
the resident set size (``VmRSS``) that loading adds once every tensor has been touched (weights
are memory-mapped from safetensors, so untouched pages would not count yet), and the peak
(``VmHWM``) above the baseline. A pack-quantized model stays packed after ``from_pretrained``
and is decompressed to dense weights on its first forward (plain transformers has no integer
kernels), so it is measured again after that decompression. Single-format exports ask
``from_pretrained`` to dequantize while loading; a symmetric one is loaded packed here all the
same, so that the figures show the packed and the dense state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError

STATUS = Path("/proc/self/status")


def checkpoint_bytes(path: str | Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``) in a checkpoint folder."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in Path(path).glob(pattern))


def _status_bytes() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in STATUS.read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}  # kB


def _touch(model) -> None:
    """Read every tensor once, as a forward would, so memory-mapped weights become resident."""
    for tensor in model.state_dict().values():
        if tensor.numel():
            tensor.reshape(-1)[:: max(1, 1024 // tensor.element_size())].float().sum()


def measure_in_process(path: str, dtype: str) -> dict:
    """Bytes of RSS that loading ``path`` adds and of the peak above the baseline; the same after
    decompressing a packed model (None otherwise)."""
    import torch
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model_class = getattr(transformers, (config.architectures or [None])[0])
    load = {}
    qc = getattr(config, "quantization_config", None)
    if qc:  # import its libraries before the baseline
        import compressed_tensors.compressors  # noqa: F401
        import transformers.quantizers.quantizer_compressed_tensors  # noqa: F401
        if all(g["weights"]["symmetric"] for g in qc["config_groups"].values()):  # loadable packed
            load["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=False)
    before = _status_bytes()["VmRSS"]
    model = model_class.from_pretrained(path, dtype=getattr(torch, dtype), **load)
    _touch(model)
    now = _status_bytes()
    result = {"load_rss": now["VmRSS"] - before, "load_peak_rss": now["VmHWM"] - before,
              "decompressed_rss": None, "decompressed_peak_rss": None}
    if hasattr(model, "ct_decompress_hook"):  # what the first forward does
        model.hf_quantizer.compressor.decompress_model(model)
        _touch(model)
        now = _status_bytes()
        result.update(decompressed_rss=now["VmRSS"] - before, decompressed_peak_rss=now["VmHWM"] - before)
    return result


def measure(path: str | Path, dtype: str = "float32") -> dict:
    """``measure_in_process`` in a fresh Python process (stdout JSON); Linux only."""
    if not STATUS.is_file():
        raise MMQConfigError("memory measurement reads /proc/self/status (Linux); pass --no-memory")
    done = subprocess.run([sys.executable, "-m", "mmq_eval.export.memory", str(path), "--dtype", dtype],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    print(json.dumps(measure_in_process(args.path, args.dtype)))


if __name__ == "__main__":
    main()
