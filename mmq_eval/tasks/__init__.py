"""Metric and document helpers that the ``mmq_*`` task YAMLs reference with ``!function``."""
