"""Sweep analysis: results tables (``table``), Pareto plots (``pareto``), feature importance
(``importance``) and the ``mmq-eval report`` command (``cli``)."""
