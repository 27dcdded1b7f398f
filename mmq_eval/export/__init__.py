"""Packed export: quantized models as compressed-tensors ``pack-quantized`` checkpoints.

``packed.write_packed`` writes one from the quantizers' own codes, scales and zero points,
``schemes`` decides what the format can hold, ``memory`` measures sizes, ``cli`` is
``mmq-eval export``. Needs the optional extra ``mmq-eval[export]`` (compressed-tensors).
"""
