"""Turn a config folder of the seed repo (gautomdas/mmq) into a sweep spec.

Two formats are read, one configuration per ``*.json`` file (taken in numeric file order):

* uniform: a list of ``{"model_part": VIT|QFORMER|LLM, "layer_group": FIRST|MIDDLE|LAST|ALL,
  "layer_type": ATTENTION|MLP|BOTH, "num_bits": n}``; several entries of one part give a
  combined block group (``first+last``); parts not listed stay at 16 bits (the seed never
  quantized the projector);
* GPTQ: ``{"vision"|"qformer"|"language": {"bits", "percent_dampening", "group_size",
  "use_symmetric", "use_act_order", "use_static_groups"}}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmq_eval.errors import MMQConfigError

_PARTS = {"VIT": "vit", "QFORMER": "qformer", "LLM": "llm"}
_GPTQ_PARTS = {"vision": "vit", "qformer": "qformer", "language": "llm"}
_GROUPS = ("first", "middle", "last")
_TYPES = {"ATTENTION": "attn", "MLP": "mlp", "BOTH": "both"}
_GPTQ_SHARED = {"percent_dampening": "damp", "group_size": "group_size", "use_symmetric": "sym",
                "use_act_order": "act_order", "use_static_groups": "static_groups"}


def _uniform(entries: list, where: str) -> dict:
    args: dict = {"method": "uniform", "projector_bits": 16}
    groups: dict[str, set] = {}
    types: dict[str, set] = {}
    for entry in entries:
        try:
            comp = _PARTS[entry["model_part"]]
            group = entry["layer_group"].lower()
            types.setdefault(comp, set()).add(_TYPES[entry["layer_type"]])
            bits = int(entry["num_bits"])
        except (KeyError, TypeError, ValueError) as err:
            raise MMQConfigError(f"{where}: not a seed uniform entry ({err!r}): {entry}") from err
        if args.setdefault(f"{comp}_bits", bits) != bits:
            raise MMQConfigError(f"{where}: {entry['model_part']} has several bit widths; one per part is supported")
        groups.setdefault(comp, set()).add(group)
    for comp, chosen in types.items():
        if len(chosen) > 1:
            raise MMQConfigError(f"{where}: {comp} has several layer_types {sorted(chosen)}; one per part is supported")
    for comp in ("vit", "qformer", "llm"):
        args.setdefault(f"{comp}_bits", 16)
        chosen = groups.get(comp, set())
        if chosen and "all" not in chosen and set(_GROUPS) - chosen:
            args[f"{comp}_layer_group"] = "+".join(g for g in _GROUPS if g in chosen)
    kinds = {t for chosen in types.values() for t in chosen}
    if len(kinds) == 1:
        args["layer_type"] = kinds.pop()
    else:
        args.update({f"{comp}_layer_type": chosen.pop() for comp, chosen in types.items()})
    return args


def _gptq(parts: dict, where: str) -> dict:
    args: dict = {"method": "gptq", "projector_bits": 16}
    shared = None
    for name, comp in _GPTQ_PARTS.items():
        cfg = parts.get(name, {"bits": 16})
        args[f"{comp}_bits"] = int(cfg["bits"])
        these = {ours: cfg[theirs] for theirs, ours in _GPTQ_SHARED.items() if theirs in cfg}
        if shared is not None and these != shared:
            raise MMQConfigError(f"{where}: GPTQ settings differ between parts; one set per configuration is supported")
        shared = these
    return {**args, **shared}


def _file_order(path: Path):
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


def seed_configs(folder: str | Path) -> list[dict]:
    """Quantization-arg dicts, one per seed config file of ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MMQConfigError(f"--from-seed {folder}: not a folder")
    configs = []
    for path in sorted(folder.glob("*.json"), key=_file_order):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise MMQConfigError(f"{path}: not valid JSON: {err}") from err
        if isinstance(data, list):
            configs.append(_uniform(data, str(path)))
        elif isinstance(data, dict) and set(data) <= set(_GPTQ_PARTS) and data:
            configs.append(_gptq(data, str(path)))
        else:
            raise MMQConfigError(f"{path}: neither a seed uniform list nor a GPTQ per-part dict")
    if not configs:
        raise MMQConfigError(f"--from-seed {folder}: no *.json config files")
    return configs


def spec_from_seed(folder: str | Path, base: dict | None = None) -> dict:
    """A sweep spec running every seed configuration of ``folder``.

    ``base`` supplies ``model``/``tasks``/``fixed`` (its ``grid`` and ``configs`` are replaced);
    without it the embedded shapes model and both shapes tasks are used.
    """
    spec = dict(base or {"model": {"pretrained": "mmq:shapes-blip2"},
                         "tasks": ["mmq_shapes_cap", "mmq_shapes_vqa"]})
    spec.pop("grid", None)
    spec["configs"] = seed_configs(folder)
    return spec
