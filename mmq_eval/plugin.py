"""lmms-eval entry point (group ``lmms_eval.models``): the models this package adds."""

from lmms_eval.models.registry_v2 import ModelManifest

from mmq_eval.quant.registry import chat_models, lmms_models


def model_manifests() -> list[ModelManifest]:
    """Manifests of the ``mmq_*`` models (one per wrapper of the architecture registry), resolved lazily."""
    chat = chat_models()
    return [ModelManifest(model_id=model_id, chat_class_path=path) if model_id in chat else
            ModelManifest(model_id=model_id, simple_class_path=path) for model_id, path in lmms_models().items()]
