"""lmms-eval model wrappers with component-wise quantization."""
