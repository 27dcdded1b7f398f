"""On-disk cache of quantized weights: safetensors + JSON only (nothing is ever unpickled).

An entry ``<cache_dir>/<key>/`` holds ``weights.safetensors`` (every parameter quantization changed:
the targeted Linear weights and, for AWQ, the norms / biases scales were folded into) and
``report.json``. The key hashes the model id, a fingerprint of the targeted weights (so another
checkpoint under the same id misses), the canonical spec and, for calibrated methods, the
calibration seed, sample count, split and a fingerprint of the calibration batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmq_eval.quant.report import QuantReport
from mmq_eval.quant.spec import QuantSpec

CACHE_FORMAT = 2  # 2: reports carry unused-block coverage and `effective`


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def batches_fingerprint(batches: list[dict]) -> str:
    """sha256 over every calibration tensor (keys, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            h.update(key.encode())
            value = batch[key]
            if isinstance(value, torch.Tensor):
                _hash_tensor(h, value)
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def weights_fingerprint(model: nn.Module, names: list[str]) -> str:
    """sha256 over each targeted weight's name, shape and 4,096 evenly spaced values."""
    h = hashlib.sha256()
    for name in names:
        w = model.get_submodule(name).weight.detach().reshape(-1)
        idx = torch.linspace(0, w.numel() - 1, min(4096, w.numel()), device=w.device).long()
        h.update(name.encode())
        _hash_tensor(h, w[idx].float())
        h.update(str(w.numel()).encode())
    return h.hexdigest()


def cache_key(model_id: str, spec: QuantSpec, weights_fp: str, batches: list[dict] | None) -> str:
    payload = {"format": CACHE_FORMAT, "model_id": model_id, "spec": spec.to_dict(), "weights": weights_fp}
    if spec.needs_calibration:
        payload["calibration"] = {"seed": spec.calib_seed, "samples": spec.calib_samples,
                                  "split": spec.calib_split, "batches": batches_fingerprint(batches or [])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class QuantCache:
    def __init__(self, cache_dir: str | os.PathLike, key: str):
        self.dir = Path(cache_dir) / key

    def exists(self) -> bool:
        return (self.dir / "weights.safetensors").is_file() and (self.dir / "report.json").is_file()

    def load(self, model: nn.Module) -> QuantReport:
        """Copy the cached parameters into `model`; return the stored report (marked cached)."""
        tensors = load_file(str(self.dir / "weights.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n in tensors if n not in params or params[n].shape != tensors[n].shape]
        if missing:
            raise ValueError(f"quantization cache {self.dir} does not match the model (e.g. {missing[0]})")
        with torch.no_grad():
            for name, t in tensors.items():
                params[name].copy_(t.to(params[name].device, params[name].dtype))
        report = QuantReport.from_dict(json.loads((self.dir / "report.json").read_text()))
        report.cached = True
        return report

    def save(self, model: nn.Module, changed: list[str], report: QuantReport) -> None:
        """Write atomically (temporary folder, then rename)."""
        params = dict(model.named_parameters())
        tensors = {n: params[n].detach().cpu().contiguous() for n in changed}
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".tmp-"))
        try:
            save_file(tensors, str(tmp / "weights.safetensors"))
            (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            tmp.rename(self.dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
