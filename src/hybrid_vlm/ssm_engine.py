"""`hybrid_vlm.ssm`'s torch paths under the SSM layers of transformers' language models.

Without the mamba-ssm CUDA kernels (CPU, Apple MPS, ROCm, a failed CUDA build) transformers runs its reference
PyTorch path in its SSM mixers: for Mamba-1 (Mamba, Jamba) a Python loop over the tokens. The mixers of a HybridVLM's
language model get a forward that runs this package's vectorised paths instead (Mamba-1: the blocked scan; Mamba-2:
the chunked "SSD" form), on the mixer's own parameters (no copies: the state dict is unchanged), with

* padding masked (each row's real tokens packed to the front; padded steps neither decay nor update the state),
* the cache's states as the initial state, so a multi-token forward continues a cached sequence exactly,
* the cache's conv and SSM states written as transformers' own path writes them.

Only the instances inside our model are touched (transformers' classes are not patched). Where the kernels run
(`ssm.lm_layer_path` decides) the mixer keeps transformers' path. Decode steps run here too: transformers' 5.x
recurrent step skips `time_step_limit`, and a 2-D mask not cut to the new token breaks its Mamba-1 step. Switch it
off with the config's ``ssm_engine=False`` or the environment variable ``HYBRID_VLM_SSM_ENGINE=0``;
`hybrid-vlm env` says which path every layer runs.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .compat import mixer_call, mixer_dt_limits, read_mixer_state, write_mixer_state
from .model_types import ENGINE_MODEL_TYPES, engine_mixer_kinds
from .ssm import (
    ENGINE_ATTRIBUTE,
    _compute_dtype,
    _Packing,
    causal_conv,
    conv_window,
    lm_layer_path,
    selective_scan_blocked,
    ssd_chunked_scan,
)

__all__ = [
    "ENGINE_MODEL_TYPES",
    "ENGINE_MIXER_KINDS",
    "engine_path",
    "engine_serves_every_ssm_layer",
    "install_ssm_engine",
    "set_ssm_engine",
]

# transformers' mixer class -> scan, for the mixers the engine runs (all of them share these attribute names); the
# language models whose every recurrent layer is one of them are `ENGINE_MODEL_TYPES` (both: `model_types` rows).
ENGINE_MIXER_KINDS = engine_mixer_kinds()


def mixer_kind(module: nn.Module) -> str | None:
    """"mamba1" / "mamba2" for a transformers mixer the engine can run, else None."""
    cls = type(module)
    return ENGINE_MIXER_KINDS.get(cls.__name__) if cls.__module__.startswith("transformers.") else None


def install_ssm_engine(language_model: nn.Module, enabled: bool = True) -> int:
    """Give every supported mixer of `language_model` the engine's forward; returns how many. Idempotent."""
    count = 0
    for module in language_model.modules():
        if mixer_kind(module) is None:
            continue
        if not isinstance(module.__dict__.get("forward"), types.MethodType):
            module.forward = types.MethodType(_engine_forward, module)
        setattr(module, ENGINE_ATTRIBUTE, enabled)
        count += 1
    return count


def set_ssm_engine(model: nn.Module, enabled: bool) -> int:
    """Switch the engine on or off for every mixer of `model` (which must have it installed); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, ENGINE_ATTRIBUTE):
            setattr(module, ENGINE_ATTRIBUTE, bool(enabled))
            count += 1
    return count


def engine_path(module: nn.Module, device: torch.device | None = None) -> tuple[str, str] | None:
    """(path, reason) the mixer takes on `device` (`ssm.lm_layer_path`), or None when the engine is not installed."""
    if mixer_kind(module) is None or not hasattr(module, ENGINE_ATTRIBUTE):
        return None
    return lm_layer_path(module, device)


def engine_serves_every_ssm_layer(language_model: nn.Module, model_type: str) -> bool:
    """Whether every recurrent layer of the LM runs the engine now: then a multi-token forward continues a cache."""
    if model_type not in ENGINE_MODEL_TYPES:
        return False
    found = False
    for module in language_model.modules():
        if mixer_kind(module) is not None:
            path = engine_path(module)
            if path is None or path[0] != "engine":
                return False
            found = True
    return found


# ---------------------------------------------------------------------------------------------------------------
# The forward
# ---------------------------------------------------------------------------------------------------------------


def _engine_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The mixer's forward: the engine where it serves, transformers' own forward (the class's) elsewhere."""
    transformers_forward = type(self).forward
    kind = mixer_kind(self)
    path, _ = lm_layer_path(self, hidden_states.device)
    if path != "engine":
        return transformers_forward(self, hidden_states, *args, **kwargs)
    call = mixer_call(transformers_forward, self, (hidden_states, *args), kwargs)
    mask = call.attention_mask
    if call.packed_sequences or (mask is not None and mask.dim() != 2):
        return transformers_forward(self, hidden_states, *args, **kwargs)
    batch, length = hidden_states.shape[:2]
    if mask is not None:
        mask = mask[:, -length:]
        if bool(mask.all()):
            mask = None
    conv_state = ssm_state = None
    if call.cache is not None:
        conv_state, ssm_state = read_mixer_state(call.cache, self.layer_idx, call.cache_position, batch)
    run = _mamba1 if kind == "mamba1" else _mamba2
    return run(self, hidden_states, mask, call.cache, conv_state, ssm_state)


