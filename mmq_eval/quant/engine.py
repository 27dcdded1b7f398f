"""quantize_model: apply a QuantSpec to a model in place (fake quantization) and report what it did.

Data-free methods (uniform, rtn) quantize each targeted Linear from its weights alone. Calibrated
methods (gptq, awq) run layer-sequentially, this module only orchestrating: for each component in
pipeline order, for each stack of blocks, one forward of the partly quantized model captures the
first block's inputs; then per block the method's statistics gather the targeted Linears' inputs
from one forward of the block (collect), the method quantizes the block (quantize), and the
quantized block runs once to produce the next block's inputs (propagate). What each method does
is in ``mmq_eval.quant.methods``; every quantized Linear's integer codes, scales and zero points
are kept on the report (``QuantReport.qweights``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.block import BlockResult
from mmq_eval.quant.bpw import bits_per_weight, coverage, coverage_dicts
from mmq_eval.quant.cache import QuantCache, batches_fingerprint, cache_key, component_key, weights_fingerprint
from mmq_eval.quant.fingerprint import state_digests
from mmq_eval.quant.calibration import (
    InputStats,
    advance,
    capture_stack_inputs,
    check_reached,
    run_block,
)
from mmq_eval.quant.finite import check_result, check_weight
from mmq_eval.quant.formats import QuantizedWeight, quantize_weight
from mmq_eval.quant.methods import METHOD_TABLE
from mmq_eval.quant.offload import codes_on_disk, onloaded, write_back, write_parameter
from mmq_eval.quant.plan import QuantPlan, build_plan
from mmq_eval.quant.report import LayerRecord, QuantReport, stage_key
from mmq_eval.quant.spec import QuantSpec
from mmq_eval.quant.threads import one_cpu_thread

logger = logging.getLogger(__name__)

SMALL_LAYER = 1 << 20  # weights; below this, CPU thread hand-offs cost more than they save


def _rel_err(W: torch.Tensor, Q: torch.Tensor) -> float:
    W, Q = W.float(), Q.float()
    n = torch.linalg.vector_norm(W)
    return float(torch.linalg.vector_norm(Q - W) / n) if n > 0 else 0.0


class _Run:
    """State of one quantize_model call: records, codes, notes, changed parameter names."""

    def __init__(self, model: nn.Module, plan: QuantPlan, progress: bool,
                 component_cache: tuple[str, str] | None = None, codes_dir: Path | None = None):
        self.model, self.plan, self.spec, self.progress = model, plan, plan.spec, progress
        self.method = METHOD_TABLE[plan.spec.method]
        self.component_cache = component_cache  # (cache dir, model id): reuse calibrated components
        self.reused: list[str] = []  # components loaded from the component cache
        self.calibrated: list[str] = []  # components calibrated in this run
        self.records: dict[str, LayerRecord] = {}
        self.qweights: dict[str, QuantizedWeight] = {}
        self.codes_dir = codes_dir  # where the codes are kept (memory-mapped) instead of in memory
        self.notes: list[str] = list(plan.notes)
        self.changed: list[str] = []
        self.awq_unscaled: dict[tuple[str, str], int] = {}  # (component, Linear in block) -> blocks

    def set_weight(self, name: str, q: QuantizedWeight, **extra) -> None:
        """Load `q`'s dequantized weight into the Linear `name`; keep its codes and a record."""
        lin = self.model.get_submodule(name)
        W = lin.weight.detach()
        fmt, li = self.plan.targets[name], self.plan.info(name)
        check_result(name, self.spec.method, q)
        err = _rel_err(W, q.weight)
        write_parameter(lin, "weight", q.weight)
        self.keep_codes(name, q)
        self.records[name] = LayerRecord(name, li.component, li.block, li.role, fmt.bits, fmt.group_size,
                                         fmt.sym, err, fallback=fmt.fallback, **extra)
        logger.debug("%s: %d bit, weight rel. error %.4f, output rel. error %s", name, fmt.bits, err,
                     extra.get("output_rel_err"))
        self.changed.append(f"{name}.weight")

    def keep_codes(self, name: str, q: QuantizedWeight) -> None:
        """Keep `q`'s codes, scales and zero points for export and the cache: on the host, or in
        a file under `codes_dir` when given."""
        q = q.compact()
        self.qweights[name] = q if self.codes_dir is None else codes_on_disk(q, self.codes_dir / f"{name}.codes")

    # ---- data-free methods ------------------------------------------------------------------

    def direct(self) -> None:
        for name, fmt in tqdm(self.plan.targets.items(), desc=f"{self.spec.method} quantization",
                              disable=not self.progress):
            W = self.model.get_submodule(name).weight.detach()
            check_weight(name, W)
            self.set_weight(name, self.method.quantize_weight(W, fmt))

    # ---- calibrated methods -----------------------------------------------------------------

    def sequential(self, batches: list[dict], timings: dict) -> None:
        """Calibrate (or restore from the cache) each component; `timings` gets seconds per component
        and, per calibrated component, per stage (``STAGES``) under ``"<component>/<stage>"``."""
        self.timings = timings
        check_reached(self.model, [s for c in self.plan.arch.components for s in c.stacks
                                   if any(self.plan.targets_in_block(b) for b in s.blocks)], batches[0])
        entries = self._component_entries(batches) if self.component_cache else {}
        for comp in self.plan.arch.components:
            stacks = [(s, [i for i, b in enumerate(s.blocks) if self.plan.targets_in_block(b)]) for s in comp.stacks]
            stacks = [(s, idx) for s, idx in stacks if idx]
            if not stacks:
                continue
            t0 = time.perf_counter()
            entry = entries.get(comp.name)
            if entry is not None and self._restore(comp.name, entry):
                self.reused.append(comp.name)
            else:
                mark = (len(self.changed), len(self.notes))
                self._calibrate_component(comp, stacks, batches)
                self.calibrated.append(comp.name)
                if entry is not None:
                    self._store(comp.name, entry, mark)
            timings[comp.name] = time.perf_counter() - t0
        for (comp, rel), count in sorted(self.awq_unscaled.items()):
            self.notes.append(f"awq {comp}: no input scale for {rel} in {count} block{'s' * (count > 1)} "
                              "(no exact fold, or no scale beat none); clip search only")

    def _component_entries(self, batches: list[dict]) -> dict[str, QuantCache]:
        """Per component with targets, its cache entry, keyed by its targets and all upstream ones
        and by every full-precision weight except those of the components after it (fingerprints
        taken now, before any weight changes)."""
        cache_dir, model_id = self.component_cache
        batches_fp = batches_fingerprint(batches)  # hashes every calibration tensor: once per call
        digests = state_digests(self.model)  # every byte of every weight: once per call
        components = self.plan.arch.components
        entries, upstream = {}, set()
        for i, comp in enumerate(components):
            upstream.add(comp.name)
            names = [n for n in self.plan.targets if self.plan.info(n).component == comp.name]
            if not names:
                continue
            later = {c.name for c in components[i + 1:]}
            downstream = tuple(b for c in components[i + 1:] for b in c.blocks) + tuple(
                li.name for li in self.plan.arch.linears if li.component in later)
            formats = {n: [f.bits, f.group_size, f.sym] for n, f in self.plan.targets.items()
                       if self.plan.info(n).component in upstream}
            key = component_key(model_id, self.spec, formats, weights_fingerprint(digests, downstream), batches_fp)
            entries[comp.name] = QuantCache(Path(cache_dir) / "components", key)
        return entries

    def _store(self, component: str, entry: QuantCache, mark: tuple[int, int]) -> None:
        changed, notes = self.changed[mark[0]:], self.notes[mark[1]:]
        records = [asdict(r) for r in self.records.values() if r.component == component]
        unscaled = [[rel, n] for (c, rel), n in self.awq_unscaled.items() if c == component]
        qweights = {r["name"]: self.qweights[r["name"]] for r in records}
        entry.save(self.model, list(dict.fromkeys(changed)),
                   {"changed": changed, "notes": notes, "records": records, "awq_unscaled": unscaled}, qweights)

    def _restore(self, component: str, entry: QuantCache) -> bool:
        """Load the component from its entry; False on a miss or an unusable entry (deleted, with a
        warning), the model then untouched."""
        loaded = entry.load(self.model)
        if loaded is None:
            return False
        record, qweights = loaded
        self.changed += record["changed"]
        self.notes += record["notes"]
        self.records.update({r["name"]: LayerRecord(**r) for r in record["records"]})
        for name, q in qweights.items():
            self.keep_codes(name, q)
        self.awq_unscaled.update({(component, rel): n for rel, n in record["awq_unscaled"]})
        self.notes.append(f"{component}: {self.spec.method} weights reused from the quantization cache "
                          "(same targets, same components before it, same calibration)")
        return True

    def _calibrate_component(self, comp, stacks, batches: list[dict]) -> None:
        """Quantize one component's targets block by block on its recorded calibration inputs."""
        for stack, with_targets in stacks:
            with self._stage(comp.name, "capture"):
                samples = capture_stack_inputs(self.model, stack, batches)
            last = with_targets[-1]
            bar = tqdm(stack.blocks[: last + 1], desc=f"{self.spec.method} {comp.name}", disable=not self.progress)
            for i, block_path in enumerate(bar):
                block = self.model.get_submodule(block_path)
                names = self.plan.targets_in_block(block_path)
                with onloaded(block):  # an offloaded model's block: read once, held until done
                    if names:
                        self._quantize_block(block, block_path, stack.kind, names, samples, comp.name)
                        errs = [self.records[n].output_rel_err or 0.0 for n in names]
                        bar.set_postfix(max_out_err=f"{max(errs):.4f}")
                    if i < last:
                        with self._stage(comp.name, "propagate"):
                            for j, sample in enumerate(samples):  # replaced one by one: one copy of the inputs
                                samples[j] = advance(sample, run_block(block, [sample])[0], stack.carry, i + 1)
            del samples  # before the next stack's capture

    @contextmanager
    def _stage(self, component: str, stage: str):
        """Add the body's seconds to ``timings["<component>/<stage>"]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = stage_key(component, stage)
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _quantize_block(self, block: nn.Module, block_path: str, kind, names: list[str], samples: list,
                        component: str) -> None:
        """Collect the method's statistics from one forward of the block, then let it quantize the block."""
        modules = {n: self.model.get_submodule(n) for n in names}
        for name, module in modules.items():
            check_weight(name, module.weight)
        with self._stage(component, "statistics"):
            stats = self.method.statistics(modules, len(samples))
            hooks = InputStats(modules, stats.add)
            try:
                for sample in samples:  # outputs dropped as they come: only the statistics are wanted
                    run_block(block, [sample], hooks)
            finally:
                hooks.remove()
        with self._stage(component, "solve"):
            result: BlockResult = self.method.quantize_block(
                block, block_path, kind, {n: self.plan.targets[n] for n in names}, stats, self.spec)
            write_back(self.model, result.changed)  # AWQ's in-place folds, through an offload
            self.changed += result.changed
            self.notes += result.notes
            for name in names:
                if name in result.quantized:
                    q, extra = result.quantized.pop(name)  # dropped once set: one float copy at a time
                    if q.weight is None:
                        q.weight = q.dequantize()
                    self.set_weight(name, q, **extra)
                else:
                    self._unseen(name)
        for name in result.unscaled:
            key = (self.plan.info(name).component, self.plan.info(name).relative_name)
            self.awq_unscaled[key] = self.awq_unscaled.get(key, 0) + 1

    def _unseen(self, name: str) -> None:
        self.notes.append(f"{name}: not reached by the calibration inputs; round-to-nearest instead")
        W = self.model.get_submodule(name).weight.detach()
        self.set_weight(name, quantize_weight(W, self.plan.targets[name]))


