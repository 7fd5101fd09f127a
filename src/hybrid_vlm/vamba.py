"""Vamba's decoder: a transformer LM whose text tokens see the visual tokens only through per-layer cross-attention,
while the visual tokens are updated by an SSM (Mamba-2) block per layer.

Per decoder layer (``a`` a learnable scalar kept in [0, 1] by clamping)::

    h      = input_layernorm(text)
    SA     = self_attn(h)                                   # over text tokens only, normal KV cache
    CA     = cross_attn(q=h, kv=input_layernorm(visual))    # every visual token of the sample (options: causal)
    text   = text + a * SA + (1 - a) * CA                   # every text token; `mix="sum"`: text + SA + CA
    visual = visual + SSM(RMSNorm(visual))                  # `vision_mixer`; no MLP on the visual stream
    text   = text + mlp(post_attention_layernorm(text))

and a final norm on the text stream only. Default position ids count text tokens only. These defaults are the Vamba
reference's semantics ("Vamba: Understanding Hour-Long Videos with Hybrid Mamba-Transformers", arXiv:2503.11579),
which has no visual tokens in its text sequence; here they are placeholders in the sequence, split out per layer.
Self-attention is quadratic in the (few) text tokens, cross-attention linear in the (many) visual tokens, the SSM
linear too: prefill is O(d N^2 + d M N + d^2 M) instead of O(d (M + N)^2) for M visual and N text tokens (Vamba
paper, section 3).

The model is built from any transformer LM transformers ships with the usual decoder-layer layout
(``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``, ``mlp``); its own modules do the
work (norms, self-attention and its attention interface, MLP, rotary embedding), and three things are added to each
decoder layer with `add_module`, so the weight names are Vamba's: ``layers.{i}.cross_attn.{q,k,v,o}_proj``,
``layers.{i}.alpha`` and ``layers.{i}.vision_mixer.{norm,mixer}.*``.

See docs/vamba.md for the semantics (what a text token before the video sees, padding, caching).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, DynamicCache, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .compat import cache_kwargs, cache_output_kwargs, take_cache
from .config_options import INCOMPATIBLE_MODEL_TYPES, VERIFIED_MODEL_TYPES, VambaOptions
from .ssm import SSMBlock, SSMState

logger = logging.get_logger(__name__)

__all__ = [
    "ADDED_LAYER_MODULES",
    "ADDED_LAYER_PARAMETERS",
    "ADDED_WEIGHT_PATTERN",
    "INCOMPATIBLE_MODEL_TYPES",
    "VERIFIED_MODEL_TYPES",
    "VambaCache",
    "VambaCrossAttention",
    "VambaLanguageModel",
    "VambaOptions",
    "find_vamba_language_model",
    "init_alpha",
    "init_cross_attention_from_self_attention",
    "init_vamba_module",
    "init_vamba_weights",
    "init_visual_mixers",
    "is_added_weight",
]

# What Vamba adds to each decoder layer of its LM (`VambaLanguageModel._extend_layer`): the modules `cross_attn` and
# `vision_mixer` and the parameter `alpha`. Their weights are the only ones a Vamba checkpoint has beyond its LM's:
# the converter detects a released Vamba checkpoint by them and `build_vamba` lets only them be missing from a source.
ADDED_LAYER_MODULES = ("cross_attn", "vision_mixer")
ADDED_LAYER_PARAMETERS = ("alpha",)
ADDED_WEIGHT_PATTERN = re.compile(
    r"(^|\.)layers\.\d+\.(?:"
    + "|".join([rf"{name}\..+" for name in ADDED_LAYER_MODULES] + list(ADDED_LAYER_PARAMETERS))
    + r")$"
)


def is_added_weight(name: str) -> bool:
    """Whether the weight `name` (a state-dict key, at any prefix) is one Vamba adds to a decoder layer."""
    return ADDED_WEIGHT_PATTERN.search(name) is not None


# ---------------------------------------------------------------------------------------------------------------
# Small tensor helpers
# ---------------------------------------------------------------------------------------------------------------


def _pack(select: torch.Tensor, right_align: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each row's selected positions go in a dense (batch, max_count) layout.

    Returns ``index`` (batch, L): the sequence position each slot reads (0 for empty slots) and ``filled``
    (batch, L): which slots hold a selected position. Order inside a row is kept. Right alignment puts every row's
    last selected position in the last slot, so a later decode token appends at the same column for every row.
    """
    batch, seq_len = select.shape
    counts = select.sum(-1)
    length = int(counts.max()) if batch and seq_len else 0
    rank = select.long().cumsum(-1) - 1
    slot = rank + (length - counts)[:, None] if right_align else rank
    slot = torch.where(select, slot, torch.full_like(slot, length))  # unselected -> a dummy column, dropped below
    positions = torch.arange(seq_len, device=select.device).expand(batch, seq_len)
    index = torch.zeros(batch, length + 1, dtype=torch.long, device=select.device).scatter(1, slot, positions)
    columns = torch.arange(length, device=select.device)
    filled = columns >= (length - counts)[:, None] if right_align else columns < counts[:, None]
    return index[:, :length], filled


