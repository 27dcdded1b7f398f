"""Quantization sweeps: spec expansion (``spec``), resumable results store (``store``), runner,
launchers (local / SLURM via submitit), the lmms-eval evaluator and the seed-repo importer."""
