"""Sweep spec: parse and validate the YAML, expand it into deduplicated configurations.

Keys: ``model`` (``pretrained``, wrapper args and ``name``, the lmms-eval model id, default
``mmq_blip2``), ``tasks``, ``fixed`` (quantization args of
every configuration), ``grid`` (arg -> list of values, crossed in the order written),
``method_args`` (method -> args added only to that method's configurations, e.g. GPTQ's
``damp``), ``configs`` (explicit arg dicts, e.g. from the seed repo) and ``exclude`` (partial
arg dicts; a configuration matching every key of one is dropped; a list value matches any of
its items). Configurations that quantize the same way (e.g. 16 bits everywhere under any
method) are run once. Everything is checked before any evaluation starts.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec
from mmq_eval.quant.registry import components_of, lmms_models
from mmq_eval.quant.spec import BLOCK_COMPONENTS, COMPONENTS, SELECTION_SETTINGS
from mmq_eval.tasks import tasks_path

DEFAULT_MODEL = "mmq_blip2"
SPEC_KEYS = ("model", "tasks", "fixed", "grid", "method_args", "configs", "exclude")
# Wrapper args that do not change results: left out of the config id so a resumed sweep may
# use another batch size, device or cache.
_RUNTIME_MODEL_ARGS = ("batch_size", "max_batch_size", "device", "quant_cache", "report_path")


@dataclass(frozen=True)
class Config:
    """One configuration of a sweep."""

    config_id: str
    quant: QuantSpec
    features: dict


@dataclass(frozen=True)
class Sweep:
    """A validated, expanded sweep."""

    model: dict
    tasks: list
    configs: list
    limit: int | None = None


def features_of(spec: QuantSpec, components: tuple[str, ...] = COMPONENTS) -> dict:
    """Analysis features: method, bits per component of the model, block group, layer type (+ overrides)."""
    if spec.is_noop:
        spec = QuantSpec()
    feats: dict[str, Any] = {"method": spec.method}
    feats.update({f"{c}_bits": spec.component_bits(c) for c in components})
    feats["layer_group"], feats["layer_type"] = spec.layer_group, spec.layer_type
    feats.update({f"{c}_layer_group": g for c, g in sorted(spec.group_override.items())})
    feats.update({f"{c}_layer_type": t for c, t in sorted(spec.type_override.items())})
    return feats


def effective(spec: QuantSpec) -> dict:
    """What ``spec`` actually does: method settings plus bits/blocks/roles of each quantized
    component. Two specs with equal ``effective`` quantize identically."""
    if spec.is_noop:
        return {"method": "none"}
    out: dict[str, Any] = {
        k: v for k, v in spec.to_dict().items()
        if not (k in SELECTION_SETTINGS or k.endswith(tuple("_" + s for s in SELECTION_SETTINGS)))
    }
    for comp in COMPONENTS:
        bits = spec.component_bits(comp)
        if bits < 16:
            out[comp] = {"bits": bits}
            if comp in BLOCK_COMPONENTS:
                out[comp]["groups"] = sorted(spec.component_groups(comp))
                out[comp]["types"] = sorted(spec.component_types(comp))
    return out


def config_id(model: dict, spec: QuantSpec, tasks: list, limit: int | None) -> str:
    """Stable 16-hex-digit hash of model identity, effective quantization, tasks and limit."""
    ident = {
        "model": {k: v for k, v in model.items() if k not in _RUNTIME_MODEL_ARGS},
        "quant": effective(spec),
        "tasks": sorted(tasks),
    }
    if limit is not None:
        ident["limit"] = limit
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: How to list the task names a message about an unknown task refers to.
LIST_TASKS = "list them with `mmq-eval run --tasks list`"


def unknown_name(kind: str, name: str, known, listing: str) -> str:
    """``unknown <kind> '<name>'``, the closest known names (difflib) and how to list them all."""
    close = difflib.get_close_matches(str(name), sorted(known), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"unknown {kind} {name!r}{hint}; {listing}"


def _fail(where: str, msg: str) -> MMQConfigError:
    return MMQConfigError(f"sweep spec {where}: {msg}")


def _quant_args(where: str, mapping: Any) -> dict:
    if not isinstance(mapping, dict):
        raise _fail(where, f"must be a mapping of quantization args, got {type(mapping).__name__}")
    for key in mapping:
        if key not in QUANT_ARG_KEYS:
            raise _fail(f"{where}.{key}", f"unknown quantization arg; known: {', '.join(sorted(QUANT_ARG_KEYS))}")
    return mapping


def _check_model(model: Any) -> dict:
    from mmq_eval.models.args import WRAPPER_KEYS

    if not isinstance(model, dict) or not isinstance(model.get("pretrained"), str):
        raise _fail("model.pretrained", "required: model: {pretrained: <name or path>, ...wrapper args}")
    for key in model:
        if key in QUANT_ARG_KEYS:
            raise _fail(f"model.{key}", "is a quantization arg: put it under 'fixed' or 'grid'")
        if key not in WRAPPER_KEYS and key != "name":
            raise _fail(f"model.{key}", f"unknown wrapper arg; known: name, {', '.join(WRAPPER_KEYS)}")
    name = model.get("name", DEFAULT_MODEL)
    if name not in lmms_models():
        raise _fail("model.name", unknown_name("model", name, lmms_models(),
                                               f"quantizable mmq-eval models: {', '.join(sorted(lmms_models()))}"))
    return model


def our_task_names(folder: str | Path) -> set[str]:
    """Task and group names declared by the YAML files under ``folder`` (a cheap text scan)."""
    names: set[str] = set()
    for path in Path(folder).rglob("*.yaml"):
        for match in re.finditer(r"^(?:task|group):\s*['\"]?([\w.\-]+)", path.read_text(), re.MULTILINE):
            names.add(match.group(1))
    return names


def _indexed_task_names(include_path: Path) -> set[str]:
    from lmms_eval.tasks import TaskManager

    return set(TaskManager(verbosity="ERROR", include_path=str(include_path)).all_tasks)


def check_tasks(tasks: list, index: Callable[[Path], set] = _indexed_task_names,
                where: str = "sweep spec tasks[{i}]") -> None:
    """Raise naming the first task unknown to our task folder and to lmms-eval's task index
    (built, ~20 s, only when a task is not one of ours), with the closest known names.
    ``where``: how the message names the task's place (``{i}``: its index)."""
    folder = Path(tasks_path())
    ours = our_task_names(folder)
    unknown = [t for t in tasks if t not in ours]
    known = index(folder) if unknown else set()
    for task in unknown:
        if task not in known:
            raise MMQConfigError(f"{where.format(i=tasks.index(task))}: {unknown_name('task', task, known | ours, LIST_TASKS)}")


