"""Cache plumbing that differs between language models.

Where transformers' standard `DynamicCache` holds SSM layers (built from the LM config) the models create it
themselves. Where an LM's modeling file defines its own cache class (`legacy_cache_class`), the *causal LM*
class creates it in `prepare_inputs_for_generation`; since we wrap the base model, we create it here.
"""

from __future__ import annotations

from typing import Any

import torch

from .compat import build_legacy_cache, legacy_cache_class, new_standard_cache
from .model_types import language_model_type


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
    ssm_only = not language_model_type(text_config.model_type).attention
    own_class = legacy_cache_class(text_config.model_type)
    if own_class is None:
        from transformers import DynamicCache

        return new_standard_cache(text_config, _counting(DynamicCache) if ssm_only else DynamicCache)
    if ssm_only:
        own_class = _counting(own_class)
    return build_legacy_cache(own_class, text_config, batch_size, dtype, device)


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
