"""Every difference between the transformers releases hybrid_vlm runs on, in one place, decided by probes.

Remote code freezes this file into every checkpoint published with `remote_code=True`, and such a checkpoint is
later loaded by transformers releases that did not exist when it was saved. So nothing here compares version
numbers: each decision asks the installed transformers whether it has the feature in question (a keyword in a
signature, a field of an output class, a class in a module) and the rest of the package asks this module. No other
module tests the transformers version or picks between cache keyword names; `tests/test_compat.py` enforces it.

This module imports only torch and transformers (it is part of the flat set of files remote code copies).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import transformers

if TYPE_CHECKING:
    from torch import nn

TRANSFORMERS_VERSION: str = transformers.__version__
"""For reports only (`hybrid-vlm env`, benchmark headers); nothing is decided by it."""

# Importing transformers' model, generation or processor machinery costs about as much as importing torch, and the
# configuration side (which imports this module) needs none of it. So every probe that needs that machinery runs on
# first use: `compat.NAME` and `from .compat import NAME` call `_PROBES[NAME]` once (module `__getattr__`), and code
# in this module calls the probe function itself.
_PROBES: dict[str, Callable[[], Any]] = {}


def _probe(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Declare the function that computes the module constant `name`; it runs once, on first use."""

    def declare(function: Callable[[], Any]) -> Callable[[], Any]:
        _PROBES[name] = cached = functools.cache(function)
        return cached

    return declare


def __getattr__(name: str) -> Any:
    probe = _PROBES.get(name)
    if probe is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = probe()
    return value

# ---------------------------------------------------------------------------------------------------------------------
# Cache naming. transformers <= 5.23 calls the cache `past_key_values` (`cache_params` for Mamba-style models); 5.24
# renamed both to `cache` in every output class, in what generate() passes to forward and in what it reads back.

CACHE_NAMES = ("cache", "past_key_values", "cache_params")
"""Every keyword a cache has travelled under, the newest first."""


def _first_cache_name(names: Iterable[str], default: str) -> str:
    names = set(names)
    return next((name for name in CACHE_NAMES if name in names), default)


@_probe("OUTPUT_CACHE_FIELD")
def _output_cache_field() -> str:
    """The field under which transformers' output classes (and ours) carry the cache."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return _first_cache_name((f.name for f in dataclasses.fields(BaseModelOutputWithPast)), "past_key_values")


@_probe("GENERATE_CACHE_NAME")
def _generate_cache_name() -> str:
    """The keyword generate() passes the cache to `prepare_inputs_for_generation` and `forward` under."""
    from transformers import GenerationMixin

    return _first_cache_name(inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters,
                             "past_key_values")


def cache_argument(function: Callable[..., Any], default: str | None = None) -> str | None:
    """The cache keyword `function` declares (`cache`, `past_key_values` or `cache_params`), else `default`.

    A callable that takes `**kwargs` would swallow a wrongly named cache silently, so the name is read off its
    signature (decorators that rename deprecated keywords keep `__wrapped__`, which `inspect` follows).
    """
    return _declared_cache_name(getattr(function, "__func__", function)) or default


@functools.lru_cache(maxsize=256)
def _declared_cache_name(function: Callable[..., Any]) -> str:
    """Read once per function (Vamba asks per layer and step): the signature does not change."""
    return _first_cache_name(inspect.signature(function).parameters, "")


def cache_kwargs(function: Callable[..., Any], cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the name `function` takes; TypeError when it takes none (the cache would be lost)."""
    name = cache_argument(function)
    if name is None:
        owner = getattr(function, "__qualname__", function)
        raise TypeError(f"{owner} takes no cache argument (none of {', '.join(CACHE_NAMES)}).")
    return {name: cache}


def take_cache(kwargs: dict[str, Any], **explicit: Any) -> Any:
    """Remove the cache from `kwargs` (under any of its names) and return it, merged with explicit parameters.

    `explicit` holds a function's own cache parameters (e.g. `past_key_values=past_key_values`). Two different names
    carrying a cache at once is ambiguous and raises TypeError; a cache never stays in `kwargs`, where it would be
    forwarded under a name the receiver ignores.
    """
    given = {name: value for name, value in explicit.items() if value is not None}
    for name in CACHE_NAMES:
        if name in kwargs:
            value = kwargs.pop(name)
            if value is not None:
                if name in given and given[name] is not value:
                    raise TypeError(f"the cache was passed twice as `{name}`.")
                given[name] = value
    if len(given) > 1:
        raise TypeError(
            f"got a cache under {' and '.join(f'`{n}`' for n in sorted(given))}; pass it once, under one name "
            f"(`{_generate_cache_name()}` on this transformers)."
        )
    return next(iter(given.values()), None)


