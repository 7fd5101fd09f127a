"""hybrid_vlm: hybrid Mamba/Transformer vision-language models as native transformers models.

Importing the package registers `HybridVLMConfig`, the models and the processors with transformers' Auto classes.
"""

from .builders import build_vamba
from .chunked_prefill import plan_prefill_chunks, prefill_in_chunks
from .configuration_hybrid_vlm import HybridVLMConfig
from .image_processing_hybrid_vlm import HybridVLMImageProcessor
from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration, HybridVLMModel, HybridVLMPreTrainedModel
from .path_report import compute_paths, install_kernel_fallback_filter
from .presets import from_preset, list_presets, preset_config
from .processing_hybrid_vlm import HybridVLMProcessor
from .registration import register_auto_classes
from .ssm_engine import install_ssm_engine, set_ssm_engine
from .token_counts import VisualTokenSpec, count_image_tokens, count_video_tokens
from .tokenization_utils import load_tiny_tokenizer
from .training import (
    VideoSFTCollator,
    causal_lm_loss,
    freeze_for_stage,
    fsdp_wrap_classes,
    lora_config,
    qlora_config,
    topk_distillation_loss,
)
from .version import __version__
from .video_processing_hybrid_vlm import HybridVLMVideoProcessor

register_auto_classes()
install_kernel_fallback_filter()  # one note of ours instead of transformers' per-kernel "falling back" lines

__all__ = [
    "HybridVLMConfig",
    "HybridVLMForConditionalGeneration",
    "HybridVLMImageProcessor",
    "HybridVLMModel",
    "HybridVLMPreTrainedModel",
    "HybridVLMProcessor",
    "HybridVLMVideoProcessor",
    "VideoSFTCollator",
    "VisualTokenSpec",
    "__version__",
    "build_vamba",
    "causal_lm_loss",
    "compute_paths",
    "count_image_tokens",
    "count_video_tokens",
    "freeze_for_stage",
    "from_preset",
    "fsdp_wrap_classes",
    "install_ssm_engine",
    "list_presets",
    "load_tiny_tokenizer",
    "lora_config",
    "plan_prefill_chunks",
    "prefill_in_chunks",
    "preset_config",
    "qlora_config",
    "register_auto_classes",
    "set_ssm_engine",
    "topk_distillation_loss",
]
