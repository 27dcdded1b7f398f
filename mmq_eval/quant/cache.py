"""On-disk cache of quantized weights: safetensors + JSON only (nothing is ever unpickled).

Every entry is a folder holding ``weights.safetensors`` (the parameters quantization changed),
``codes.safetensors`` (each quantized Linear's integer codes, scales and zero points, which export
packs) and ``report.json``. Keys hash the model id and a fingerprint of the targeted full-precision weights
(so another checkpoint under the same id misses), plus:

- uniform, rtn: ``<cache_dir>/<key>/``, the whole model; the key adds the canonical spec.
- gptq, awq: ``<cache_dir>/components/<key>/``, one entry per component (its Linears and, for AWQ,
  the norms and biases its scales were folded into; its layer records and notes). Calibrating a
  component depends only on its own targets and on the components before it in the pipeline, so
  the key adds the formats of those targets, the method settings and the calibration (seed,
  sample count, split, a fingerprint of the batches): a sweep that changes only the LLM's bits
  reuses the calibrated ViT and Q-Former.
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

from mmq_eval.quant.formats import QuantizedWeight
from mmq_eval.quant.spec import SELECTION_SETTINGS, QuantSpec

CACHE_FORMAT = 4  # 2: unused-block coverage and `effective`; 3: gptq/awq per component; 4: integer codes


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


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cache_key(model_id: str, spec: QuantSpec, weights_fp: str) -> str:
    """Key of a whole model quantized by a data-free method (uniform, rtn)."""
    return _hash({"format": CACHE_FORMAT, "model_id": model_id, "spec": spec.to_dict(), "weights": weights_fp})


def component_key(model_id: str, spec: QuantSpec, formats: dict[str, list], weights_fp: str,
                  batches_fp: str) -> str:
    """Key of one component's calibrated quantization given the components before it.

    ``formats`` maps every targeted Linear of the component and of the components before it to
    its format; ``weights_fp`` fingerprints their full-precision weights, ``batches_fp`` the
    calibration batches (``batches_fingerprint``). The spec's method settings (``damp``,
    ``act_order``, calibration, ...) enter; its bits and selections only through ``formats``, so
    the bits of later components do not change the key.
    """
    method = {k: v for k, v in spec.to_dict().items()
              if not any(k == s or k.endswith(f"_{s}") for s in SELECTION_SETTINGS)}
    calibration = {"seed": spec.calib_seed, "samples": spec.calib_samples, "split": spec.calib_split,
                   "batches": batches_fp}
    return _hash({"format": CACHE_FORMAT, "kind": "component", "model_id": model_id, "method": method,
                  "targets": formats, "weights": weights_fp, "calibration": calibration})


class QuantCache:
    """One entry: changed parameters (safetensors) and a JSON record (``report.json``)."""

    def __init__(self, cache_dir: str | os.PathLike, key: str):
        self.dir = Path(cache_dir) / key

    def exists(self) -> bool:
        return all((self.dir / f).is_file() for f in ("weights.safetensors", "codes.safetensors", "report.json"))

    def load(self, model: nn.Module) -> tuple[dict, dict[str, QuantizedWeight]]:
        """Copy the cached parameters into `model`; return the stored record and quantized weights."""
        tensors = load_file(str(self.dir / "weights.safetensors"))
        params = dict(model.named_parameters())
        missing = [n for n in tensors if n not in params or params[n].shape != tensors[n].shape]
        if missing:
            raise ValueError(f"quantization cache {self.dir} does not match the model (e.g. {missing[0]})")
        with torch.no_grad():
            for name, t in tensors.items():
                params[name].copy_(t.to(params[name].device, params[name].dtype))
        stored = json.loads((self.dir / "report.json").read_text())
        codes = load_file(str(self.dir / "codes.safetensors"))
        qweights = {name: QuantizedWeight(codes[f"{name}.codes"], codes[f"{name}.scale"], codes[f"{name}.zero"],
                                          fmt["group_size"], fmt["bits"], fmt["sym"], codes.get(f"{name}.g_idx"))
                    for name, fmt in stored["qweights"].items()}
        return stored["record"], qweights

    def save(self, model: nn.Module, changed: list[str], record: dict, qweights: dict[str, QuantizedWeight]) -> None:
        """Write the parameters ``changed``, the quantized weights' codes and ``record`` atomically
        (temporary folder, then rename)."""
        params = dict(model.named_parameters())
        tensors = {n: params[n].detach().cpu().contiguous() for n in changed}
        codes, formats = {}, {}
        for name, q in qweights.items():
            parts = {"codes": q.codes, "scale": q.scale, "zero": q.zero, "g_idx": q.g_idx}
            codes.update({f"{name}.{k}": t.detach().cpu().contiguous() for k, t in parts.items() if t is not None})
            formats[name] = {"group_size": q.group_size, "bits": q.bits, "sym": q.sym}
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".tmp-"))
        try:
            save_file(tensors, str(tmp / "weights.safetensors"))
            save_file(codes, str(tmp / "codes.safetensors"))
            (tmp / "report.json").write_text(json.dumps({"record": record, "qweights": formats}, indent=1))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            tmp.rename(self.dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
