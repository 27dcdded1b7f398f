"""lmms-eval entry point (group ``lmms_eval.models``): the models this package adds."""

from lmms_eval.models.registry_v2 import ModelManifest

from mmq_eval.quant.registry import lmms_models


def model_manifests() -> list[ModelManifest]:
    """Manifests of the ``mmq_*`` models (one per wrapper of the architecture registry), resolved lazily."""
    return [ModelManifest(model_id=model_id, simple_class_path=path) for model_id, path in lmms_models().items()]
