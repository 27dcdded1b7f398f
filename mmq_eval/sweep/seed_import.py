"""Turn a config folder of the seed repo (gautomdas/mmq) into a sweep spec.

Each ``*.json`` file (taken in numeric file order) is one configuration in any of the seed's
formats (uniform lists, GPTQ per-part dicts, AWQ per-sub-layer dicts), read by
:func:`mmq_eval.quant.seed_configs.load_seed_config`.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.seed_configs import load_seed_config


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
            configs.append(load_seed_config(path).to_dict())
        except MMQConfigError as err:
            raise MMQConfigError(f"{path}: {err}") from err
        except ValueError as err:  # json.JSONDecodeError
            raise MMQConfigError(f"{path}: not valid JSON: {err}") from err
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