def warn_if_old_cache_name(kwargs: dict[str, Any], **explicit: Any) -> None:
    """Where transformers has renamed the cache argument to `cache`, its models warn when a caller still passes
    an older name; ours do the same (`kwargs` and `explicit`: a forward's keyword arguments and cache parameters)."""
    if _generate_cache_name() != CACHE_NAMES[0]:
        return
    for name in CACHE_NAMES[1:]:
        if explicit.get(name) is not None or kwargs.get(name) is not None:
            warnings.warn(
                f"`{name}` is deprecated and will be removed in a future version of transformers; pass the cache as "
                f"`{CACHE_NAMES[0]}` instead.",
                FutureWarning,
                stacklevel=3,
            )


def output_cache(outputs: Any) -> Any:
    """The cache an output object carries, whatever its class calls the field (None when it has none)."""
    if outputs is None:
        return None
    fields = getattr(type(outputs), "__dataclass_fields__", None) or {}
    for name in CACHE_NAMES:
        if name in fields:
            return getattr(outputs, name)
    if isinstance(outputs, Mapping):
        return next((outputs[name] for name in CACHE_NAMES if name in outputs.keys()), None)
    return None


def cache_output_kwargs(cache: Any) -> dict[str, Any]:
    """`{field: cache}` for building a transformers (or our) output object on this transformers."""
    return {_output_cache_field(): cache}


def model_output(cls: type) -> type:
    """`@dataclass` for a `ModelOutput` subclass whose cache field is declared as `cache`: the field gets the name
    the installed transformers uses (generate() reads it back by that name)."""
    annotations = cls.__dict__.get("__annotations__", {})
    field = _output_cache_field()
    if "cache" in annotations and field != "cache":
        cls.__annotations__ = {(field if k == "cache" else k): v for k, v in annotations.items()}
        default = cls.__dict__.get("cache", None)
        if "cache" in cls.__dict__:
            delattr(cls, "cache")
        setattr(cls, field, default)
    return dataclasses.dataclass(cls)


# ---------------------------------------------------------------------------------------------------------------------
# Generation hooks.

