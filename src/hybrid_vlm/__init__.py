"""hybrid_vlm: hybrid Mamba/Transformer vision-language models as native transformers models.

Importing the package registers `HybridVLMConfig`, the models and the processors with transformers' Auto classes.
"""

from .builders import build_vamba
from .configuration_hybrid_vlm import HybridVLMConfig
from .image_processing_hybrid_vlm import HybridVLMImageProcessor
from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration, HybridVLMModel, HybridVLMPreTrainedModel
from .presets import from_preset, list_presets, preset_config
from .processing_hybrid_vlm import HybridVLMProcessor
from .registration import register_auto_classes
from .token_counts import VisualTokenSpec, count_image_tokens
from .tokenization_utils import load_tiny_tokenizer
from .version import __version__
from .video_processing_hybrid_vlm import HybridVLMVideoProcessor

register_auto_classes()

__all__ = [
    "HybridVLMConfig",
    "HybridVLMForConditionalGeneration",
    "HybridVLMImageProcessor",
    "HybridVLMModel",
    "HybridVLMPreTrainedModel",
    "HybridVLMProcessor",
    "HybridVLMVideoProcessor",
    "VisualTokenSpec",
    "__version__",
    "build_vamba",
    "count_image_tokens",
    "from_preset",
    "list_presets",
    "load_tiny_tokenizer",
    "preset_config",
    "register_auto_classes",
]
