"""QuantReport: what a quantization run did (spec, bpw, coverage, per-layer errors, timings)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict, dataclass, field

#: Stages of layer-sequential calibration timed per component: the stack's input capture, the
#: forward that gathers each block's statistics, the method's solve (with setting the weights),
#: and the forward of the quantized block that makes the next block's inputs.
STAGES = ("capture", "statistics", "solve", "propagate")


def stage_key(component: str, stage: str) -> str:
    """The ``QuantReport.timings`` key of one component's seconds in one stage."""
    return f"{component}/{stage}"


@dataclass
class LayerRecord:
    name: str
    component: str
    block: int | None
    role: str
    bits: int
    group_size: int  # 0 = per tensor; in_features = per channel
    sym: bool
    weight_rel_err: float  # ‖Ŵ − W‖ / ‖W‖
    output_rel_err: float | None = None  # ‖X(Ŵ − W)ᵀ‖² / ‖XWᵀ‖² on calibration tokens
    fallback: bool = False  # default group size did not divide: per channel
    damp: float | None = None  # GPTQ damping finally used
    awq_scaled: bool | None = None  # AWQ: an input scale was folded in
    awq_clipped: bool | None = None


@dataclass
class QuantReport:
    spec: dict
    arch: str
    model_id: str | None
    bpw: float
    bpw_seed: float
    total_params: int
    quantized_params: int
    metadata_bits: int
    coverage: list[dict]
    layers: list[LayerRecord]
    notes: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)  # non-target parameters AWQ scales were folded into
    #: seconds: per component, "total", and per calibrated component per stage (`stage_key`)
    timings: dict = field(default_factory=dict)
    calibration: dict | None = None
    cached: bool = False
    unused_params: int = 0  # quantized weights in blocks that do not affect outputs (counted in bpw)
    effective: bool = True  # False: Linears were quantized, but none that can affect outputs
    #: Linear name -> its integer codes, scales and zero points (not serialised: export packs them)
    qweights: dict = field(default_factory=dict, repr=False, compare=False)

    def error_summary(self) -> dict:
        """Per component: Linears, mean/max weight and output relative errors."""
        out: dict[str, dict] = {}
        for comp in dict.fromkeys(r.component for r in self.layers):
            recs = [r for r in self.layers if r.component == comp]
            d = {"linears": len(recs),
                 "weight_rel_err_mean": statistics.fmean(r.weight_rel_err for r in recs),
                 "weight_rel_err_max": max(r.weight_rel_err for r in recs)}
            outs = [r.output_rel_err for r in recs if r.output_rel_err is not None]
            if outs:
                d["output_rel_err_mean"] = statistics.fmean(outs)
                d["output_rel_err_max"] = max(outs)
            out[comp] = d
        return out

    def stage_timings(self) -> dict[str, dict[str, float]]:
        """Per calibrated component, its seconds per stage (``STAGES`` order; stages it never ran: 0)."""
        comps = dict.fromkeys(k.split("/", 1)[0] for k in self.timings if "/" in k)
        return {c: {s: self.timings.get(stage_key(c, s), 0.0) for s in STAGES} for c in comps}

    def to_dict(self) -> dict:
        """JSON-able form (without the tensors of ``qweights``)."""
        d = asdict(dataclasses.replace(self, qweights={}))
        d.pop("qweights")
        d["errors"] = self.error_summary()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QuantReport:
        d = dict(d)
        d.pop("errors", None)
        d["layers"] = [LayerRecord(**r) for r in d["layers"]]
        return cls(**d)

    def format_table(self) -> str:
        """Human-readable coverage, bits per weight, errors and notes."""
        lines = [f"quantization: {self.spec.get('method')} on {self.arch}"
                 + (f" ({self.model_id})" if self.model_id else "") + (" [from cache]" if self.cached else "")
                 + ("" if self.effective else " [NO EFFECT on outputs]")]
        unused = any(r.get("linears_unused") for r in self.coverage)  # a column only where blocks are unused
        head = (f"{'component':<10} {'third':<7} {'role':<5} {'bits':>5} {'linears':>9} {'params quantized':>26}"
                + (f"  {'unused':>6}" if unused else ""))
        lines += [head, "-" * len(head)]
        for r in self.coverage:
            frac = r["params_quantized"] / r["params"] if r["params"] else 0.0
            lines.append(
                f"{r['component']:<10} {r['block_group']:<7} {r['role']:<5} {r['bits']:>5} "
                f"{r['linears_quantized']:>4}/{r['linears']:<4} "
                f"{r['params_quantized']:>11,}/{r['params']:<11,} {frac:>4.0%}"
                + (f"  {r['linears_unused'] or '':>6}" if unused else "")
            )
        lines.append(
            f"bits per weight: {self.bpw:.4f} (incl. scale/zero metadata; {self.bpw_seed:.4f} without, seed convention); "
            f"{self.quantized_params:,} of {self.total_params:,} parameters quantized"
            + (f", {self.unused_params:,} of them in unused blocks" if self.unused_params else "")
        )
        for comp, e in self.error_summary().items():
            s = f"  {comp}: {e['linears']} Linears, weight rel. error mean {e['weight_rel_err_mean']:.4f}"
            if "output_rel_err_mean" in e:
                s += f", output rel. error mean {e['output_rel_err_mean']:.4f} max {e['output_rel_err_max']:.4f}"
            lines.append(s)
        if self.calibration:
            c = self.calibration
            lines.append(f"calibration: {c['samples']} samples in {c['batches']} batches"
                         + (f" from {c['source']} (sample ids sha256 {c['ids_sha256'][:16]})" if "source" in c else "")
                         + (f"; WARNING: {c['warning']}" if c.get("warning") else ""))
        if self.timings:
            stages = self.stage_timings()
            lines.append("time: " + ", ".join(
                f"{k} {v:.1f}s" + (" (" + ", ".join(f"{s} {t:.1f}" for s, t in stages[k].items()) + ")"
                                   if k in stages else "")
                for k, v in self.timings.items() if "/" not in k))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