@_probe("GENERATE_DROPS_VISUAL_INPUTS_AFTER_PREFILL")
def _generate_drops_visual_inputs_after_prefill() -> bool:
    """generate()'s own `prepare_inputs_for_generation` forwards `pixel_values` & co. only with the prefill (5.x);
    where it does not, ours decides (and creates the LM's own cache, see `legacy_cache_class`)."""
    from transformers.generation import utils as generation_utils

    return hasattr(generation_utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL")



def continuation_length(
    input_ids: torch.Tensor, past_length: int | None, attention_mask: torch.Tensor | None, kwargs: dict[str, Any]
) -> None:
    """Make generate() feed only the tokens a non-empty cache has not seen.

    generate() slices the prompt by the cache's length, but some releases skip that for caches whose layers are all
    recurrent (`is_linear`: they cannot tell their length), handing the whole conversation to the model again. Our
    caches always know their length, so where generate() left `next_sequence_length` unset at the first iteration
    and the prompt (and mask) cover more than the cache holds, it is set here, as generate() does for other caches.
    """
    if "next_sequence_length" not in kwargs or kwargs["next_sequence_length"] is not None:
        return
    if not kwargs.get("is_first_iteration", True) or not past_length:
        return
    length = input_ids.shape[1]
    if length > past_length and (attention_mask is None or attention_mask.shape[1] == length):
        kwargs["next_sequence_length"] = length - past_length


def prefill_of_an_empty_cache(past_length: int | None, kwargs: dict[str, Any]) -> None:
    """Treat a forward on a cache that holds nothing as the first iteration, so the visual inputs go with it.

    An assistant model's generate() runs its very first forward with `is_first_iteration=False` (assisted decoding
    calls it again for every candidate round), and generate()'s `prepare_inputs_for_generation` would drop
    `pixel_values` & co. from a prompt that still carries their placeholders.
    """
    if kwargs.get("is_first_iteration", True) is False and past_length == 0:
        kwargs["is_first_iteration"] = True


# model_type -> (module, class) of the language models whose modeling file defines its own cache class (transformers
# 4.x). Where the class is absent the standard `DynamicCache(config=...)` holds the SSM layers itself.
_OWN_CACHE_CLASSES = {
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


@functools.cache
def legacy_cache_class(model_type: str) -> type | None:
    """The LM's own cache class where its modeling module still defines one (transformers 4.x), else None."""
    entry = _OWN_CACHE_CLASSES.get(model_type)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    return getattr(module, entry[1], None)


def standard_cache_holds_ssm_state(model_type: str) -> bool:
    """Whether transformers' `DynamicCache(config=text_config)` is this LM's cache (SSM layers included)."""
    return legacy_cache_class(model_type) is None


def build_legacy_cache(
    cache_class: type, text_config: Any, batch_size: int, dtype: torch.dtype, device: torch.device
) -> Any:
    """Construct a transformers 4.x per-model cache; their constructors disagree on arguments.

    A fresh cache must report length 0. Some of these classes (4.x Jamba, Zamba, ...) start every attention layer's
    keys as an empty `(batch, 0)` tensor and report `shape[-2]`, the batch size, until the first update, so a prompt
    would look like a continuation; where the fresh cache says so, it is rebuilt with `_EmptyKeysHaveNoLength`.
    """
    cache = _construct_legacy_cache(cache_class, text_config, batch_size, dtype, device)
    if cache.get_seq_length() != 0 and hasattr(cache, "key_cache"):
        cache = _construct_legacy_cache(_empty_keys_have_no_length(cache_class), text_config, batch_size, dtype, device)
    return cache


def _construct_legacy_cache(
    cache_class: type, text_config: Any, batch_size: int, dtype: torch.dtype, device: torch.device
) -> Any:
    if text_config.model_type in ("mamba", "falcon_mamba"):
        return cache_class(text_config, max_batch_size=batch_size, dtype=dtype, device=device)
    if text_config.model_type == "falcon_h1":
        return cache_class(text_config, batch_size, dtype, devices=[device] * text_config.num_hidden_layers)
    return cache_class(text_config, batch_size, dtype=dtype, device=device)


class _EmptyKeysHaveNoLength:
    """Mixin: the length of a layer whose keys hold no elements is 0 (not the batch size of its empty tensor)."""

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        attention_layers = list(getattr(self, "transformer_layers", None) or [])
        if layer_idx not in attention_layers and attention_layers:
            layer_idx = attention_layers[0]
        keys = self.key_cache
        if layer_idx is not None and layer_idx < len(keys) and keys[layer_idx].numel() == 0:
            return 0
        return super().get_seq_length(layer_idx)


@functools.cache
def _empty_keys_have_no_length(cache_class: type) -> type:
    return type(cache_class.__name__, (_EmptyKeysHaveNoLength, cache_class), {})


def new_standard_cache(text_config: Any, cache_class: type | None = None) -> Any:
    """A standard cache (`DynamicCache` unless told) built from the LM's config (its `layer_types` decide which
    layers hold SSM state)."""
    if cache_class is None:
        from transformers import DynamicCache as cache_class
    return cache_class(config=text_config)


def _recurrent_state_slots(cache: Any) -> list[tuple[Any, Any, int]]:
    """(holder, key, batch dim) of every recurrent-state tensor a cache holds: the `conv_states` / `recurrent_states`
    dicts of the standard cache's linear-attention layers (5.x), or the per-model caches' `conv_states` /
    `ssm_states` (4.x): per-layer lists, or one `(layers, batch, ...)` tensor (4.x Mamba-2)."""
    slots: list[tuple[Any, Any, int]] = []
    for layer in getattr(cache, "layers", None) or []:
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if isinstance(states, dict):
                slots += [(states, key, 0) for key, value in states.items() if isinstance(value, torch.Tensor)]
    for name in ("conv_states", "ssm_states"):
        states = getattr(cache, name, None)
        if isinstance(states, torch.Tensor):
            slots.append((cache, name, 1))
        elif isinstance(states, list):
            slots += [(states, index, 0) for index, value in enumerate(states) if isinstance(value, torch.Tensor)]
    return slots


def _slot_value(holder: Any, key: Any) -> Any:
    return getattr(holder, key) if isinstance(key, str) and not isinstance(holder, dict) else holder[key]


def snapshot_recurrent_states(cache: Any) -> list[tuple[Any, Any, int, torch.Tensor]]:
    """Copies of a cache's recurrent states, for `restore_recurrent_states`."""
    return [(holder, key, dim, _slot_value(holder, key).clone()) for holder, key, dim in _recurrent_state_slots(cache)]


def restore_recurrent_states(snapshot: list[tuple[Any, Any, int, torch.Tensor]], rows: torch.Tensor) -> None:
    """Put the snapshot's states back, in place, for the batch rows `rows` (a bool mask) only."""
    for holder, key, dim, saved in snapshot:
        current = _slot_value(holder, key)
        if not isinstance(current, torch.Tensor) or current.shape != saved.shape:
            continue
        index = rows.to(current.device).nonzero().squeeze(-1)
        current.index_copy_(dim, index, saved.index_select(dim, index.to(saved.device)).to(current.dtype))


def legacy_cache_position(
    text_config: Any, past_length: int, new_tokens: int, cache_position: torch.Tensor | None, device: torch.device
) -> torch.LongTensor | None:
    """`cache_position` for LMs with their own cache class (4.x), which read it; None for the others.

    4.x Mamba-1 expects the conv window's positions at prefill.
    """
    if legacy_cache_class(text_config.model_type) is None:
        return None
    if past_length == 0 and text_config.model_type in ("mamba", "falcon_mamba"):
        return torch.arange(text_config.conv_kernel, device=device)
    if cache_position is not None:
        return cache_position
    return torch.arange(past_length, past_length + new_tokens, device=device)


# ---------------------------------------------------------------------------------------------------------------------
# Model class attributes.

@_probe("TIED_WEIGHTS_AS_MAPPING")
def _tied_weights_as_mapping() -> bool:
    """`_tied_weights_keys` maps target -> source (5.x) rather than listing the tied targets (4.x)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "get_expanded_tied_weights_keys")


@_probe("LM_HEAD_TP_STYLE")
def _lm_head_tp_style() -> str:
    """The tensor-parallel style transformers' own causal LMs give their `lm_head` (`colwise_gather_output` on 5.x,
    `colwise_rep` where that style does not exist)."""
    from transformers import LlamaForCausalLM

    return dict(getattr(LlamaForCausalLM, "_tp_plan", None) or {}).get("lm_head", "colwise_rep")


@_probe("EMBEDDING_TP_STYLE")
def _embedding_tp_style() -> str | None:
    """How a tied embedding is sharded when the head it shares a weight with is: the style transformers shards an
    input embedding with (by vocabulary rows), None where the line has no such style."""
    for module in ("transformers.distributed.mixin", "transformers.integrations.tensor_parallel"):
        try:
            styles = importlib.import_module(module).ALL_PARALLEL_STYLES
            return "embedding_rowwise" if "embedding_rowwise" in styles else None
        except (ImportError, AttributeError, TypeError):
            continue
    return None


def tied_weights_keys(mapping: Mapping[str, str]) -> dict[str, str] | list[str]:
    """`_tied_weights_keys` in the form the installed transformers reads."""
    return dict(mapping) if _tied_weights_as_mapping() else list(mapping)


def revert_weight_conversion(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict under its on-disk names: transformers that fuse weights in memory (MoE experts) save them
    unfused; where there is no such conversion the state is returned as it is."""
    try:
        from transformers.core_model_loading import revert_weight_conversion as revert
    except ImportError:
        return state
    return revert(model, state)


def merged_vision_features(output: Any) -> torch.Tensor:
    """The merged patch features of Qwen2-VL's vision model: the output itself (4.x) or its `pooler_output` (5.x,
    a `BaseModelOutputWithPooling`)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def disable_unusable_mixer_kernels(language_model: nn.Module) -> bool:
    """Switch the LM's SSM mixers that carry a `use_fast_kernels` flag (transformers 4.x Jamba) to their torch path;
    such a mixer raises when the flag is set and the kernels cannot run. Returns whether any was switched."""
    switched = False
    for module in language_model.modules():
        if getattr(module, "use_fast_kernels", False):
            module.use_fast_kernels = False
            switched = True
    return switched


def _cast_to_weight_dtype(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    hidden = args[0] if args else None
    weight = getattr(module, "weight", None)
    if isinstance(hidden, torch.Tensor) and weight is not None and hidden.dtype != weight.dtype:
        return (hidden.to(weight.dtype), *args[1:])
    return None


def cast_mixer_outputs_to_projection_dtype(language_model: nn.Module) -> int:
    """Let transformers' SSM mixers run in a half model whose SSM parameters are kept in fp32.

    4.x Jamba's mixer feeds its scan output, which the fp32 `D` makes fp32, straight into the half `out_proj` and
    raises; 5.x casts it back itself. A pre-hook casts `out_proj`'s input to its weight dtype (a no-op wherever the
    dtypes already agree, so it is registered on every mixer that has an `out_proj`). Returns how many were hooked.
    """
    hooked = 0
    for module in language_model.modules():
        projection = getattr(module, "out_proj", None)
        owns_ssm_state = "A_log" in dict(module.named_parameters(recurse=False))
        linear = isinstance(getattr(projection, "weight", None), torch.Tensor)
        if owns_ssm_state and linear and not getattr(projection, "_hybrid_vlm_casts", False):
            projection.register_forward_pre_hook(_cast_to_weight_dtype)
            projection._hybrid_vlm_casts = True
            hooked += 1
    return hooked


@_probe("FEATURE_GETTERS_RETURN_MODEL_OUTPUT")
def _feature_getters_return_model_output() -> bool:
    """transformers' VLMs answer `get_image_features` / `get_video_features` with a `BaseModelOutputWithPooling`
    whose `pooler_output` holds the projected features (5.x), rather than with the features themselves (4.x)."""
    from transformers.models.llava.modeling_llava import LlavaModel

    return "BaseModelOutputWithPooling" in str(inspect.signature(LlavaModel.get_image_features).return_annotation)


def projected_features(output: Any) -> Any:
    """The projected visual features of a `get_image_features` / `get_video_features` answer, on either line."""
    if isinstance(output, tuple) and _feature_getters_return_model_output():
        return output[1]  # (last_hidden_state, pooler_output, ...)
    return getattr(output, "pooler_output", output)


# ---------------------------------------------------------------------------------------------------------------------
# SSM mixers of transformers' LMs (what `ssm_engine` needs to run in their place). 5.x mixers take
# `(hidden_states, cache, attention_mask, **kwargs)` and keep their states in `LinearAttentionLayer`s of the standard
# cache (`get_conv_state` / `update_conv_state` / ...); 4.x mixers take `cache_params` (and some `cache_position`) and
# keep `conv_states` / `ssm_states` tensors on per-model cache classes, with "has a previous state" told by a
# `has_previous_state` flag, by `cache_position[0] > 0`, or both.


@dataclasses.dataclass
class MixerCall:
    """What a transformers SSM mixer's forward was called with, whatever the line names it."""

    cache: Any
    attention_mask: torch.Tensor | None
    cache_position: torch.Tensor | None
    packed_sequences: bool  # seq_idx / cu_seqlens given: only transformers' kernels keep packed sequences apart


