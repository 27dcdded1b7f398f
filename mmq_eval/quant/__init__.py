"""Weight quantization of vision-language models: uniform, RTN, GPTQ and AWQ on chosen components.

Public API::

    from mmq_eval.quant import QuantSpec, QUANT_ARG_KEYS, quantize_model, QuantReport
    spec = QuantSpec.from_args({"method": "gptq", "llm_bits": 4})
    report = quantize_model(model, spec, calib_batches)
    print(report.format_table())

Importing the package registers the built-in model families (``mmq_eval.quant.families``).
"""

from mmq_eval.quant import families  # noqa: F401 - registers the built-in model families
from mmq_eval.quant.engine import quantize_model
from mmq_eval.quant.report import QuantReport
from mmq_eval.quant.spec import QUANT_ARG_KEYS, QuantSpec

__all__ = ["QUANT_ARG_KEYS", "QuantReport", "QuantSpec", "quantize_model"]
