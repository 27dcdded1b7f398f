"""Packed export: quantized models as compressed-tensors ``pack-quantized`` checkpoints.

``packed.write_packed`` writes one; ``grid`` recovers the integers behind fake-quantized weights,
``schemes`` decides what the format can hold, ``memory`` measures sizes, ``cli`` is
``mmq-eval export``. Needs the optional extra ``mmq-eval[export]`` (compressed-tensors).
"""