@functools.lru_cache(maxsize=64)
def _mixer_signature(function: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(function)


def mixer_call(forward: Callable[..., Any], module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> MixerCall:
    """Read a mixer call `forward(module, *args, **kwargs)` (`forward` the class's own, unbound)."""
    bound = _mixer_signature(forward).bind(module, *args, **kwargs)
    values = dict(bound.arguments)
    for name, parameter in _mixer_signature(forward).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            values.update(values.pop(name, {}))
    cache = next((values[name] for name in CACHE_NAMES if values.get(name) is not None), None)
    packed = any(values.get(name) is not None for name in ("seq_idx", "cu_seqlens"))
    return MixerCall(cache, values.get("attention_mask"), values.get("cache_position"), packed)


def mixer_dt_limits(mixer: nn.Module) -> tuple[float, float]:
    """The range a Mamba-2 mixer's torch path clamps `softplus(dt + dt_bias)` to.

    `time_step_limit` everywhere, except 4.x Zamba2, whose torch path (`torch_forward`) clamps at `time_step_min`
    from below only, whatever its `time_step_limit` says (its kernel path reads the limit).
    """
    if type(mixer).__name__ == "Zamba2MambaMixer" and hasattr(type(mixer), "torch_forward"):
        return float(mixer.time_step_min), float("inf")
    limit = getattr(mixer, "time_step_limit", None)
    return (0.0, float("inf")) if limit is None else (float(limit[0]), float(limit[1]))


@_probe("CACHE_HAS_LINEAR_ATTENTION_LAYERS")
def _cache_has_linear_attention_layers() -> bool:
    from transformers import DynamicCache

    return hasattr(DynamicCache, "get_conv_state")
"""The standard cache holds the SSM layers' states itself (5.x) rather than per-model cache classes (4.x)."""


def read_mixer_state(
    cache: Any, layer_idx: int, cache_position: torch.Tensor | None, batch_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(conv state, SSM state) a mixer continues from, or Nones when the cache holds no previous state for it.

    The conv state comes as stored: a 5.x cache that records its past (for `crop`) keeps more than the conv width.
    """
    if hasattr(cache, "get_conv_state"):
        return cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)
    flag = getattr(cache, "has_previous_state", None)
    if flag is not None and not flag:
        return None, None
    if cache_position is not None:
        if int(cache_position[0]) == 0:
            return None, None
    elif flag is None:
        return None, None
    conv, ssm = cache.conv_states[layer_idx], cache.ssm_states[layer_idx]
    if conv.dim() < 3 or conv.shape[0] != batch_size or ssm.shape[0] != batch_size:
        return None, None  # (4.x Jamba ignores a cache of another batch size too)
    return conv, ssm


def cache_records_past(cache: Any, layer_idx: int) -> bool:
    """Whether the cache keeps every conv input so it can be cropped (5.x assisted decoding)."""
    recording = getattr(cache, "is_recording_past", None)
    return bool(recording(layer_idx)) if recording is not None else False


def write_mixer_state(
    cache: Any,
    layer_idx: int,
    conv_window: torch.Tensor,
    conv_inputs: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_kernel_size: int,
) -> None:
    """Store a mixer's states after a forward, as transformers' own path stores them.

    conv_window: the last `conv_kernel_size` conv inputs (what a cache keeps); conv_inputs: this call's conv inputs,
    which a 5.x cache recording its past appends instead.
    """
    if hasattr(cache, "update_conv_state") and hasattr(cache, "get_conv_state"):
        recording = cache_records_past(cache, layer_idx)
        cache.update_conv_state(
            conv_inputs if recording else conv_window, layer_idx, conv_kernel_size=conv_kernel_size
        )
        cache.update_recurrent_state(ssm_state, layer_idx)
        return
    for states, new in ((cache.conv_states, conv_window), (cache.ssm_states, ssm_state)):
        if isinstance(states, torch.Tensor):  # one stacked tensor for all layers (4.x Mamba-2)
            states[layer_idx] = new
        else:  # a list: replaced, as 4.x Jamba does (an in-place copy would drag the cache into autograd)
            states[layer_idx] = new


# ---------------------------------------------------------------------------------------------------------------------
# Auto classes.

@_probe("AUTO_MODEL_FOR_VISION2SEQ")
def _auto_model_for_vision2seq() -> Any:
    """`AutoModelForVision2Seq` where it exists (removed in transformers 5): a separate mapping from
    ImageTextToText."""
    return getattr(transformers, "AutoModelForVision2Seq", None)


def auto_model_for_image_text_to_text() -> Any:
    """The Auto class for VLMs with a text head: ImageTextToText, or Vision2Seq where that is all there is."""
    return getattr(transformers, "AutoModelForImageTextToText", None) or _auto_model_for_vision2seq()


# ---------------------------------------------------------------------------------------------------------------------
# Processors and tokenizers.

@_probe("PROCESSOR_ATTRIBUTES_FROM_SIGNATURE")
def _processor_attributes_from_signature() -> bool:
    """ProcessorMixin finds sub-processors from `__init__`'s parameters (5.x) rather than from `attributes` and
    `*_class` attributes (4.x)."""
    from transformers import ProcessorMixin

    return hasattr(ProcessorMixin, "get_attributes")


@_probe("CHAT_TEMPLATE_TAKES_PROCESSOR_KWARGS")
def _chat_template_takes_processor_kwargs() -> bool:
    """`ProcessorMixin.apply_chat_template` routes `processor_kwargs` to `__call__` (5.x). Its predecessor (4.x)
    also assumed list-of-blocks message contents when tokenizing, so strings are turned into text blocks there."""
    from transformers import ProcessorMixin

    return "processor_kwargs" in inspect.signature(ProcessorMixin.apply_chat_template).parameters


@_probe("MERGE_KWARGS_KEEPS_FLAT_BESIDE_NESTED")
def _merge_keeps_flat_beside_nested() -> bool:
    """Whether `ProcessorMixin._merge_kwargs` still routes a flat keyword when a nested per-modality dict is given too
    (5.x); 4.x then takes the nested dicts only and drops every flat keyword silently."""
    from transformers import ProcessorMixin
    from transformers.processing_utils import ProcessingKwargs

    probe = object.__new__(ProcessorMixin)  # _merge_kwargs reads no processor state without tokenizer kwargs
    merged = probe._merge_kwargs(ProcessingKwargs, text_kwargs={"padding": True}, max_length=3)
    return merged["text_kwargs"].get("max_length") == 3


def merge_processor_kwargs(processor: Any, kwargs_class: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """transformers' `processor._merge_kwargs(kwargs_class, **kwargs)`, with flat keywords beside nested dicts routed
    on every line: where `_merge_kwargs` would drop them, each goes into the nested dict of every modality declaring
    it first (a value given nested wins, as in transformers)."""
    modalities = {
        name: set(getattr(typed, "__annotations__", {}))
        for name, typed in kwargs_class.__annotations__.items()
        if name.endswith("_kwargs")
    }
    if _merge_keeps_flat_beside_nested() or not any(name in kwargs for name in modalities):
        return processor._merge_kwargs(kwargs_class, **kwargs)
    nested = {name: dict(kwargs.pop(name) or {}) for name in list(kwargs) if name in modalities}
    for key in list(kwargs):
        targets = [name for name, keys in modalities.items() if key in keys]
        for name in targets:
            nested.setdefault(name, {}).setdefault(key, kwargs[key])
        if targets:
            del kwargs[key]
    if kwargs:
        warnings.warn(f"Ignoring keyword argument(s) {sorted(kwargs)}: not valid for this processor.", stacklevel=3)
    return processor._merge_kwargs(kwargs_class, **nested)


def record_processor_class(image_processor: Any, processor_class: str) -> None:
    """Record the owning processor's class in an image processor's saved JSON where transformers does so (4.x has
    `_set_processor_class`; 5.x nests sub-processors in processor_config.json instead)."""
    setter = getattr(image_processor, "_set_processor_class", None)
    if setter is not None:
        setter(processor_class)


def processor_attribute_names(cls: type) -> list[str]:
    """A processor class's sub-processor attribute names, in `__init__` order."""
    return list(cls.get_attributes()) if _processor_attributes_from_signature() else list(cls.attributes)


def processor_view_with_attributes(cls: type, names: list[str]) -> type:
    """A subclass of `cls` whose sub-processors are only `names` (so the parent's loader skips the others)."""
    if _processor_attributes_from_signature():
        namespace: dict[str, Any] = {"get_attributes": classmethod(lambda view: list(names))}
    else:
        namespace = {"attributes": list(names)}
    return type(f"_{cls.__name__}View", (cls,), namespace)


@_probe("VIDEO_PROCESSOR_BASE")
def _video_processor_base() -> type:
    """The torchvision-free base every video processor derives from, where there is one (5.x); on 4.x
    BaseVideoProcessor is a torchvision "fast" processor and the plain image base works."""
    try:
        from transformers.video_processing_utils import VideoProcessorMixin
    except ImportError:
        from transformers.image_processing_utils import BaseImageProcessor as VideoProcessorMixin
    return VideoProcessorMixin


@_probe("UNNAMED_EXTRAS_KEY")
def _unnamed_extras_key() -> str:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    named = getattr(PreTrainedTokenizerBase, "SPECIAL_TOKENS_ATTRIBUTES", ())
    return "additional_special_tokens" if "additional_special_tokens" in named else "extra_special_tokens"


def special_tokens_kwargs(extra: list[str], named: Mapping[str, str]) -> dict[str, Any]:
    """Tokenizer constructor keywords for unnamed extra special tokens plus named ones (`image_token=...`).

    Where `additional_special_tokens` is a standard attribute (4.x) it takes the list and `extra_special_tokens` the
    named ones; otherwise (5.x) a list under `extra_special_tokens` is unnamed and every `*_token` keyword is named.
    """
    if _unnamed_extras_key() == "additional_special_tokens":
        return {"additional_special_tokens": list(extra), "extra_special_tokens": dict(named)}
    return {"extra_special_tokens": list(extra), **named}


# ---------------------------------------------------------------------------------------------------------------------
# Config files.


def decode_special_floats(value: Any) -> Any:
    """Some transformers releases write inf/nan in config.json as {"__float__": "Infinity"}; others cannot read that
    back. Decoded everywhere (a no-op for plain JSON)."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: decode_special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_special_floats(v) for v in value]
    return value


@_probe("CONFIGS_TAKE_ROPE_PARAMETERS")
def _configs_take_rope_parameters() -> bool:
    """5.x keeps a config's rotary settings in `rope_parameters` (rope_theta inside it); 4.x configs take
    `rope_theta` and `rope_scaling` and would keep a 5.x-saved `rope_parameters` as an unused attribute (rope_theta
    back at its default)."""
    from transformers.models.llama.configuration_llama import LlamaConfig

    return "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters


def portable_rope_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """A text-config dict the installed line reads with the rotary settings it was saved with: on a line without
    `rope_parameters`, a 5.x-saved `rope_parameters` becomes `rope_theta` (+ `partial_rotary_factor`) and, when it is
    more than the default rope, `rope_scaling`. Unchanged where the line takes `rope_parameters` (it reads both)."""
    values = dict(values)
    rope = values.get("rope_parameters")
    if _configs_take_rope_parameters() or not isinstance(rope, Mapping):
        return values
    rope = dict(values.pop("rope_parameters"))
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in rope:
            value = rope.pop(key)
            values.setdefault(key, value)
    beyond_default = rope.get("rope_type", "default") != "default" or bool(set(rope) - {"rope_type"})
    if values.get("rope_scaling") is None and beyond_default:
        values["rope_scaling"] = rope
    return values


def feature_report() -> list[tuple[str, str]]:
    """What each probe found on the installed transformers (printed by `hybrid-vlm env`)."""
    return [
        ("transformers", TRANSFORMERS_VERSION),
        ("cache keyword (generate)", _generate_cache_name()),
        ("cache field (outputs)", _output_cache_field()),
        ("generate drops visual inputs after prefill", str(_generate_drops_visual_inputs_after_prefill())),
        ("per-model SSM cache classes", str(legacy_cache_class("jamba") is not None)),
        ("tied weights as mapping", str(_tied_weights_as_mapping())),
        ("lm_head tensor-parallel style", _lm_head_tp_style()),
        ("feature getters return model outputs", str(_feature_getters_return_model_output())),
        ("processor attributes from signature", str(_processor_attributes_from_signature())),
        ("AutoModelForVision2Seq", str(_auto_model_for_vision2seq() is not None)),
        ("unnamed extra special tokens key", _unnamed_extras_key()),
        ("configs take rope_parameters", str(_configs_take_rope_parameters())),
        ("standard cache holds SSM layers", str(_cache_has_linear_attention_layers())),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Log messages.

KERNEL_FALLBACK_MESSAGES = (
    "is falling back to its reference PyTorch implementation because",  # 5.x: integrations/hub_kernels.py, per kernel
    "The fast path is not available because one of",  # 4.x: Mamba / Mamba-2 / Jamba mixers
)
"""Parts of the lines transformers logs when an SSM kernel package is missing (`kernels.KernelFallbackFilter` says it
once instead). Text matches, not version checks: a line that changes wording simply shows again."""