def _excluded(args: dict, exclude: list) -> bool:
    def matches(rule: dict) -> bool:
        return all(args.get(k) in (v if isinstance(v, list) else [v]) for k, v in rule.items())

    return any(matches(rule) for rule in exclude)


def _raw_configs(spec: dict) -> list[tuple[str, dict]]:
    """(where, args) for every grid point and explicit config, before validation."""
    fixed = _quant_args("fixed", spec.get("fixed") or {})
    grid = _quant_args("grid", spec.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(f"grid.{key}", "must be a non-empty list of values")
        if key in fixed:
            raise _fail(f"grid.{key}", "also set in 'fixed'; set it in one place")
    per_method = spec.get("method_args") or {}
    if not isinstance(per_method, dict):
        raise _fail("method_args", "must map a method name to quantization args")
    for method, args in per_method.items():
        _quant_args(f"method_args.{method}", args)
    explicit = spec.get("configs") or []
    if not isinstance(explicit, list):
        raise _fail("configs", "must be a list of quantization-arg mappings")
    if not grid and not explicit:
        raise _fail("grid", "empty: give 'grid' (arg -> list of values) or 'configs'")
    raw = []
    for combo in itertools.product(*grid.values()) if grid else []:
        point = dict(zip(grid, combo))
        raw.append((f"grid point {json.dumps(point)}", {**fixed, **point}))
    for i, entry in enumerate(explicit):
        raw.append((f"configs[{i}]", {**fixed, **_quant_args(f"configs[{i}]", entry)}))
    return [(where, {**args, **per_method.get(args.get("method", "none"), {})}) for where, args in raw]


def build_sweep(spec: dict, limit: int | None = None, task_index: Callable[[Path], set] | None = None) -> Sweep:
    """Validate ``spec`` and expand it into deduplicated configurations in a fixed order."""
    if not isinstance(spec, dict):
        raise _fail("(top level)", "must be a mapping")
    for key in spec:
        if key not in SPEC_KEYS:
            raise _fail(key, f"unknown key; known: {', '.join(SPEC_KEYS)}")
    model = _check_model(spec.get("model"))
    tasks = spec.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise _fail("tasks", "must be a non-empty list of task names")
    exclude = spec.get("exclude") or []
    if not isinstance(exclude, list):
        raise _fail("exclude", "must be a list of partial quantization-arg mappings")
    for i, rule in enumerate(exclude):
        _quant_args(f"exclude[{i}]", rule)
    if limit is not None and limit < 1:
        raise MMQConfigError(f"--limit {limit}: must be a positive number of documents")

    configs, seen = [], set()
    components = components_of(model.get("name", DEFAULT_MODEL))
    for where, args in _raw_configs(spec):
        if _excluded(args, exclude):
            continue
        try:
            quant = QuantSpec.from_args(args)
        except MMQConfigError as err:
            raise _fail(where, str(err)) from err
        cid = config_id(model, quant, tasks, limit)
        if cid not in seen:
            seen.add(cid)
            configs.append(Config(cid, QuantSpec() if quant.is_noop else quant, features_of(quant, components)))
    if not configs:
        raise _fail("exclude", "excludes every configuration")
    check_tasks(tasks, task_index or _indexed_task_names)
    return Sweep(model=dict(model), tasks=list(tasks), configs=configs, limit=limit)


def load_spec(path: str | Path) -> dict:
    """Read a spec YAML file (the message names the file when missing or unparsable)."""
    path = Path(path)
    if not path.is_file():
        raise MMQConfigError(f"sweep spec not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MMQConfigError(f"sweep spec {path}: not valid YAML: {err}") from err


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise MMQConfigError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def shard_configs(configs: list, index: int, count: int) -> list:
    """Deterministic round-robin subset: the shards of one sweep partition it exactly."""
    return configs[index::count]