def _store_states(
    mixer: nn.Module,
    cache: Any,
    conv_inputs: torch.Tensor,
    conv_state: torch.Tensor | None,
    packing: _Packing | None,
    final_state: torch.Tensor,
) -> None:
    """Write the conv window after each row's last real token and the final SSM state into the cache."""
    width = mixer.conv_kernel_size
    window = conv_window(conv_inputs, conv_state, packing.lengths if packing else None, width)
    raw_inputs = conv_inputs  # what a cache that records its past appends: the inputs at their own positions
    if packing is not None:
        raw_inputs = packing.unpack(conv_inputs.transpose(1, 2)).transpose(1, 2)
    write_mixer_state(cache, mixer.layer_idx, window, raw_inputs, final_state, width)


def _mamba1(
    mixer: nn.Module,
    hidden_states: torch.Tensor,
    mask: torch.Tensor | None,
    cache: Any,
    conv_state: torch.Tensor | None,
    ssm_state: torch.Tensor | None,
) -> torch.Tensor:
    """Mamba-1 (transformers' MambaMixer, and JambaMambaMixer with its dt/B/C RMSNorms)."""
    dtype = hidden_states.dtype
    packing = _Packing(mask) if mask is not None else None
    projected = mixer.in_proj(packing.pack(hidden_states) if packing else hidden_states).transpose(1, 2)
    x, gate = projected.chunk(2, dim=1)  # (b, d_inner, l) each
    conv_inputs = x
    x = mixer.act(causal_conv(x, mixer.conv1d.weight, mixer.conv1d.bias, conv_state)).to(dtype).transpose(1, 2)
    rank, d_state = mixer.time_step_rank, mixer.ssm_state_size
    time_step, B, C = mixer.x_proj(x).split([rank, d_state, d_state], dim=-1)
    if hasattr(mixer, "dt_layernorm"):  # Jamba
        time_step, B, C = mixer.dt_layernorm(time_step), mixer.b_layernorm(B), mixer.c_layernorm(C)

    compute = _compute_dtype(dtype)
    delta = F.linear(time_step, mixer.dt_proj.weight).to(compute)
    if mixer.dt_proj.bias is not None:
        delta = delta + mixer.dt_proj.bias.to(compute)
    delta = F.softplus(delta)
    if packing is not None:  # padded steps: no decay, no update
        delta = delta.masked_fill(~packing.real[..., None], 0.0)
    A = -torch.exp(mixer.A_log.to(compute))
    initial = ssm_state.to(compute) if ssm_state is not None else None
    x_c = x.to(compute)
    y, final = selective_scan_blocked(x_c, delta, A, B.to(compute), C.to(compute), initial)
    y = (y + x_c * mixer.D.to(compute)) * mixer.act(gate.transpose(1, 2).to(compute))
    out = mixer.out_proj(y.to(dtype))
    if cache is not None:
        _store_states(mixer, cache, conv_inputs, conv_state, packing, final)
    return packing.unpack(out) if packing is not None else out


def _mamba2(
    mixer: nn.Module,
    hidden_states: torch.Tensor,
    mask: torch.Tensor | None,
    cache: Any,
    conv_state: torch.Tensor | None,
    ssm_state: torch.Tensor | None,
) -> torch.Tensor:
    """Mamba-2 (Mamba2, Bamba, Zamba2, NemotronH, FalconH1: groups, gated RMSNorm or none, muP multipliers)."""
    dtype = hidden_states.dtype
    packing = _Packing(mask) if mask is not None else None
    inputs = packing.pack(hidden_states) if packing else hidden_states
    in_multiplier = getattr(mixer, "ssm_in_multiplier", None)  # FalconH1
    if in_multiplier is not None:
        inputs = inputs * in_multiplier
    projected = mixer.in_proj(inputs)
    mup_vector = getattr(mixer, "mup_vector", None)  # FalconH1
    if mup_vector is not None:
        projected = projected * mup_vector
    d_inner, conv_dim, heads = mixer.intermediate_size, mixer.conv_dim, mixer.num_heads
    # (some 4.x in_proj lead with two unused MLP parts of equal width: the last three parts are the mixer's)
    gate, xBC, dt = projected[..., projected.shape[-1] - d_inner - conv_dim - heads :].split(
        [d_inner, conv_dim, heads], dim=-1
    )
    conv_inputs = xBC.transpose(1, 2)
    xBC = mixer.act(causal_conv(conv_inputs, mixer.conv1d.weight, mixer.conv1d.bias, conv_state)).to(dtype)
    group_state = mixer.n_groups * mixer.ssm_state_size
    x, B, C = xBC.transpose(1, 2).split([d_inner, group_state, group_state], dim=-1)

    compute = _compute_dtype(dtype)
    dt = F.softplus(dt.to(compute) + mixer.dt_bias.to(compute))
    low, high = mixer_dt_limits(mixer)
    if (low, high) != (0.0, float("inf")):
        dt = dt.clamp(min=low, max=high)
    if packing is not None:  # after the clamp: padded steps neither decay nor update
        dt = dt.masked_fill(~packing.real[..., None], 0.0)
    A = -torch.exp(mixer.A_log.to(compute))
    x = x.to(compute).unflatten(-1, (heads, mixer.head_dim))
    B = B.to(compute).unflatten(-1, (mixer.n_groups, mixer.ssm_state_size))
    C = C.to(compute).unflatten(-1, (mixer.n_groups, mixer.ssm_state_size))
    initial = ssm_state.to(compute) if ssm_state is not None else None
    y, final = ssd_chunked_scan(x, dt, A, B, C, mixer.chunk_size, initial)
    y = (y + x * mixer.D.to(compute)[:, None]).flatten(-2)
    if getattr(mixer, "mamba_rms_norm", True):
        y = mixer.norm(y, gate)
    else:  # FalconH1 without its gated norm
        y = y * F.silu(gate.to(compute))
    out = mixer.out_proj(y.to(dtype))
    if cache is not None:
        _store_states(mixer, cache, conv_inputs, conv_state, packing, final)
    return packing.unpack(out) if packing is not None else out
