"""mmq-eval: measure what weight quantization does to vision-language models."""

__version__ = "0.1.0"
