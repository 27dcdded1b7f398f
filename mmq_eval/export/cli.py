"""``mmq-eval export``: quantize a model and write it as a compressed-tensors pack-quantized checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.export.servable import ENGINES
from mmq_eval.quant.registry import lmms_models

DESCRIPTION = """\
Load and quantize a model exactly as `mmq-eval run` would (same --model and --model_args,
including the quantization cache), then save it as a compressed-tensors `pack-quantized`
checkpoint (weights packed into int32, one scale per channel or group) with its processor,
which plain transformers reloads (`AutoModel*.from_pretrained(OUT)`, needs compressed-tensors)
to the same outputs as the fake-quantized model. Prints the bytes on disk and the resident
memory a fresh process needs to load it (packed at rest, and after the decompression of the
first forward) against the full-precision checkpoint.

  mmq-eval export --model mmq_blip2 \\
      --model_args pretrained=mmq:shapes-blip2,method=gptq,bits=4,sym=true --out packed/

Loading: an export with one storage format (one bit width, group size and symmetry for every
quantized Linear) says `dequantize: true` in its config, so `from_pretrained(OUT)` returns a dense
model that `generate` and `pipeline` run as is; one with several formats loads packed and needs
`model.hf_quantizer.compressor.decompress_model(model)` before `generate` (printed). `mmq-eval
run --model_args pretrained=OUT` evaluates it as stored, with its bits per weight.

vLLM: prints which quantized parts vLLM could not load (BLIP-2: Q-Former and language projection,
built as plain Linears; LLaVA: vision blocks after vision_feature_layer, not built); `--servable
vllm` keeps those parts full precision.

Exportable: method rtn / gptq / awq, 2–8 bits, symmetric (any mix of bits and group sizes) or
asymmetric with one format for every quantized layer (transformers 5.24 reloads those only by
dequantizing at load, which the checkpoint's config requests). method=uniform is refused (its
per-tensor grid has no integer zero point).
"""


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser("export", help="write a quantized model as a pack-quantized checkpoint",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mmq_blip2", choices=sorted(lmms_models()))
    p.add_argument("--model_args", required=True,
                   help="as for mmq-eval run, e.g. pretrained=...,method=gptq,bits=4,sym=true")
    p.add_argument("--out", required=True, metavar="DIR", help="new or empty output folder")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement (two child processes)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--servable", choices=ENGINES, metavar="ENGINE",
                   help="quantize only what ENGINE (vllm) can load; keep the rest full precision")
    p.set_defaults(func=handle)


def export_figures(lm, out: Path, measure_memory: bool, bpw: float) -> dict:
    """Sizes (and RSS increments of loading) of the source checkpoint, the dense model and the export
    (``bpw``: the export's bits per weight)."""
    from mmq_eval.export.memory import checkpoint_bytes, measure
    from mmq_eval.models.loading import local_checkpoint, resolve_pretrained

    dtype = str(lm.model.dtype).removeprefix("torch.")
    source = local_checkpoint(resolve_pretrained(lm.args.pretrained))
    params = lm.quant_report.total_params
    figures = {
        "out": str(out), "pretrained": lm.args.pretrained, "dtype": dtype,
        "spec": lm.quant_report.spec, "bpw": bpw, "params": params,
        "dense_bytes": {"float16": 2 * params, "float32": 4 * params},
        "source_bytes": checkpoint_bytes(source) if source else None,
        "packed_bytes": checkpoint_bytes(out),
        "memory": None,
    }
    if measure_memory:
        figures["memory"] = {"packed": measure(out, dtype), "source": measure(source, dtype) if source else None}
    return figures


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.2f}"


def format_table(f: dict) -> str:
    """The figures as a small text table."""
    mem = f["memory"] or {}
    src, packed = mem.get("source") or {}, mem.get("packed") or {}
    rows = [
        ("checkpoint", "weights MB", f"+RSS loaded ({f['dtype']})", "+peak RSS", "+RSS decompressed"),
        ("source", _mb(f["source_bytes"]), _mb(src.get("load_rss")), _mb(src.get("load_peak_rss")), "-"),
        ("dense float32 / float16", f"{_mb(f['dense_bytes']['float32'])} / {_mb(f['dense_bytes']['float16'])}",
         "", "", ""),
        (f"pack-quantized ({f['bpw']:.2f} bpw)", _mb(f["packed_bytes"]), _mb(packed.get("load_rss")),
         _mb(packed.get("load_peak_rss")), _mb(packed.get("decompressed_rss"))),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if f["source_bytes"]:
        lines.append(f"packed / source weights: {f['packed_bytes'] / f['source_bytes']:.3f} (MB = 2^20 bytes; "
                     "+RSS: added to a fresh process by loading, tensors touched)")
    return "\n".join(lines)


def _servable_args(model: str, kwargs: dict, engine: str) -> dict:
    """``<component>_bits=16`` for what ``engine`` cannot load of the checkpoint's architecture (printed)."""
    from lmms_eval.models import get_model

    from mmq_eval.export.servable import servable_overrides
    from mmq_eval.models.loading import architecture_of, resolve_pretrained

    pretrained = kwargs.get("pretrained") or getattr(get_model(model), "default_pretrained", None)
    if not pretrained:
        raise MMQConfigError(f"--servable {engine} needs pretrained=... in --model_args")
    overrides = servable_overrides(architecture_of(resolve_pretrained(pretrained)), engine)
    if overrides:
        print(f"--servable {engine}: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
              + f" (parts {engine} loads only unquantized)")
    return overrides


def handle(args) -> int:
    """Validate, load and quantize through the lmms-eval wrapper, write, measure, print."""
    from lmms_eval.utils import simple_parse_args_string

    from mmq_eval.export.schemes import check_spec, loading_note
    from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec

    kwargs = simple_parse_args_string(args.model_args)
    if args.servable:
        kwargs.update(_servable_args(args.model, kwargs, args.servable))
    spec = QuantSpec.from_args({k: v for k, v in kwargs.items() if k in QUANT_ARG_KEYS})
    check_spec(spec)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MMQConfigError(f"--out {out} exists and is not an empty folder; choose a new one")

    from lmms_eval.models import get_model

    from mmq_eval.export.packed import write_packed
    from mmq_eval.export.servable import servability_note, servable_plan
    from mmq_eval.models.loading import load_processor, resolve_pretrained
    from mmq_eval.quant.bpw import bits_per_weight
    from mmq_eval.quant.plan import build_plan

    lm = get_model(args.model)(**kwargs)
    # a fresh processor: the wrapper's has the padding side it batches with, not the checkpoint's
    processor = load_processor(resolve_pretrained(lm.args.pretrained))
    plan = build_plan(lm.model, spec)
    if args.servable:
        plan = servable_plan(plan, args.servable)
        if not plan.targets:
            raise MMQConfigError(f"--servable {args.servable}: nothing left to export, every quantized Linear "
                                 f"is one {args.servable} does not build; quantize other blocks")
    bpw = bits_per_weight(lm.model, plan.targets).bpw  # before packing renames the weights
    notes = {engine: servability_note(plan, engine) for engine in ENGINES}
    write_packed(lm.model, processor, plan, lm.quant_report.qweights, out)
    figures = {**export_figures(lm, out, not args.no_memory, bpw), "servability": notes}
    print(format_table(figures))
    print(f"note: loading: {loading_note(plan)}")
    print("\n".join(f"note: {n}" for n in notes.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0