def _take(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the sequence dim with index (B, L): hidden states (B, S, H), position ids (B, S) or (R, B, S)."""
    if tensor.is_floating_point():
        return tensor.gather(1, index[..., None].expand(-1, -1, tensor.shape[-1]))
    if tensor.dim() == 2:
        return tensor.gather(1, index)
    return tensor.gather(2, index[None].expand(tensor.shape[0], -1, -1))


def _scatter_back(out: torch.Tensor, values: torch.Tensor, index: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Write dense slots back to their sequence positions of `out` (B, S + 1, H); empty slots go to column S."""
    target = torch.where(filled, index, torch.full_like(index, out.shape[1] - 1))
    return out.scatter(1, target[..., None].expand(-1, -1, out.shape[-1]), values.to(out.dtype))


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean (B, Q, K) -> additive float (B, 1, Q, K): what eager, sdpa and flex attention all accept."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _generic_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Standard rotate-half RoPE, for LM modules that do not export their own `apply_rotary_pos_emb`."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def _module_rope(function: Callable[..., Any], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return function(x, x, cos, sin)[0]


def _module_mrope(
    function: Callable[..., Any], section: list[int], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    return function(x, x, cos, sin, section)[0]


def _rope_function(self_attn: nn.Module, config: PretrainedConfig) -> Callable[..., torch.Tensor]:
    """How the LM applies its rotary embedding to one tensor: the LM module's own function (M-RoPE included)."""
    module = sys.modules.get(type(self_attn).__module__)
    mrope = getattr(module, "apply_multimodal_rotary_pos_emb", None)
    scaling = getattr(self_attn, "rope_scaling", None) or getattr(config, "rope_scaling", None) or {}
    section = scaling.get("mrope_section") if isinstance(scaling, dict) else None
    if mrope is not None and section:
        return functools.partial(_module_mrope, mrope, section)
    function = getattr(module, "apply_rotary_pos_emb", None)
    if function is not None:
        return functools.partial(_module_rope, function)
    return _generic_rope


def _eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; used only when the LM's module has no `eager_attention_forward`."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _is_flash(implementation: str) -> bool:
    return "flash" in implementation


# ---------------------------------------------------------------------------------------------------------------
# Cross-attention
# ---------------------------------------------------------------------------------------------------------------


class VambaCrossAttention(nn.Module):
    """Text queries over visual keys/values, with exactly the projection shapes (and biases) of the layer's
    self-attention, so it can start as a copy of it (and so Vamba checkpoints load). Qwen3-style per-head
    ``q_norm``/``k_norm`` are mirrored too.

    The mask (padding; with causal visibility "only visual tokens before me") is arbitrary per row, which
    flash-attention cannot express, so under a flash implementation this module runs sdpa (self-attention still runs
    flash).
    """

    def __init__(
        self, self_attn: nn.Module, config: PretrainedConfig, layer_idx: int, use_rope: bool = True
    ) -> None:
        super().__init__()
        self.use_rope = use_rope
        projections = {name: getattr(self_attn, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
        reference = projections["q_proj"].weight
        for name, source in projections.items():
            linear = nn.Linear(
                source.in_features,
                source.out_features,
                bias=source.bias is not None,
                device=reference.device,
                dtype=reference.dtype,
            )
            self.add_module(name, linear)
        for name in ("q_norm", "k_norm"):
            norm = getattr(self_attn, name, None)
            if isinstance(norm, nn.Module):
                self.add_module(name, copy.deepcopy(norm))
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = int(
            getattr(self_attn, "head_dim", None)
            or getattr(config, "head_dim", None)
            or config.hidden_size // config.num_attention_heads
        )
        self.num_heads = self.q_proj.out_features // self.head_dim
        self.num_key_value_heads = self.k_proj.out_features // self.head_dim
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = float(getattr(self_attn, "scaling", self.head_dim**-0.5))
        self.attention_dropout = float(getattr(self_attn, "attention_dropout", 0.0) or 0.0)
        self.is_causal = False  # sdpa must not add its own causal mask: ours says which visual tokens are visible
        self._rope = _rope_function(self_attn, config)
        module = sys.modules.get(type(self_attn).__module__)
        self._eager = getattr(module, "eager_attention_forward", None) or _eager_attention

    def _normed(self, states: torch.Tensor, name: str) -> torch.Tensor:
        """Apply q_norm/k_norm on (B, L, heads, head_dim) as the source attention does (per head or full width)."""
        norm = getattr(self, name, None)
        if norm is None:
            return states
        width = getattr(norm, "weight", None)
        if width is not None and width.numel() != self.head_dim:
            return norm(states.flatten(-2)).unflatten(-1, (-1, self.head_dim))
        return norm(states)

    def project_visual(
        self,
        visual_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        rotate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the visual tokens, (B, kv_heads, V, head_dim), RoPE'd at their positions (with
        `use_rope` and `rotate`; unrotated otherwise)."""
        batch, length, _ = visual_states.shape
        key = self._normed(self.k_proj(visual_states).view(batch, length, -1, self.head_dim), "k_norm")
        value = self.v_proj(visual_states).view(batch, length, -1, self.head_dim).transpose(1, 2)
        if not self.use_rope or not rotate:
            return key.transpose(1, 2), value
        cos, sin = position_embeddings
        return self._rope(key.transpose(1, 2), cos, sin), value

    def attention_function(self) -> Callable[..., Any]:
        implementation = getattr(self.config, "_attn_implementation", None) or "eager"
        if implementation == "eager":
            return self._eager
        if implementation in ("sdpa", "flex_attention") and implementation in ALL_ATTENTION_FUNCTIONS:
            return ALL_ATTENTION_FUNCTIONS[implementation]
        logger.warning_once(
            f"hybrid_vlm.vamba: attention implementation '{implementation}' cannot take the per-token visual mask "
            "of the cross-attention; the cross-attention runs sdpa (self-attention keeps your implementation)."
        )
        return ALL_ATTENTION_FUNCTIONS["sdpa"]

    def forward(
        self,
        hidden_states: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """hidden_states: the normed text (B, T, H); key/value from `project_visual`; mask additive (B, 1, T, V)."""
        batch, length, _ = hidden_states.shape
        query = self._normed(self.q_proj(hidden_states).view(batch, length, -1, self.head_dim), "q_norm")
        query = query.transpose(1, 2)
        if self.use_rope:
            cos, sin = position_embeddings
            query = self._rope(query, cos, sin)
        output, _ = self.attention_function()(
            self,
            query,
            key.to(query.dtype),
            value.to(query.dtype),
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.o_proj(output.reshape(batch, length, -1).contiguous())


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------


class VambaCache(DynamicCache):
    """The text KV cache (this *is* a transformers `DynamicCache`: its layers hold the text stream's self-attention
    keys/values, packed right-aligned) plus what the visual stream leaves behind at prefill.

    Per layer: the visual keys/values the cross-attention reads (computed once, when the visual tokens arrive) and,
    with `keep_ssm_states`, the SSM state after the last visual token (so a later chunk with new images or frames
    continues the visual stream exactly, without re-running it). Shared: which text slots and visual slots are real
    (padding and batch-alignment gaps are not), the visual tokens' positions in the full sequence, and per row the
    count of real tokens (for default position ids).

    `get_seq_length()` is the number of tokens of the *full* sequence seen so far (text + visual + padding), which
    is what `generate()` counts; the text KV length is `text_length()`.
    """

    def __init__(self, keep_ssm_states: bool = True) -> None:
        super().__init__()
        self.keep_ssm_states = keep_ssm_states
        self.seen_tokens = 0
        self.tokens_since_visual = 0  # trailing tokens that were all text (each one text slot per row): croppable
        self.valid_tokens: torch.Tensor | None = None  # (B,) real tokens per row
        self.text_valid: torch.Tensor | None = None  # (B, T) real text slots
        self.visual_valid: torch.Tensor | None = None  # (B, V) real visual slots
        self.visual_order: torch.Tensor | None = None  # (B, V) index in the full sequence
        self.visual_keys: dict[int, torch.Tensor] = {}
        self.visual_values: dict[int, torch.Tensor] = {}
        self.ssm_states: dict[int, SSMState] = {}

    # -- lengths -------------------------------------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.seen_tokens

    def text_length(self) -> int:
        return 0 if self.text_valid is None else self.text_valid.shape[1]

    def visual_length(self) -> int:
        return 0 if self.visual_valid is None else self.visual_valid.shape[1]

    @property
    def has_visual(self) -> bool:
        return self.visual_valid is not None and bool(self.visual_valid.any())

    @property
    def cached_batch_size(self) -> int | None:
        return None if self.valid_tokens is None else int(self.valid_tokens.shape[0])

    # -- bookkeeping by VambaLanguageModel ----------------------------------------------------------------------------
    def _record(
        self,
        new_tokens: int,
        new_valid: torch.Tensor,
        text_valid: torch.Tensor,
        visual_valid: torch.Tensor | None,
        visual_order: torch.Tensor | None,
    ) -> None:
        counts = new_valid.sum(-1)
        self.valid_tokens = counts if self.valid_tokens is None else self.valid_tokens + counts
        self.text_valid = text_valid if self.text_valid is None else torch.cat([self.text_valid, text_valid], 1)
        if visual_valid is not None and visual_valid.shape[1]:
            self.visual_valid = (
                visual_valid if self.visual_valid is None else torch.cat([self.visual_valid, visual_valid], 1)
            )
            self.visual_order = (
                visual_order if self.visual_order is None else torch.cat([self.visual_order, visual_order], 1)
            )
            self.tokens_since_visual = 0
        else:
            self.tokens_since_visual += new_tokens
        self.seen_tokens += new_tokens

    # -- what generate() and users call ----------------------------------------------------------------------------
    def _map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name in ("valid_tokens", "text_valid", "visual_valid", "visual_order"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, function(value))
        for store in (self.visual_keys, self.visual_values):
            for layer_idx, value in store.items():
                store[layer_idx] = function(value)
        for layer_idx, state in self.ssm_states.items():
            self.ssm_states[layer_idx] = SSMState(*(function(part) for part in state))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep row `beam_idx[i]` as row i, for the text KV and every visual tensor."""
        super().reorder_cache(beam_idx)
        self._map_tensors(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_tensors(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_tensors(lambda t: t[indices.to(t.device)])

    def crop(self, max_length: int) -> None:
        """Drop the last tokens: ``crop(-n)`` removes n (both transformers lines), ``crop(n >= 0)`` keeps n (4.x).

        Only trailing text-only tokens can be removed (what assisted decoding rolls back); the visual stream is not
        rewound, so cropping into a chunk that carried visual tokens raises.
        """
        remove = -max_length if max_length < 0 else max(0, self.seen_tokens - max_length)
        if remove == 0:
            return
        if remove > self.tokens_since_visual:
            raise ValueError(
                f"Cannot crop {remove} tokens from a VambaCache: only the last {self.tokens_since_visual} tokens are "
                "text-only; the visual stream cannot be rewound. Re-run the prefill instead."
            )
        for layer in self.layers:
            layer.crop(-remove)
        # In text-only chunks every token is one text slot per row, so the cropped slots are the cropped tokens.
        self.valid_tokens = self.valid_tokens - self.text_valid[:, -remove:].sum(-1)
        self.text_valid = self.text_valid[:, :-remove]
        self.seen_tokens -= remove
        self.tokens_since_visual -= remove

    def reset(self) -> None:
        """Empty the cache (text and visual), keeping the object."""
        self.__init__(keep_ssm_states=self.keep_ssm_states)


# ---------------------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------------------

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _check_structure(base: nn.Module, config: PretrainedConfig) -> None:
    """Refuse LMs whose layers do not have the layout the Vamba forward re-implements, with the reason."""
    model_type = getattr(config, "model_type", "?")
    if model_type in INCOMPATIBLE_MODEL_TYPES:
        raise ValueError(
            f"Vamba cannot be built from a '{model_type}' language model: it {INCOMPATIBLE_MODEL_TYPES[model_type]}, "
            f"which the Vamba decoder does not reproduce. Verified LMs: {', '.join(VERIFIED_MODEL_TYPES)}."
        )
    layers = getattr(base, "layers", None)
    missing = [
        name for name in ("layers", "norm", "rotary_emb") if not isinstance(getattr(base, name, None), nn.Module)
    ]
    if missing or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"Vamba needs a decoder-only transformer with `layers`, `norm` and `rotary_emb` modules; the "
            f"'{model_type}' base model lacks {missing or ['decoder layers']}."
        )
    for index, layer in enumerate(layers):
        absent = [name for name in _LAYER_PARTS if not isinstance(getattr(layer, name, None), nn.Module)]
        attention = getattr(layer, "self_attn", None)
        absent += [
            f"self_attn.{name}"
            for name in _ATTENTION_PARTS
            if not isinstance(getattr(attention, name, None), nn.Linear)
        ]
        if absent:
            raise ValueError(
                f"Vamba needs decoder layers with {list(_LAYER_PARTS)} and separate q/k/v/o projections; layer "
                f"{index} of the '{model_type}' model lacks {absent} (fused or rearranged attention is unsupported)."
            )
        for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            if hasattr(layer, name):
                raise ValueError(f"Vamba does not support '{model_type}': its layers have `{name}` (sandwich norms).")
    if model_type not in VERIFIED_MODEL_TYPES:
        logger.warning_once(
            f"hybrid_vlm.vamba: '{model_type}' has the usual decoder-layer layout but is not among the verified LMs "
            f"({', '.join(VERIFIED_MODEL_TYPES)}); check that the build reproduces the LM without visual tokens."
        )


def _unwrap_base(model: nn.Module) -> nn.Module:
    """A *ForCausalLM or a VLM's text model -> the bare decoder (the module with `layers`)."""
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        return model
    for attribute in ("model", "language_model", "decoder"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module) and isinstance(getattr(inner, "layers", None), nn.ModuleList):
            return inner
    return model


def _layer_sliding_window(layer: nn.Module, config: PretrainedConfig, index: int) -> int | None:
    """The layer's sliding window (counted in text-stream tokens here), or None for full attention."""
    attention = layer.self_attn
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return getattr(config, "sliding_window", None) if layer_types[index] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def _uses_mrope(config: PretrainedConfig) -> bool:
    for name in ("rope_scaling", "rope_parameters"):
        value = getattr(config, name, None)
        if isinstance(value, dict) and value.get("mrope_section"):
            return True
    return False


class VambaLanguageModel(nn.Module):
    """A transformer LM turned into Vamba's decoder: text stream with self- and cross-attention, visual stream with
    an SSM block per layer. The LM's own modules are registered directly here (``embed_tokens``, ``layers``,
    ``norm``, ``rotary_emb``), so the state dict is the LM's plus the added ``cross_attn``/``alpha``/
    ``vision_mixer`` entries of each layer.

    Args:
        text_config_or_model: a text config (the LM is built with `AutoModel.from_config`) or an existing LM
            (a base model, a *ForCausalLM, or anything with `.model.layers`); an existing LM is used in place.
        options: a `VambaOptions` or its dict.
    """

    def __init__(
        self, text_config_or_model: PretrainedConfig | nn.Module, options: VambaOptions | dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.options = VambaOptions.coerce(options)
        if isinstance(text_config_or_model, nn.Module):
            base = _unwrap_base(text_config_or_model)
        elif isinstance(text_config_or_model, PretrainedConfig):
            base = AutoModel.from_config(text_config_or_model)
        else:
            raise TypeError(
                "VambaLanguageModel takes a text config or a language model, got "
                f"{type(text_config_or_model).__name__}."
            )
        # The LM's own config object (from_config may copy it): attention-implementation switches land there.
        config = base.config
        _check_structure(base, config)
        self.config = config
        for name, child in base.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_base", base)  # not a child: its modules are registered above, once
        self._no_split_modules = list(getattr(base, "_no_split_modules", None) or [])
        self._mrope = _uses_mrope(config)
        self._windows = [_layer_sliding_window(layer, config, i) for i, layer in enumerate(self.layers)]
        for index, layer in enumerate(self.layers):
            self._extend_layer(layer, index)
        init_vamba_weights(self, copy_cross_attention=self.options.cross_attention_init == "self_attention")

    # -- construction ----------------------------------------------------------------------------------------------
    def _extend_layer(self, layer: nn.Module, index: int) -> None:
        reference = layer.self_attn.q_proj.weight
        layer.add_module(
            "cross_attn",
            VambaCrossAttention(layer.self_attn, self.config, index, use_rope=self.options.cross_attention_rope),
        )
        alpha = torch.tensor(float(self.options.alpha_init), dtype=reference.dtype, device=reference.device)
        layer.register_parameter("alpha", nn.Parameter(alpha))
        if self.options.visual_mixer != "none":
            eps = self.options.ssm_norm_eps
            if eps is None:
                eps = getattr(self.config, "rms_norm_eps", None) or getattr(self.config, "layer_norm_eps", None) or 1e-6
            block = SSMBlock(
                self.config.hidden_size,
                mixer=self.options.visual_mixer,
                norm_eps=eps,
                layer_idx=index,
                **self.options.mixer_kwargs(),
            )
            layer.add_module("vision_mixer", block.to(device=reference.device, dtype=reference.dtype))

    # -- transformers plumbing -------------------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The wrapped LM object (shares every module with this one)."""
        return self._base

    def get_input_embeddings(self) -> nn.Module:
        return self._base.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        old = self._base.get_input_embeddings()
        self._base.set_input_embeddings(value)
        for name, child in list(self.named_children()):
            if child is old:
                self.add_module(name, value)

    @property
    def _supports_sdpa(self) -> bool:  # the LM's self-attention decides; the cross-attention runs sdpa or eager
        return bool(getattr(self._base, "_supports_sdpa", False))

    @property
    def _supports_flash_attn(self) -> bool:
        return bool(getattr(self._base, "_supports_flash_attn", False))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        inputs_embeds: torch.FloatTensor | None = None,
        visual_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: VambaCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
        input_ids: torch.LongTensor | None = None,
        visual_positions: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """Run the interleaved sequence; `visual_mask` (batch, seq) marks the visual positions.

        `visual_positions` (3, batch, seq): each visual token's (t, h, w) in its token grid, for
        ``cross_attention_key_positions="grid"`` (HybridVLM passes them; other positions are ignored).

        `last_hidden_state` has the full sequence length: text positions hold the (final-normed) text stream,
        visual positions the visual stream after the last layer (no final norm; an LM head should read only text
        positions). `attention_mask` is the usual 2-D padding mask, over the new tokens or over past + new tokens.
        """
        past_key_values = take_cache(kwargs, past_key_values=past_key_values)
        if (inputs_embeds is None) == (input_ids is None):
            raise ValueError("Pass exactly one of inputs_embeds or input_ids.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds must be (batch, seq, hidden), got shape {tuple(inputs_embeds.shape)}.")
        batch, seq_len, hidden = inputs_embeds.shape
        device = inputs_embeds.device
        if visual_mask is None:
            visual_mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
        if visual_mask.shape != (batch, seq_len):
            raise ValueError(f"visual_mask must be (batch, seq) = {(batch, seq_len)}, got {tuple(visual_mask.shape)}.")
        visual_mask = visual_mask.to(device=device, dtype=torch.bool)
        if kwargs.get("output_attentions"):
            logger.warning_once("hybrid_vlm.vamba: output_attentions is not supported; attentions are not returned.")
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))

        training_checkpointed = self.training and any(
            getattr(layer, "gradient_checkpointing", False) for layer in self.layers
        )
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not self.training
        if use_cache and training_checkpointed:
            logger.warning_once("hybrid_vlm.vamba: use_cache=True is incompatible with gradient checkpointing; off.")
            use_cache = False
        cache = self._resolve_cache(past_key_values, use_cache, batch)
        past_length = cache.seen_tokens if cache is not None else 0

        new_valid = self._new_token_mask(attention_mask, batch, seq_len, past_length, device)
        is_visual = visual_mask & new_valid
        position_ids = self._position_ids(position_ids, new_valid, is_visual, cache, batch, seq_len)
        order = (torch.arange(seq_len, device=device) + past_length).expand(batch, seq_len)

        # Split the interleaved sequence into a text stream (right-aligned, so decode tokens append in one column)
        # and a visual stream (left-aligned, so the SSM sees each row's tokens contiguously from the first slot).
        text_index, text_filled = _pack(~is_visual, right_align=True)
        text_valid = text_filled & new_valid.gather(1, text_index)
        text = _take(inputs_embeds, text_index)
        text_order = order.gather(1, text_index)
        visual_index, visual_filled = _pack(is_visual, right_align=False)
        new_visual = visual_index.shape[1] > 0
        if new_visual and cache is not None and cache.has_visual and not cache.ssm_states and self._has_mixers:
            raise ValueError(
                "This VambaCache was made with keep_ssm_states=False, so the visual stream cannot be continued with "
                "new visual tokens; re-run the prefill with all of them."
            )
        visual = _take(inputs_embeds, visual_index) if new_visual else None
        visual_order = order.gather(1, visual_index) if new_visual else None

        text_rope = self.rotary_emb(text, _take(position_ids, text_index))
        visual_rope = None
        if new_visual and self._grid_keys:
            if visual_positions is None or visual_positions.shape != (3, batch, seq_len):
                raise ValueError(
                    "cross_attention_key_positions='grid' needs visual_positions of shape (3, batch, seq) = "
                    f"{(3, batch, seq_len)} (each visual token's t, h, w); HybridVLM's forward passes them."
                )
            visual_rope = self._grid_rope(visual, _take(visual_positions.to(device), visual_index))
        elif new_visual:
            visual_rope = self.rotary_emb(visual, _take(position_ids, visual_index))

        # Which visual slots (cached first, then new) each text token may read: every real one of its row ("all"),
        # or the real ones before it in the sequence ("causal").
        all_visual_valid, all_visual_order = self._visual_slots(cache, visual_filled, visual_order, new_visual)
        cross_mask = has_visual = None
        if all_visual_valid is not None and all_visual_valid.shape[1]:
            visible = all_visual_valid[:, None, :].expand(-1, text_order.shape[1], -1).clone()
            if self.options.cross_attention_visibility == "causal":
                visible &= all_visual_order[:, None, :] < text_order[:, :, None]
            has_visual = visible.any(-1)
            if not bool(visible.all()):  # every text slot sees every visual slot (one unpadded sample): no mask
                visible[..., 0] |= ~has_visual  # rows that see nothing read one key, then get no cross-attention
                cross_mask = _additive_mask(visible, text.dtype)
        self_masks = _SelfAttentionMasks(self.config, cache, text_valid, text.dtype)

        state = _LayerInputs(
            text_rope=text_rope,
            visual_rope=visual_rope,
            visual_filled=visual_filled,
            cross_mask=cross_mask,
            has_visual=has_visual,
            vamba_cache=cache,
        )
        all_hidden: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(
                    self._assemble(inputs_embeds, text, text_index, text_filled, visual, visual_index, visual_filled)
                )
            self_mask = self_masks.for_window(self._windows[index])
            if training_checkpointed and getattr(layer, "gradient_checkpointing", False):
                step = functools.partial(self._layer_step, layer, index, state, self_mask)
                text, visual = layer._gradient_checkpointing_func(step, text, visual)
            else:
                text, visual = self._layer_step(layer, index, state, self_mask, text, visual)

        text = self.norm(text)
        output = self._assemble(inputs_embeds, text, text_index, text_filled, visual, visual_index, visual_filled)
        if cache is not None:
            cache._record(
                seq_len,
                new_valid,
                text_valid,
                visual_filled if new_visual else None,
                visual_order,
            )
        result = BaseModelOutputWithPast(
            last_hidden_state=output,
            **cache_output_kwargs(cache if use_cache else None),
            hidden_states=tuple([*all_hidden, output]) if output_hidden_states else None,
        )
        return result if return_dict is not False else result.to_tuple()

    @property
    def _has_mixers(self) -> bool:
        return self.options.visual_mixer != "none"

    @property
    def _grid_keys(self) -> bool:
        return self.options.cross_attention_key_positions == "grid"

    def _grid_rope(self, visual: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE (cos, sin) of shape (B, V, head_dim): the LM's rotary frequencies at the t, h and w positions
        (3, B, V), each taking its `mrope_section` share of the frequency pairs (Qwen2-VL's multimodal RoPE)."""
        parts = [self.rotary_emb(visual, positions[i]) for i in range(3)]
        sections = list(self.options.mrope_section) * 2
        if sum(sections) != parts[0][0].shape[-1]:
            raise ValueError(
                f"mrope_section {self.options.mrope_section} must sum to head_dim / 2 = {parts[0][0].shape[-1] // 2}."
            )

        def merge(which: int) -> torch.Tensor:
            chunks = [part[which].split(sections, dim=-1) for part in parts]
            return torch.cat([chunks[i % 3][i] for i in range(len(sections))], dim=-1)

        return merge(0), merge(1)

    def _layer_step(
        self,
        layer: nn.Module,
        index: int,
        state: _LayerInputs,
        self_mask: torch.Tensor | None,
        text: torch.Tensor,
        visual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decoder layer on both streams (see the module docstring for the equations)."""
        cache = state.vamba_cache
        residual = text
        normed = layer.input_layernorm(text)
        if text.shape[1]:
            attended = layer.self_attn(
                hidden_states=normed,
                position_embeddings=state.text_rope,
                attention_mask=self_mask,
                **cache_kwargs(layer.self_attn.forward, cache),
            )[0]
        else:
            attended = normed

        keys = values = None
        if visual is not None:
            source = layer.input_layernorm(visual) if self.options.cross_attention_kv_norm else visual
            if self.options.visual_stream_norm:
                visual = source  # the normed states are the visual stream from here on (SSM block, next layer)
            keys, values = layer.cross_attn.project_visual(source, state.visual_rope, rotate=not self._grid_keys)
        rotated = keys
        if keys is not None and self._grid_keys:  # rotated for this forward only; the cache keeps them unrotated
            rotated = _generic_rope(keys, *state.visual_rope)
        if cache is not None and index in cache.visual_keys:
            cached_keys, cached_values = cache.visual_keys[index], cache.visual_values[index]
            if keys is not None:
                rotated = torch.cat([cached_keys, rotated.to(cached_keys.dtype)], dim=2)
                keys = torch.cat([cached_keys, keys.to(cached_keys.dtype)], dim=2)
                values = torch.cat([cached_values, values.to(cached_values.dtype)], dim=2)
            else:
                keys = rotated = cached_keys
                values = cached_values
        if cache is not None and visual is not None:
            cache.visual_keys[index], cache.visual_values[index] = keys, values
        keys = rotated

        if state.has_visual is not None and text.shape[1]:
            crossed = layer.cross_attn(normed, keys, values, state.cross_mask, state.text_rope)
            if self.options.mix == "alpha":
                alpha = layer.alpha.clamp(0.0, 1.0).to(attended.dtype)
                mixed = alpha * attended + (1.0 - alpha) * crossed
            else:
                mixed = attended + crossed
            attended = torch.where(state.has_visual[..., None], mixed, attended)
        text = residual + attended

        mixer = getattr(layer, "vision_mixer", None)
        if visual is not None and mixer is not None:
            mask = state.visual_filled
            if cache is not None and cache.keep_ssm_states:
                visual, ssm_state = mixer(
                    visual, attention_mask=mask, initial_state=cache.ssm_states.get(index), return_final_state=True
                )
                cache.ssm_states[index] = ssm_state
            else:
                visual = mixer(visual, attention_mask=mask)

        residual = text
        text = residual + layer.mlp(layer.post_attention_layernorm(text))
        return text, visual

    # -- forward helpers -------------------------------------------------------------------------------------------
    def _resolve_cache(self, past_key_values: Any, use_cache: bool, batch: int) -> VambaCache | None:
        if past_key_values is None:
            return VambaCache() if use_cache else None
        if isinstance(past_key_values, VambaCache):
            cached_batch = past_key_values.cached_batch_size
            if cached_batch is not None and cached_batch != batch:
                raise ValueError(
                    f"The VambaCache holds {cached_batch} rows but the input has {batch}; pass a cache of this batch."
                )
            return past_key_values
        seen = past_key_values.get_seq_length() if hasattr(past_key_values, "get_seq_length") else None
        if seen == 0:
            return VambaCache()  # generate() may hand over an empty standard cache; ours replaces it
        raise ValueError(
            f"Vamba needs a VambaCache (text KV + visual KV), got a non-empty {type(past_key_values).__name__}. "
            "Let the model create its cache (past_key_values=None)."
        )

    @staticmethod
    def _new_token_mask(
        attention_mask: torch.Tensor | None, batch: int, seq_len: int, past_length: int, device: torch.device
    ) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        if attention_mask.dim() != 2:
            raise ValueError(
                "Vamba builds its own attention masks and takes a 2-D padding mask (batch, seq); got a "
                f"{attention_mask.dim()}-D mask."
            )
        width = attention_mask.shape[1]
        if width == past_length + seq_len:
            attention_mask = attention_mask[:, past_length:]
        elif width != seq_len:
            raise ValueError(
                f"attention_mask has {width} columns; expected {seq_len} (the new tokens) or {past_length + seq_len} "
                "(past + new tokens)."
            )
        return attention_mask.to(device).bool()

    def _position_ids(
        self,
        position_ids: torch.Tensor | None,
        new_valid: torch.Tensor,
        is_visual: torch.Tensor,
        cache: VambaCache | None,
        batch: int,
        seq_len: int,
    ) -> torch.Tensor:
        """Given ids (2-D, or 3-D for M-RoPE), else counted over real tokens (padding-safe): with
        ``text_positions="text"`` text tokens count text tokens only and visual tokens count visual tokens only,
        with ``"sequence"`` every real token counts."""
        if position_ids is None:
            if self.options.text_positions == "text":
                is_text = new_valid & ~is_visual
                text_start = visual_start = None
                if cache is not None and cache.text_valid is not None:
                    text_start = cache.text_valid.sum(-1)
                if cache is not None and cache.visual_valid is not None:
                    visual_start = cache.visual_valid.sum(-1)
                text_ids = is_text.long().cumsum(-1) - 1
                visual_ids = is_visual.long().cumsum(-1) - 1
                if text_start is not None:
                    text_ids = text_ids + text_start[:, None].to(text_ids.device)
                if visual_start is not None:
                    visual_ids = visual_ids + visual_start[:, None].to(visual_ids.device)
                position_ids = torch.where(is_visual, visual_ids, text_ids).clamp(min=0)
            else:
                start = cache.valid_tokens if cache is not None and cache.valid_tokens is not None else None
                position_ids = new_valid.long().cumsum(-1) - 1
                if start is not None:
                    position_ids = position_ids + start[:, None].to(position_ids.device)
                position_ids = position_ids.clamp(min=0)
        position_ids = position_ids.to(new_valid.device)
        if position_ids.shape[-1] != seq_len:
            raise ValueError(f"position_ids cover {position_ids.shape[-1]} tokens but the input has {seq_len}.")
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.shape[-2] != batch:
            position_ids = position_ids.expand(*position_ids.shape[:-2], batch, seq_len)
        if self._mrope and position_ids.dim() == 2:
            position_ids = position_ids[None].expand(3, batch, seq_len)
        if position_ids.dim() == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]  # transformers' (text, t, h, w) layout: the rotary reads t, h, w
        return position_ids

    @staticmethod
    def _visual_slots(
        cache: VambaCache | None,
        visual_filled: torch.Tensor,
        visual_order: torch.Tensor | None,
        new_visual: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cached_valid = cache.visual_valid if cache is not None else None
        cached_order = cache.visual_order if cache is not None else None
        if not new_visual:
            return cached_valid, cached_order
        if cached_valid is None:
            return visual_filled, visual_order
        return torch.cat([cached_valid, visual_filled], 1), torch.cat([cached_order, visual_order], 1)

    @staticmethod
    def _assemble(
        inputs_embeds: torch.Tensor,
        text: torch.Tensor,
        text_index: torch.Tensor,
        text_filled: torch.Tensor,
        visual: torch.Tensor | None,
        visual_index: torch.Tensor,
        visual_filled: torch.Tensor,
    ) -> torch.Tensor:
        batch, seq_len, hidden = inputs_embeds.shape
        out = inputs_embeds.new_zeros(batch, seq_len + 1, hidden, dtype=text.dtype)
        out = _scatter_back(out, text, text_index, text_filled)
        if visual is not None:
            out = _scatter_back(out, visual, visual_index, visual_filled)
        return out[:, :seq_len]


@dataclass
class _LayerInputs:
    """What every layer of one forward shares."""

    text_rope: tuple[torch.Tensor, torch.Tensor]
    visual_rope: tuple[torch.Tensor, torch.Tensor] | None
    visual_filled: torch.Tensor
    cross_mask: torch.Tensor | None  # None with has_visual set: every text slot reads every visual slot
    has_visual: torch.Tensor | None  # (B, T) text slots that cross-attend; None: no visual token at all
    vamba_cache: VambaCache | None


class _SelfAttentionMasks:
    """Self-attention masks over the packed text stream (cached slots then new ones), one per sliding window.

    Causal in stream order (= original order), padding and alignment gaps masked, every query sees at least itself
    (so no softmax row is empty). Returned in the form the configured attention implementation takes: additive 4-D
    for eager/sdpa/flex (None for sdpa when plain causal suffices), 2-D padding for flash-attention.
    """

    def __init__(
        self, config: PretrainedConfig, cache: VambaCache | None, text_valid: torch.Tensor, dtype: torch.dtype
    ) -> None:
        self.implementation = getattr(config, "_attn_implementation", None) or "eager"
        past_valid = cache.text_valid if cache is not None and cache.text_valid is not None else None
        self.key_valid = text_valid if past_valid is None else torch.cat([past_valid, text_valid], 1)
        self.queries = text_valid.shape[1]
        self.past = self.key_valid.shape[1] - self.queries
        self.dtype = dtype
        self._masks: dict[int | None, torch.Tensor | None] = {}

    def for_window(self, window: int | None) -> torch.Tensor | None:
        keys = self.key_valid.shape[1]
        if window is not None and window >= keys:
            window = None
        if window not in self._masks:
            self._masks[window] = self._build(window)
        return self._masks[window]

    def _build(self, window: int | None) -> torch.Tensor | None:
        all_valid = bool(self.key_valid.all())
        if _is_flash(self.implementation):
            return None if all_valid else self.key_valid.long()
        if self.implementation == "sdpa" and all_valid and window is None and (self.past == 0 or self.queries == 1):
            return None  # sdpa's own causal (prefill) or full (one query) attention is exactly this mask
        device = self.key_valid.device
        query_pos = torch.arange(self.queries, device=device)[:, None] + self.past
        key_pos = torch.arange(self.key_valid.shape[1], device=device)[None, :]
        allowed = (key_pos <= query_pos)[None] & self.key_valid[:, None, :]
        if window is not None:
            allowed = allowed & (key_pos > query_pos - window)[None]
        allowed = allowed | (key_pos == query_pos)[None]
        return _additive_mask(allowed, self.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------------------------


def find_vamba_language_model(model_or_lm: nn.Module) -> VambaLanguageModel:
    """The VambaLanguageModel inside a HybridVLM (or the argument itself)."""
    if isinstance(model_or_lm, VambaLanguageModel):
        return model_or_lm
    for module in model_or_lm.modules():
        if isinstance(module, VambaLanguageModel):
            return module
    raise ValueError(f"No VambaLanguageModel found in {type(model_or_lm).__name__}; is its decoder 'vamba'?")


def _is_partitioned(parameter: torch.Tensor) -> bool:
    """DeepSpeed ZeRO-3 replaces a parameter's data by an empty shard and tags it with `ds_id`."""
    return hasattr(parameter, "ds_id")


@contextlib.contextmanager
def _gathered(parameters: list[torch.Tensor]) -> Iterator[None]:
    """Full parameters for the duration (DeepSpeed ZeRO-3), written back from rank 0 afterwards; a no-op otherwise.

    FSDP is not handled here: wrap the call in ``FSDP.summon_full_params(model, writeback=True)``.
    """
    partitioned = [p for p in parameters if _is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed  # only reached when parameters are ZeRO-3 partitioned, so deepspeed is there

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def _materialised(parameters: list[torch.Tensor]) -> bool:
    return not any(p.is_meta for p in parameters)


@torch.no_grad()
def init_cross_attention_from_self_attention(model_or_lm: nn.Module) -> int:
    """Copy every layer's self-attention q/k/v/o weights and biases (and q_norm/k_norm) into its cross-attention.

    Bit-exact copies; the paper's key initialisation (Table 2). Safe under DeepSpeed ZeRO-3 (parameters gathered,
    modified on rank 0, re-partitioned). Under FSDP call it inside ``summon_full_params(model, writeback=True)``.
    Returns the number of layers copied.
    """
    lm = find_vamba_language_model(model_or_lm)
    copied = 0
    for layer in lm.layers:
        pairs = [
            (getattr(layer.cross_attn, name), getattr(layer.self_attn, name))
            for name in (*_ATTENTION_PARTS, "q_norm", "k_norm")
            if isinstance(getattr(layer.cross_attn, name, None), nn.Module)
        ]
        parameters = [p for target, source in pairs for p in (*target.parameters(), *source.parameters())]
        with _gathered(parameters):
            if not _materialised(parameters):
                continue
            for target, source in pairs:
                source_state = dict(source.named_parameters())
                for name, parameter in target.named_parameters():
                    parameter.copy_(source_state[name])
        copied += 1
    return copied


@torch.no_grad()
def _init_cross_attention_randomly(layer: nn.Module, std: float) -> None:
    for module in layer.cross_attn.modules():
        if isinstance(module, nn.Linear):
            parameters = list(module.parameters())
            with _gathered(parameters):
                if _materialised(parameters):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()


@torch.no_grad()
def _init_ssm_block(block: nn.Module, num_layers: int) -> None:
    """One visual SSM block as mamba-ssm's reference initialises a fresh Mamba block (see `init_visual_mixers`)."""
    parameters = list(block.parameters())
    with _gathered(parameters):
        if not _materialised(parameters):
            return
        block.norm.weight.fill_(1.0)
        mixer = block.mixer
        for name in ("in_proj", "x_proj", "conv1d"):
            module = getattr(mixer, name, None)
            if module is not None:
                module.reset_parameters()
                if getattr(module, "bias", None) is not None and not isinstance(module, nn.Conv1d):
                    module.bias.zero_()
        mixer.init_ssm_parameters()  # A (log), dt bias (inverse softplus), D, gated-norm weight / dt_proj
        out_proj = mixer.out_proj
        nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
        out_proj.weight.div_(math.sqrt(num_layers))  # one residual branch per layer on the visual stream
        if out_proj.bias is not None:
            out_proj.bias.zero_()


def init_visual_mixers(model_or_lm: nn.Module) -> int:
    """Initialise every layer's visual SSM block as a fresh Mamba block in mamba-ssm's reference.

    Mamba-2: ``A ~ U(1, 16)`` stored as ``A_log = log A``; ``dt`` log-uniform in [1e-3, 1e-1] (floored at 1e-4)
    stored as ``dt_bias = softplus^-1(dt)``; ``D = 1``; norms 1; in_proj/conv1d PyTorch's default init with zero
    linear biases; ``out_proj`` kaiming-uniform then divided by ``sqrt(num_layers)`` (mamba-ssm's
    ``rescale_prenorm_residual`` with one residual branch per layer, as the visual stream has no MLP). Mamba-1:
    ``A_log = log(1..d_state)`` per channel, dt_proj weight uniform in ``±dt_rank^-0.5``, its bias the inverse
    softplus of a log-uniform dt, ``D = 1``, the same out_proj rescaling. Safe under DeepSpeed ZeRO-3.
    Returns the number of blocks initialised.
    """
    lm = find_vamba_language_model(model_or_lm)
    count = 0
    for layer in lm.layers:
        block = getattr(layer, "vision_mixer", None)
        if block is not None:
            _init_ssm_block(block, lm.num_layers)
            count += 1
    return count


@torch.no_grad()
def init_alpha(model_or_lm: nn.Module, value: float | None = None) -> None:
    """Set every layer's `alpha` to `value` (default: the options' alpha_init)."""
    lm = find_vamba_language_model(model_or_lm)
    value = lm.options.alpha_init if value is None else value
    for layer in lm.layers:
        with _gathered([layer.alpha]):
            if _materialised([layer.alpha]):
                layer.alpha.fill_(float(value))


def init_vamba_weights(model_or_lm: nn.Module, copy_cross_attention: bool | None = None) -> None:
    """Initialise all added weights: cross-attention (copied from self-attention, or random per the options),
    visual SSM blocks, alpha. Call it after the LM's own weights are loaded (build_vamba does)."""
    lm = find_vamba_language_model(model_or_lm)
    if copy_cross_attention is None:
        copy_cross_attention = lm.options.cross_attention_init == "self_attention"
    if copy_cross_attention:
        init_cross_attention_from_self_attention(lm)
    else:
        std = float(getattr(lm.config, "initializer_range", 0.02) or 0.02)
        for layer in lm.layers:
            _init_cross_attention_randomly(layer, std)
    init_visual_mixers(lm)
    init_alpha(lm)


@torch.no_grad()
def init_vamba_module(module: nn.Module, options: VambaOptions, num_layers: int, std: float = 0.02) -> bool:
    """Per-module hook for a PreTrainedModel's `_init_weights` (transformers calls it for weights a checkpoint did
    not provide, e.g. after building on the meta device): cross-attention random (copy from self-attention after
    loading with `init_cross_attention_from_self_attention`), SSM blocks as `init_visual_mixers`, alpha.
    Returns True when the module was one of Vamba's."""
    if isinstance(module, VambaCrossAttention):
        for linear in (module.q_proj, module.k_proj, module.v_proj, module.o_proj):
            linear.weight.normal_(0.0, std)
            if linear.bias is not None:
                linear.bias.zero_()
        for name in ("q_norm", "k_norm"):
            norm = getattr(module, name, None)
            if norm is not None and getattr(norm, "weight", None) is not None:
                norm.weight.fill_(1.0)
        return True
    if isinstance(module, SSMBlock):
        _init_ssm_block(module, num_layers)
        return True
    alpha = module._parameters.get("alpha") if hasattr(module, "_parameters") else None
    if isinstance(alpha, nn.Parameter) and hasattr(module, "cross_attn"):
        alpha.fill_(float(options.alpha_init))
        return True
    return False
