"""lmms-eval entry point (group ``lmms_eval.models``): the models this package adds."""

from lmms_eval.models.registry_v2 import ModelManifest


def model_manifests() -> list[ModelManifest]:
    """Manifests of the ``mmq_*`` models, resolved lazily by lmms-eval."""
    return [
        ModelManifest(model_id="mmq_blip2", simple_class_path="mmq_eval.models.blip2.MMQBlip2"),
        ModelManifest(model_id="mmq_llava", simple_class_path="mmq_eval.models.llava.MMQLlava"),
    ]
