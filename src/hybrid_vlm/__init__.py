"""hybrid_vlm: hybrid Mamba/Transformer vision-language models as native transformers models.

Importing the package registers `HybridVLMConfig`, the models and the processors with transformers' Auto classes.
Nothing else is imported until it is used: each public name below loads its module on first access, so that
`import hybrid_vlm` costs little more than `import torch, transformers`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .lazy_exports import lazy_exports
from .registration import register_auto_classes_lazily
from .version import __version__ as __version__

# Public name -> the module (relative to this package) that defines it.
_PUBLIC_NAMES: dict[str, str] = {
    "HybridVLMConfig": ".configuration_hybrid_vlm",
    "HybridVLMForConditionalGeneration": ".modeling_hybrid_vlm",
    "HybridVLMImageProcessor": ".image_processing_hybrid_vlm",
    "HybridVLMModel": ".modeling_hybrid_vlm",
    "HybridVLMPreTrainedModel": ".modeling_hybrid_vlm",
    "HybridVLMProcessor": ".processing_hybrid_vlm",
    "HybridVLMVideoProcessor": ".video_processing_hybrid_vlm",
    "VideoSFTCollator": ".training",
    "VisualTokenSpec": ".token_counts",
    "build_vamba": ".convert.build",
    "causal_lm_loss": ".training",
    "compute_paths": ".path_report",
    "count_image_tokens": ".token_counts",
    "count_video_tokens": ".token_counts",
    "freeze_for_stage": ".training",
    "from_preset": ".presets",
    "fsdp_wrap_classes": ".training",
    "install_ssm_engine": ".ssm_engine",
    "list_presets": ".presets",
    "load_tiny_tokenizer": ".tiny_tokenizer",
    "lora_config": ".training",
    "plan_prefill_chunks": ".chunked_prefill",
    "prefill_in_chunks": ".chunked_prefill",
    "preset_config": ".presets",
    "qlora_config": ".training",
    "register_auto_classes": ".registration",
    "set_ssm_engine": ".ssm_engine",
    "topk_distillation_loss": ".training",
}

__all__ = sorted([*_PUBLIC_NAMES, "__version__"])


_public_name, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES, globals())


def __getattr__(name: str) -> Any:
    if name in _PUBLIC_NAMES:
        return _public_name(name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # `hybrid_vlm.compat` works after `import hybrid_vlm`
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_auto_classes_lazily()
