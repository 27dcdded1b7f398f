"""On-disk cache of quantized weights: safetensors + JSON only (nothing is ever unpickled).

Every entry is a folder holding ``weights.safetensors`` (the parameters quantization changed),
``codes.safetensors`` (each quantized Linear's integer codes, scales and zero points, which export
packs) and ``report.json`` (the record, and the entry's manifest: each file's size and checksum,
each tensor's name, dtype and shape, a checksum of the record). Keys hash the model id and an exact
fingerprint of the full-precision weights (every byte, ``fingerprint.state_digests``), plus:

- uniform, rtn: ``<cache_dir>/<key>/``, the whole model; the key adds the canonical spec.
- gptq, awq: ``<cache_dir>/components/<key>/``, one entry per component (its Linears and, for AWQ,
  the norms and biases its scales were folded into; its layer records and notes). Calibrating a
  component depends only on the weights outside the components after it and on the targets of the
  components up to it, so the key adds the formats of those targets, the method settings and the
  calibration (seed, sample count, split, a fingerprint of the batches): a sweep that changes only
  the LLM's bits reuses the calibrated ViT and Q-Former.

``QuantCache.load`` verifies an entry before using it (every file present with its checksum, every
tensor the manifest and record name, dtypes and shapes equal to the model's, float tensors finite);
an unusable entry is deleted with a warning naming it and what is wrong, and counts as a miss.
Entries are written to a temporary folder and renamed into place under a per-key lock, and never
replaced once whole: a reader sees a whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmq_eval.quant.fingerprint import HASH_NAME, file_digest, new_hash, update_with_tensor
from mmq_eval.quant.formats import QuantizedWeight
from mmq_eval.quant.offload import write_parameter
from mmq_eval.quant.spec import SELECTION_SETTINGS, QuantSpec

logger = logging.getLogger(__name__)

# 2: unused-block coverage and `effective`; 3: gptq/awq per component; 4: integer codes;
# 5: manifests, exact weight fingerprints
CACHE_FORMAT = 5
TENSOR_FILES = ("weights.safetensors", "codes.safetensors")
REPORT = "report.json"
QWEIGHT_PARTS = ("codes", "scale", "zero")


def batches_fingerprint(batches: list[dict]) -> str:
    """Digest of every calibration tensor (keys, dtypes, shapes, bytes)."""
    h = new_hash()
    for batch in batches:
        for key in sorted(batch):
            h.update(key.encode())
            value = batch[key]
            if isinstance(value, torch.Tensor):
                update_with_tensor(h, value)
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def weights_fingerprint(digests: dict[str, str], skip: tuple[str, ...] = ()) -> str:
    """One digest of the model's full-precision tensors (``fingerprint.state_digests``), leaving
    out those under the module paths `skip` (the components after the one keyed)."""
    h = new_hash()
    for name in sorted(digests):
        if not any(name.startswith(f"{p}.") for p in skip):
            h.update(f"{name}={digests[name]}\n".encode())
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
    its format; ``weights_fp`` fingerprints every full-precision weight outside the components
    after it (``weights_fingerprint``), ``batches_fp`` the calibration batches
    (``batches_fingerprint``). The spec's method settings (``damp``, ``act_order``, calibration,
    ...) enter; its bits and selections only through ``formats``, so the bits of later components
    do not change the key.
    """
    method = {k: v for k, v in spec.to_dict().items()
              if not any(k == s or k.endswith(f"_{s}") for s in SELECTION_SETTINGS)}
    calibration = {"seed": spec.calib_seed, "samples": spec.calib_samples, "split": spec.calib_split,
                   "batches": batches_fp}
    return _hash({"format": CACHE_FORMAT, "kind": "component", "model_id": model_id, "method": method,
                  "targets": formats, "weights": weights_fp, "calibration": calibration})


class BadEntry(Exception):
    """A cache entry that must not be used; the message says what is wrong with it."""