def _small_on_cpu(model: nn.Module, plan: QuantPlan) -> bool:
    """True when every targeted Linear is small (≤ SMALL_LAYER weights) and the model is on the CPU:
    calibration is then thousands of tiny ops, faster on one thread."""
    small = all(plan.info(n).in_features * plan.info(n).out_features <= SMALL_LAYER for n in plan.targets)
    return small and next(model.parameters()).device.type == "cpu"


class CalibrationBatches(list):
    """Calibration batches (dicts of tensors) with ``provenance``: where their examples came from
    (``source``, ``ids_sha256``: the sha256 of the sorted sample ids), for the report."""

    def __init__(self, batches: list[dict], provenance: dict) -> None:
        super().__init__(batches)
        self.provenance = provenance


def _calibration_info(batches: list[dict] | None) -> dict | None:
    """``QuantReport.calibration``: the batches' provenance (a ``CalibrationBatches``), batch and sample counts."""
    if not batches:
        return None
    sizes = [next((v.shape[0] for v in b.values() if isinstance(v, torch.Tensor)), 0) for b in batches]
    return {**getattr(batches, "provenance", {}), "batches": len(batches), "samples": sum(sizes)}


def quantize_model(
    model: nn.Module,
    spec: QuantSpec,
    calib_batches: list[dict] | None = None,
    *,
    progress: bool = True,
    cache_dir: str | None = None,
    model_id: str | None = None,
    plan: QuantPlan | None = None,
    codes_dir: str | Path | None = None,
) -> QuantReport:
    """Quantize `model` in place per `spec` (weights replaced by dequantized values, same dtype).

    calib_batches: dicts of tensors that ``model(**batch)`` accepts, already on the model's device;
    required for gptq / awq. With `cache_dir`, results are stored under a key of model id, spec,
    calibration and every byte of the full-precision weights, and a later identical call loads
    them (verified first; see ``mmq_eval.quant.cache``) instead of quantizing again; gptq / awq
    store each component apart, so a call that shares a component and everything before it (in
    pipeline order) with an earlier one reuses that component. `plan`: `build_plan(model, spec)`
    when the caller has it already. `codes_dir`: keep the integer codes (``QuantReport.qweights``)
    memory-mapped from files in a fresh folder there instead of in memory (a model larger than
    memory); the folder is deleted when the report is.
    """
    t_start = time.perf_counter()
    plan = plan or build_plan(model, spec)
    if not plan.effective:
        logger.warning("; ".join(plan.notes[:2]))  # NO_EFFECT, then why (the unused-block note)
    if spec.needs_calibration and not calib_batches:
        raise MMQConfigError(f"method={spec.method} needs calibration batches (calib_samples={spec.calib_samples})")
    model_id = model_id or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    cache, component_cache = None, None
    if cache_dir and not spec.is_noop:
        if not model_id:
            raise MMQConfigError("cache_dir given but the model has no id: pass model_id")
        if spec.needs_calibration:  # one entry per component (see _Run.sequential)
            component_cache = (cache_dir, model_id)
        else:
            fp = weights_fingerprint(state_digests(model))
            cache = QuantCache(cache_dir, cache_key(model_id, spec, fp))
    codes_dir = None if codes_dir is None or spec.is_noop else _fresh_folder(Path(codes_dir))
    run = _Run(model, plan, progress, component_cache, codes_dir)
    if cache is not None:
        loaded = cache.load(model)  # None on a miss or an unusable entry (deleted, with a warning)
        if loaded is not None:
            record, qweights = loaded
            for name, q in qweights.items():
                run.keep_codes(name, q)
            report = QuantReport.from_dict(record)
            report.cached, report.qweights = True, run.qweights
            return _owning(report, codes_dir)

    timings: dict[str, float] = {}
    model_was_training = model.training
    model.eval()
    try:
        with one_cpu_thread(next(model.parameters()).device, when=_small_on_cpu(model, plan)):
            if spec.is_noop:
                pass
            elif not run.method.calibrated:
                run.direct()
            else:
                run.sequential(calib_batches, timings)
    finally:
        model.train(model_was_training)
    timings["total"] = time.perf_counter() - t_start

    summary = bits_per_weight(model, plan.targets)
    target_weights = {f"{n}.weight" for n in plan.targets}
    report = QuantReport(
        spec=spec.to_dict(), arch=plan.arch.arch, model_id=model_id,
        bpw=summary.bpw, bpw_seed=summary.bpw_seed, total_params=summary.total_params,
        quantized_params=summary.quantized_params, metadata_bits=summary.metadata_bits,
        coverage=coverage_dicts(coverage(plan)),
        layers=[run.records[n] for n in plan.targets if n in run.records],
        notes=run.notes, timings=timings,
        folded=[p for p in dict.fromkeys(run.changed) if p not in target_weights],
        calibration=_calibration_info(calib_batches) if spec.needs_calibration else None,
        unused_params=sum(plan.info(n).in_features * plan.info(n).out_features for n in plan.unused_targets),
        effective=plan.effective, cached=bool(run.reused) and not run.calibrated,
        qweights=run.qweights,
    )
    if cache is not None:
        cache.save(model, list(dict.fromkeys(run.changed)), report.to_dict(), run.qweights)
    return _owning(report, codes_dir)


def _fresh_folder(parent: Path) -> Path:
    """A new folder under `parent` for one call's codes (files of earlier reports stay untouched:
    a file still mapped must not be rewritten)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="codes-", dir=parent))


def _owning(report: QuantReport, codes_dir: Path | None) -> QuantReport:
    """`report`, deleting `codes_dir` when it is garbage collected (mapped codes stay readable)."""
    if codes_dir is not None:
        weakref.finalize(report, shutil.rmtree, codes_dir, ignore_errors=True)
    return report
