"""Packed export: quantized models as compressed-tensors ``pack-quantized`` checkpoints.

``packed.write_packed`` writes one from the quantizers' own codes, scales and zero points,
``schemes`` decides what the format can hold (and how transformers reloads it), ``servable``
says which quantized parts a serving engine (vLLM) could load, ``memory`` measures sizes,
``cli`` is ``mmq-eval export``. Reading an export back for evaluation is
``mmq_eval.models.packed_checkpoint``. Needs the optional extra ``mmq-eval[export]`` (compressed-tensors).
"""
