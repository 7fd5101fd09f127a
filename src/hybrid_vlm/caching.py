"""Cache plumbing that differs between language models and between transformers 4.x and 5.x.

transformers 5 gives every language model a `DynamicCache` built from its config (SSM layers included) and the
models create it themselves. transformers 4.57 gives each hybrid or SSM model its own cache class, which the
*causal LM* class creates in `prepare_inputs_for_generation`; since we wrap the base model, we create it here.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import transformers
from packaging import version

IS_TRANSFORMERS_5 = version.parse(transformers.__version__).major >= 5

# model_type -> (module, cache class) of the language models with their own cache class in transformers 4.x.
_V4_STATE_CACHES = {
    "jamba": ("transformers.models.jamba.modeling_jamba", "HybridMambaAttentionDynamicCache"),
    "bamba": ("transformers.models.bamba.modeling_bamba", "HybridMambaAttentionDynamicCache"),
    "granitemoehybrid": (
        "transformers.models.granitemoehybrid.modeling_granitemoehybrid",
        "HybridMambaAttentionDynamicCache",
    ),
    "zamba2": ("transformers.models.zamba2.modeling_zamba2", "Zamba2HybridDynamicCache"),
    "zamba": ("transformers.models.zamba.modeling_zamba", "ZambaHybridDynamicCache"),
    "falcon_h1": ("transformers.models.falcon_h1.modeling_falcon_h1", "FalconHybridMambaAttentionDynamicCache"),
    "mamba": ("transformers.models.mamba.modeling_mamba", "MambaCache"),
    "falcon_mamba": ("transformers.models.falcon_mamba.modeling_falcon_mamba", "FalconMambaCache"),
    "mamba2": ("transformers.models.mamba2.modeling_mamba2", "Mamba2Cache"),
}

# Language models whose layers are all SSM (no attention), for which the cache carries no sequence length.
SSM_ONLY_MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba")
# Language models with any SSM / linear-recurrent layer.
_SSM_MODEL_TYPES = (
    "jamba",
    "bamba",
    "granitemoehybrid",
    "zamba",
    "zamba2",
    "falcon_h1",
    "nemotron_h",
    "lfm2",
    "mamba",
    "mamba2",
    "falcon_mamba",
)


def has_ssm_layers(text_config: Any) -> bool:
    """Whether the language model carries recurrent state (so padding and cache continuation need care)."""
    return text_config.model_type in _SSM_MODEL_TYPES


class _CountsSeenTokens:
    """Mixin for caches of SSM-only LMs: they hold no keys, so the length generate() asks for is counted here."""

    _hybrid_vlm_seen_tokens = 0
    # Keeps generate() from building 4-D attention masks for a cache that has no attention layers.
    is_compileable = False

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self._hybrid_vlm_seen_tokens


_COUNTING_CLASSES: dict[type, type] = {}


def _counting(cache_class: type) -> type:
    if cache_class not in _COUNTING_CLASSES:
        _COUNTING_CLASSES[cache_class] = type(cache_class.__name__, (_CountsSeenTokens, cache_class), {})
    return _COUNTING_CLASSES[cache_class]


def new_language_model_cache(text_config: Any, batch_size: int, dtype: torch.dtype, device: torch.device) -> Any:
    """A fresh cache for the language model, or None where the LM builds a standard one itself."""
    ssm_only = text_config.model_type in SSM_ONLY_MODEL_TYPES
    if IS_TRANSFORMERS_5:
        from transformers import DynamicCache

        return (_counting(DynamicCache) if ssm_only else DynamicCache)(config=text_config)
    entry = _V4_STATE_CACHES.get(text_config.model_type)
    if entry is None:
        return None  # attention-only LMs build a DynamicCache themselves
    module_name, class_name = entry
    cache_class = getattr(importlib.import_module(module_name), class_name)
    if ssm_only:
        cache_class = _counting(cache_class)
    if text_config.model_type in ("mamba", "falcon_mamba"):
        return cache_class(text_config, max_batch_size=batch_size, dtype=dtype, device=device)
    if text_config.model_type == "falcon_h1":
        return cache_class(text_config, batch_size, dtype, devices=[device] * text_config.num_hidden_layers)
    return cache_class(text_config, batch_size, dtype=dtype, device=device)


def cache_seq_length(cache: Any) -> int | None:
    """Tokens a cache has seen, or None when the cache cannot tell (transformers 4.x SSM-only caches)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return None


def note_tokens_seen(cache: Any, past_length: int, new_tokens: int) -> None:
    """Advance the token count of caches that cannot measure their own length."""
    if isinstance(cache, _CountsSeenTokens):
        cache._hybrid_vlm_seen_tokens = past_length + new_tokens


def reorder_state_cache(cache: Any, beam_idx: torch.LongTensor) -> Any:
    """Beam search reordering for 4.x caches that lack `reorder_cache` (Mamba/Mamba2 caches)."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(beam_idx)
        return cache
    for name in ("conv_states", "ssm_states"):
        states = getattr(cache, name, None)
        if isinstance(states, torch.Tensor):
            # stacked as (num_layers, batch, ...)
            setattr(cache, name, states.index_select(1, beam_idx.to(states.device)))
        elif isinstance(states, (list, tuple)):
            reordered = [s.index_select(0, beam_idx.to(s.device)) for s in states]
            if isinstance(states, list):
                states[:] = reordered
            else:
                setattr(cache, name, type(states)(reordered))
    return cache