def _json_digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tensor_specs(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    return {n: [str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in tensors.items()}


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder: a republished entry is another folder."""
    with suppress(OSError):
        st = os.stat(path)
        return st.st_dev, st.st_ino
    return None


def _lock_dir() -> Path:
    """Per-machine folder of the entries' lock files (outside the cache, which holds entries only)."""
    folder = Path(tempfile.gettempdir()) / "mmq-eval-locks"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        with suppress(PermissionError):
            folder.chmod(0o1777)  # shared by every user, like /tmp
    return folder


class QuantCache:
    """One entry: changed parameters and codes (safetensors) and a JSON record with the manifest
    (``report.json``); see the module docstring for what is verified."""

    def __init__(self, cache_dir: str | os.PathLike, key: str):
        self.dir = Path(cache_dir) / key

    def lock(self) -> FileLock:
        """The entry's lock (held to publish or delete it; readers need none)."""
        name = hashlib.sha256(str(self.dir.absolute()).encode()).hexdigest()[:32]
        return FileLock(str(_lock_dir() / f"{name}.lock"), mode=0o666)

    def load(self, model: nn.Module) -> tuple[dict, dict[str, QuantizedWeight]] | None:
        """Copy the cached parameters into `model`; return the stored record and quantized weights.

        None when there is no entry, or when it is unusable: then it is deleted with a warning
        naming the folder and what is wrong, and the caller quantizes as on a miss.
        """
        ident = _identity(self.dir)
        if ident is None:
            return None
        try:
            stored, tensors, qweights = self._verified(model)
        except BadEntry as bad:
            logger.warning("quantization cache entry %s is unusable (%s): deleting it and quantizing again",
                           self.dir, bad)
            with self.lock():
                if _identity(self.dir) == ident:  # not republished meanwhile
                    self._remove()
            return None
        for name, t in tensors.items():  # through the offload where the model has one
            owner, _, pname = name.rpartition(".")
            write_parameter(model.get_submodule(owner), pname, t)
        return stored["record"], qweights

    def save(self, model: nn.Module, changed: list[str], record: dict, qweights: dict[str, QuantizedWeight]) -> None:
        """Write the parameters ``changed``, the quantized weights' codes and ``record`` with the
        manifest to a temporary folder, then publish it under the entry's lock unless a whole entry
        is already there (another process computed the same key: it is kept)."""
        params = dict(model.named_parameters())
        contents = {"weights.safetensors": {n: params[n].detach().cpu().contiguous() for n in changed}}
        codes, formats = {}, {}
        for name, q in qweights.items():
            parts = {"codes": q.codes, "scale": q.scale, "zero": q.zero, "g_idx": q.g_idx}
            codes.update({f"{name}.{k}": t.detach().cpu().contiguous() for k, t in parts.items() if t is not None})
            formats[name] = {"group_size": q.group_size, "bits": q.bits, "sym": q.sym, "g_idx": q.g_idx is not None}
        contents["codes.safetensors"] = codes
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".tmp-"))
        try:
            files = {}
            for fname, tensors in contents.items():
                save_file(tensors, str(tmp / fname))
                files[fname] = {"size": (tmp / fname).stat().st_size, "digest": file_digest(tmp / fname),
                                "tensors": _tensor_specs(tensors)}
            body = json.loads(json.dumps({"record": record, "qweights": formats, "changed": changed}))
            manifest = {"hash": HASH_NAME, "files": files, "body": _json_digest(body)}
            (tmp / REPORT).write_text(json.dumps({**body, "manifest": manifest}, indent=1))
            with self.lock():
                if self.dir.exists():
                    try:
                        self._verified(model)
                        return  # a whole entry of this key is there already
                    except BadEntry as bad:
                        logger.warning("quantization cache entry %s is unusable (%s): replacing it", self.dir, bad)
                        self._remove()
                try:
                    tmp.rename(self.dir)
                except OSError:
                    if not self.dir.exists():
                        raise  # else published meanwhile by a process this lock does not reach: kept
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _remove(self) -> None:
        """Take the entry out of sight at once (rename), then delete it."""
        trash = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".trash-"))
        try:
            self.dir.rename(trash / "entry")
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)

    # ---- verification --------------------------------------------------------------------------

    def _verified(self, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor], dict[str, QuantizedWeight]]:
        """The stored JSON, the changed parameters (as the model holds them) and the quantized
        weights, after every check; BadEntry saying what is wrong otherwise."""
        stored = self._read_report()
        try:
            manifest = stored["manifest"]
            loaded = {fname: self._read_tensors(fname, manifest["files"][fname]) for fname in TENSOR_FILES}
            tensors, codes = loaded["weights.safetensors"], loaded["codes.safetensors"]
            self._check_params(model, stored["changed"], tensors)
            qweights = self._check_qweights(model, stored["qweights"], codes)
        except (KeyError, TypeError, AttributeError) as exc:  # well-formed JSON of the wrong shape
            raise BadEntry(f"{REPORT} is malformed ({type(exc).__name__}: {exc})") from None
        return stored, tensors, qweights

    def _read_report(self) -> dict:
        try:
            stored = json.loads((self.dir / REPORT).read_text())
        except FileNotFoundError:
            raise BadEntry(f"{REPORT} is missing") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BadEntry(f"{REPORT} is unreadable: {exc}") from None
        if not isinstance(stored, dict) or not {"record", "qweights", "changed", "manifest"} <= stored.keys():
            raise BadEntry(f"{REPORT} lacks its record or manifest")
        manifest = stored["manifest"]
        if not isinstance(manifest, dict) or manifest.get("hash") != HASH_NAME:
            raise BadEntry(f"{REPORT}: manifest missing or from another checksum algorithm")
        if not isinstance(manifest.get("files"), dict) or set(manifest["files"]) != set(TENSOR_FILES):
            raise BadEntry(f"{REPORT}: the manifest does not list {', '.join(TENSOR_FILES)}")
        body = {k: stored[k] for k in ("record", "qweights", "changed")}
        if manifest.get("body") != _json_digest(body):
            raise BadEntry(f"{REPORT}: checksum mismatch (its record was changed after it was written)")
        return stored

    def _read_tensors(self, fname: str, expected: dict) -> dict[str, torch.Tensor]:
        path = self.dir / fname
        if not path.is_file():
            raise BadEntry(f"{fname} is missing")
        if path.stat().st_size != expected.get("size"):
            raise BadEntry(f"{fname} is {path.stat().st_size} bytes, the manifest says {expected.get('size')} "
                           "(truncated or rewritten)")
        if file_digest(path) != expected.get("digest"):
            raise BadEntry(f"{fname}: checksum mismatch")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadEntry(f"{fname} is unreadable: {exc}") from None
        specs = _tensor_specs(tensors)
        want = expected.get("tensors") or {}
        for name in want:
            if name not in specs:
                raise BadEntry(f"{fname}: tensor {name} is missing (partial entry)")
            if specs[name] != want[name]:
                raise BadEntry(f"{fname}: tensor {name} is {specs[name]}, the manifest says {want[name]}")
        extra = sorted(set(specs) - set(want))
        if extra:
            raise BadEntry(f"{fname}: tensor {extra[0]} is not in the manifest")
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise BadEntry(f"{fname}: tensor {name} holds NaN or Inf")
        return tensors

    @staticmethod
    def _check_params(model: nn.Module, changed: list[str], tensors: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        for name in changed:
            if name not in tensors:
                raise BadEntry(f"weights.safetensors: changed parameter {name} is missing (partial entry)")
        for name, t in tensors.items():
            p = params.get(name)
            if p is None:
                raise BadEntry(f"weights.safetensors: {name} is not a parameter of this model")
            if p.shape != t.shape or p.dtype != t.dtype:
                raise BadEntry(f"weights.safetensors: {name} is {t.dtype} {tuple(t.shape)}, "
                               f"the model's is {p.dtype} {tuple(p.shape)}")
            tensors[name] = t.to(p.device)

    @staticmethod
    def _check_qweights(model: nn.Module, formats: dict, codes: dict[str, torch.Tensor]) -> dict[str, QuantizedWeight]:
        qweights, used = {}, set()
        for name, fmt in formats.items():
            parts = QWEIGHT_PARTS + (("g_idx",) if fmt.get("g_idx") else ())
            for part in parts:
                if f"{name}.{part}" not in codes:
                    raise BadEntry(f"codes.safetensors: {name}.{part} is missing (partial entry)")
            used.update(f"{name}.{part}" for part in parts)
            try:
                weight = model.get_submodule(name).weight
            except AttributeError:
                raise BadEntry(f"codes.safetensors: {name} is not a Linear of this model") from None
            c = codes[f"{name}.codes"]
            if c.dtype != torch.uint8 or c.shape != weight.shape:
                raise BadEntry(f"codes.safetensors: {name}.codes is {c.dtype} {tuple(c.shape)}, "
                               f"expected torch.uint8 {tuple(weight.shape)}")
            qweights[name] = QuantizedWeight(c, codes[f"{name}.scale"], codes[f"{name}.zero"], fmt["group_size"],
                                             fmt["bits"], fmt["sym"], codes.get(f"{name}.g_idx"))
        unused = sorted(set(codes) - used)
        if unused:
            raise BadEntry(f"codes.safetensors: {unused[0]} belongs to no quantized weight of the record")
        return qweights
