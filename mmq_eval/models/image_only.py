"""Image-only processors where torchvision is missing.

transformers 5 builds the processors of video-capable VLMs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...)
with a video processor, and video processors need torchvision: without it such a processor can be
neither constructed nor loaded, not even for images. This project's CPU install has no torchvision
(PyPI's wheels are CUDA builds that cannot load beside the CPU torch), so
`allow_processors_without_torchvision` lets those processors stand up with an
`ImageOnlyVideoProcessor` that refuses videos by name. Where torchvision is installed it does
nothing.

`import_qwen_vl_utils` does the same for ``qwen-vl-utils`` (whose ``process_vision_info`` lmms-eval's
Qwen model classes call): its image path is plain PIL, but the module imports torchvision at the
top for videos. It is imported here with a stand-in torchvision that exists only during that
import, so lmms-eval's classes get the real function; videos then fail by name.
"""

from __future__ import annotations

import importlib
import sys
import types

from mmq_eval.errors import MMQConfigError

_DONE = False


def _video_processor_mixin():
    return importlib.import_module("transformers.video_processing_utils").VideoProcessorMixin


def allow_processors_without_torchvision() -> None:
    """Make processors that own a video processor load without torchvision (idempotent)."""
    global _DONE
    from transformers.utils import is_torchvision_available

    if _DONE or is_torchvision_available():
        return
    mixin = _video_processor_mixin()
    # the processor's argument check looks the expected base class up on this module
    importlib.import_module("transformers.processing_utils").transformers_module.VideoProcessorMixin = mixin
    auto = importlib.import_module("transformers.models.auto.video_processing_auto")
    auto.AutoVideoProcessor = _ImageOnlyAutoVideoProcessor
    _DONE = True


class ImageOnlyVideoProcessor(_video_processor_mixin()):
    """A video processor that refuses videos (there is no torchvision to decode them)."""

    def __call__(self, *args, **kwargs):
        raise MMQConfigError("this processor has no video support here: videos need torchvision, which is "
                             "not installed (the CPU install leaves it out); evaluate images only")


class _ImageOnlyAutoVideoProcessor:
    """``AutoVideoProcessor`` without torchvision: every checkpoint gets an ImageOnlyVideoProcessor."""

    @staticmethod
    def from_pretrained(*args, **kwargs) -> ImageOnlyVideoProcessor:
        return ImageOnlyVideoProcessor()


def _no_video(*args, **kwargs):
    raise MMQConfigError("videos need torchvision, which is not installed (the CPU install leaves it out); "
                         "evaluate images only")


def import_qwen_vl_utils() -> None:
    """Import ``qwen_vl_utils`` even without torchvision (idempotent; a no-op where it imports)."""
    from transformers.utils import is_torchvision_available

    if "qwen_vl_utils" in sys.modules or is_torchvision_available():
        return
    stand_in = types.ModuleType("torchvision")
    stand_in.__version__ = "0.0"
    stand_in.io = types.SimpleNamespace(read_video=_no_video)
    stand_in.transforms = types.ModuleType("torchvision.transforms")
    stand_in.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    stand_in.transforms.functional = types.SimpleNamespace(resize=_no_video)
    modules = {"torchvision": stand_in, "torchvision.transforms": stand_in.transforms}
    sys.modules.update(modules)
    try:
        importlib.import_module("qwen_vl_utils")
    finally:
        for name in modules:
            sys.modules.pop(name, None)
