"""Metric and document helpers that the ``mmq_*`` task YAMLs reference with ``!function``, and
``tasks_path``, the folder of those YAMLs."""

from importlib import resources


def tasks_path() -> str:
    """The folder holding our task YAMLs, for lmms-eval's ``--include_path``."""
    return str(resources.files("mmq_eval.task_configs"))
