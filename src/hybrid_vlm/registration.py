"""Registration with transformers' Auto classes (called on import)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .compat import AUTO_MODEL_FOR_VISION2SEQ
from .configuration_hybrid_vlm import HybridVLMConfig
from .image_processing_hybrid_vlm import HybridVLMImageProcessor
from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration, HybridVLMModel
from .processing_hybrid_vlm import HybridVLMProcessor
from .video_processing_hybrid_vlm import HybridVLMVideoProcessor


def register_auto_classes() -> None:
    """Make `Auto*.from_pretrained` return our classes for `model_type: hybrid_vlm`. Safe to call twice."""
    AutoConfig.register(HybridVLMConfig.model_type, HybridVLMConfig, exist_ok=True)
    AutoModel.register(HybridVLMConfig, HybridVLMModel, exist_ok=True)
    # The ImageTextToText and Vision2Seq mappings are separate objects: register both (Vision2Seq is gone in 5.x).
    AutoModelForImageTextToText.register(HybridVLMConfig, HybridVLMForConditionalGeneration, exist_ok=True)
    if AUTO_MODEL_FOR_VISION2SEQ is not None:
        AUTO_MODEL_FOR_VISION2SEQ.register(HybridVLMConfig, HybridVLMForConditionalGeneration, exist_ok=True)
    # TRL falls back to AutoModelForCausalLM when it is given a model path.
    AutoModelForCausalLM.register(HybridVLMConfig, HybridVLMForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(
        HybridVLMConfig, slow_image_processor_class=HybridVLMImageProcessor, exist_ok=True
    )
    AutoProcessor.register(HybridVLMConfig, HybridVLMProcessor, exist_ok=True)
    # The top-level `transformers.AutoVideoProcessor` is a torchvision placeholder when torchvision is missing; the
    # real class lives in the submodule. (On 4.57 its from_pretrained still needs torchvision; AutoProcessor and
    # HybridVLMVideoProcessor.from_pretrained load ours without it.)
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    AutoVideoProcessor.register(HybridVLMConfig, HybridVLMVideoProcessor, exist_ok=True)
