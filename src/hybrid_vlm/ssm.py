"""Selective state-space mixers (Mamba-2 and Mamba-1), shared by every family that needs one.

Vamba runs a Mamba-2 block over the visual token stream in each decoder layer (`vision_mixer.norm.weight`,
`vision_mixer.mixer.*`); its paper ablates Mamba-1 there. MambaVLM's projector runs its four cross-scan sequences
through an SSM. Both use the classes here, so there is one implementation to make fast and correct.

Three compute paths exist, chosen automatically and reported once in the log:

* ``"kernels"``: mamba-ssm's ``mamba_chunk_scan_combined`` / ``selective_scan_fn`` and causal-conv1d's
  ``causal_conv1d_fn``, used only when they import *and* the tensors are on CUDA (imported lazily, every import
  guarded: they are CUDA source builds that may be missing or broken).
* ``"torch"``: pure PyTorch, vectorised. Mamba-2 uses the chunked matmul ("SSD") form; Mamba-1 a two-level
  chunked scan. Correct on CPU; built from batched matmuls and few kernel launches for GPUs; memory bounded by
  working in passes.
* ``"reference"``: the plain sequential recurrence (:func:`reference_scan`, :func:`reference_selective_scan`).
  Ground truth for the tests, never chosen automatically.

Padding (``attention_mask`` 0) never reaches the state or a real output: the real tokens of each row are moved to
the front (a stable gather, so left, right or any padding becomes trailing padding, which the causal conv of real
tokens never sees), padded steps get ``dt = 0`` (no decay, no update) and zero inputs, the final conv state is
gathered at each row's last real token, and outputs at padded positions are zero. Batched results therefore equal
one-by-one results, and the returned state is the one after each row's last real token.

dtype: ``A_log``, ``D``, ``dt_bias`` (Mamba-1: ``dt_proj.bias``), the scan and the norms run in fp32 (fp64 if the
module is fp64), whatever the module dtype; outputs come back in the input dtype. The parameters named in
:data:`SSM_FP32_PARAMETERS` are also *stored* in fp32: module casts (``.to(bf16)``, ``.half()``) leave them in fp32
(set ``keep_fp32_parameters = False`` on a mixer, or on the class, to turn that guard off, e.g. for sharding
schemes that need one dtype per module). Checkpoint loaders that replace parameters wholesale should list these
names in ``_keep_in_fp32_modules``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.utils import logging

from .model_types import SSM_MIXER_CLASSES

logger = logging.get_logger(__name__)

__all__ = [
    "COMPUTE_PATHS",
    "SSM_FP32_PARAMETERS",
    "Mamba1Mixer",
    "Mamba2Mixer",
    "Mamba2RMSNormGated",
    "RMSNorm",
    "SSMBlock",
    "SSMState",
    "ENGINE_ENV_VAR",
    "KERNEL_PACKAGES",
    "LM_MIXER_PATHS",
    "causal_conv",
    "conv_window",
    "installed_kernels",
    "is_ssm_mixer",
    "kernels_available",
    "lm_layer_path",
    "lm_mixer_kind",
    "lm_mixer_path",
    "mamba_kernels_usable",
    "mixer_path",
    "reference_scan",
    "reference_selective_scan",
    "selective_scan_blocked",
    "ssd_chunked_scan",
]

SSM_FP32_PARAMETERS = ("A_log", "D", "dt_bias")
COMPUTE_PATHS = ("kernels", "torch", "reference")

# Upper bound on the elements of the largest intermediates of one pass of the torch paths; longer inputs are
# processed in several passes that carry the state (exact), so inference memory stays bounded.
TORCH_PATH_ELEMENTS_PER_PASS = 2**27


class SSMState(NamedTuple):
    """Recurrent state of a mixer after some tokens; what a cache stores, and what `step` consumes.

    conv_state: ``(batch, conv_channels, d_conv)``, the last ``d_conv`` inputs of the causal conv, oldest first
    (zeros before the sequence start); the layout of mamba-ssm and transformers' caches.
    ssm_state: Mamba-2 ``(batch, num_heads, head_dim, d_state)``; Mamba-1 ``(batch, d_inner, d_state)``.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# Optional CUDA kernels
# ---------------------------------------------------------------------------------------------------------------

KERNEL_PACKAGES = {"mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d", "flash_attn": "flash-attn"}
"""Import name -> pip name of the optional kernel packages."""


def installed_kernels() -> dict[str, bool]:
    """Import name -> installed, without importing (a broken CUDA build must not break our import)."""
    return {name: importlib.util.find_spec(name) is not None for name in KERNEL_PACKAGES}


def mamba_kernels_usable(device: torch.device | str | None = None) -> bool:
    """mamba-ssm and causal-conv1d are CUDA-only: usable when both are installed and the tensors are on CUDA."""
    installed = installed_kernels()
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return installed["mamba_ssm"] and installed["causal_conv1d"] and on_cuda


_KERNEL_SOURCES = {
    "chunk_scan": ("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "selective_scan": ("mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d", "causal_conv1d_fn"),
}
_kernel_cache: dict[str, Callable[..., Any] | None] = {}


def _kernel(name: str) -> Callable[..., Any] | None:
    """The kernel function, or None; imported on first use only (never at package import, never on CPU)."""
    if name not in _kernel_cache:
        package, module, attribute = _KERNEL_SOURCES[name]
        function = None
        try:
            if importlib.util.find_spec(package) is not None:
                function = getattr(importlib.import_module(module), attribute)
        except Exception as error:  # a broken CUDA/Triton build raises anything from OSError to RuntimeError
            logger.warning_once(f"hybrid_vlm.ssm: {package} is installed but {module} failed to import ({error!r}).")
        _kernel_cache[name] = function
    return _kernel_cache[name]


def kernels_available(kind: str = "mamba2") -> dict[str, bool]:
    """Which fused kernels a mixer of `kind` ("mamba2" or "mamba1") could use on CUDA (imports them to check)."""
    scan = "chunk_scan" if kind == "mamba2" else "selective_scan"
    return {"scan": _kernel(scan) is not None, "causal_conv1d": _kernel("causal_conv1d") is not None}


# ---------------------------------------------------------------------------------------------------------------
# Which path an SSM layer runs: decided here only (the forwards and `hybrid-vlm env`'s report both ask)
# ---------------------------------------------------------------------------------------------------------------


def mixer_path(kind: str, device: torch.device, forced: str | None = None) -> tuple[str, str]:
    """(path, reason) for one of this module's mixers of `kind` on `device`: "kernels", "torch" or "reference".

    "reference" is only ever forced (`compute_path`); the kernels run when they import and the tensors are on CUDA.
    """
    if forced is not None:
        return forced, f"forced (compute_path='{forced}')"
    if device.type != "cuda":
        return "torch", f"tensors on {device.type} (mamba-ssm kernels are CUDA-only)"
    if not installed_kernels()["mamba_ssm"]:
        return "torch", "mamba-ssm not installed (pip install mamba-ssm causal-conv1d)"
    available = kernels_available(kind)  # imports the kernels: only ever reached on CUDA
    if not available["scan"]:
        return "torch", "mamba-ssm is installed but its kernels failed to import (see the log)"
    conv = "causal-conv1d" if available["causal_conv1d"] else "torch conv: causal-conv1d not installed"
    return "kernels", f"CUDA tensors, mamba-ssm imports (conv: {conv})"


_announced: set[tuple[str, str, str]] = set()


def _announce(kind: str, path: str, device: torch.device) -> None:
    """One log line per (mixer kind, path, device type) per process, so users know which path runs."""
    key = (kind, path, device.type)
    if key in _announced:
        return
    _announced.add(key)
    if path == "kernels":
        conv = "causal-conv1d" if _kernel("causal_conv1d") is not None else "torch conv (causal-conv1d missing)"
        logger.info(f"hybrid_vlm.ssm: {kind} mixers use the mamba-ssm CUDA kernels (conv: {conv}).")
    elif path == "torch" and device.type == "cuda":
        logger.warning(
            f"hybrid_vlm.ssm: {kind} mixers run the pure-PyTorch chunked path on CUDA; install mamba-ssm and "
            "causal-conv1d for the fused kernels (faster, less memory)."
        )
    else:
        why = "forced with compute_path" if path == "reference" or device.type == "cuda" else "kernels are CUDA-only"
        logger.info(f"hybrid_vlm.ssm: {kind} mixers run the {path} path on {device.type} ({why}).")


# ---------------------------------------------------------------------------------------------------------------
# The SSM layers of transformers' language models
# ---------------------------------------------------------------------------------------------------------------

ENGINE_ENV_VAR = "HYBRID_VLM_SSM_ENGINE"
"""Set to 0 / false / off to keep transformers' own PyTorch path in the LM's SSM layers (the config's
``ssm_engine=False`` does the same for one model)."""

LM_MIXER_PATHS = ("kernels", "engine", "transformers")
"""What an SSM layer of a transformers LM runs: transformers' own path with the mamba-ssm kernels, this module's
torch paths on the layer's weights (`hybrid_vlm.ssm_engine`), or transformers' own PyTorch path (switched off)."""


def engine_switched_off_by_environment() -> bool:
    return os.environ.get(ENGINE_ENV_VAR, "").strip().lower() in ("0", "false", "off", "no")


def lm_mixer_path(kind: str, device: torch.device, enabled: bool = True) -> tuple[str, str]:
    """(path, reason) for an SSM layer of `kind` ("mamba1" / "mamba2") of a transformers LM on `device`.

    The CUDA kernels win wherever they run (transformers calls them itself); elsewhere this module's torch paths
    replace transformers' reference path (a Python loop over tokens for Mamba-1), unless switched off.
    """
    if not enabled:
        return "transformers", "engine switched off (config ssm_engine=False)"
    if engine_switched_off_by_environment():
        return "transformers", f"engine switched off ({ENGINE_ENV_VAR}={os.environ[ENGINE_ENV_VAR]})"
    if device.type == "cuda":
        available = kernels_available(kind)
        if available["scan"] and available["causal_conv1d"]:
            return "kernels", "CUDA tensors, mamba-ssm and causal-conv1d import (transformers calls them)"
        return "engine", "CUDA tensors but mamba-ssm / causal-conv1d do not import"
    return "engine", f"tensors on {device.type} (the mamba-ssm kernels are CUDA-only)"


ENGINE_ATTRIBUTE = "_hybrid_vlm_ssm_engine"
"""Set on the mixers `hybrid_vlm.ssm_engine` has taken over: True while the engine is switched on for that mixer."""


def lm_mixer_kind(module: nn.Module) -> str | None:
    """The scan ("mamba1" / "mamba2") of a transformers SSM mixer (`model_types.SSM_MIXER_CLASSES`), else None."""
    cls = type(module)
    return SSM_MIXER_CLASSES.get(cls.__name__) if cls.__module__.startswith("transformers.") else None


def lm_layer_path(module: nn.Module, device: torch.device | None = None) -> tuple[str, str]:
    """(path, reason) for an SSM layer of a transformers LM on `device` (default: where its weights are).

    Where the engine is installed on the layer, `lm_mixer_path` decides. Elsewhere transformers' own rules apply:
    4.x takes the kernels when mamba-ssm and causal-conv1d import and the weights are on CUDA (Jamba also needs
    `use_mamba_kernels`); 5.x binds each kernel function at import when its package is installed.
    """
    device = device or module.conv1d.weight.device
    if hasattr(module, ENGINE_ATTRIBUTE):
        return lm_mixer_path(lm_mixer_kind(module) or "mamba2", device, getattr(module, ENGINE_ATTRIBUTE))
    installed = installed_kernels()
    missing = [KERNEL_PACKAGES[name] for name in ("mamba_ssm", "causal_conv1d") if not installed[name]]
    if missing:
        return "transformers", f"{' and '.join(missing)} not installed"
    if device.type != "cuda":
        return "transformers", f"tensors on {device.type} (the kernels are CUDA-only)"
    if getattr(module, "use_fast_kernels", True) is False:
        return "transformers", "use_mamba_kernels=False (switched off: kernels were not usable at build time)"
    return "kernels", "kernels import and the weights are on CUDA"


def is_ssm_mixer(module: nn.Module) -> bool:
    """SSM mixers (ours and transformers' Mamba/Mamba-2/Jamba/Bamba/...) own `A_log` and a `conv1d`."""
    return "A_log" in dict(module.named_parameters(recurse=False)) and isinstance(
        getattr(module, "conv1d", None), nn.Module
    )


# ---------------------------------------------------------------------------------------------------------------
# Scans: Mamba-2 (scalar decay per head, "SSD")
# ---------------------------------------------------------------------------------------------------------------


def _expand_groups(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., groups, n) -> (..., heads, n); head h reads group h // (heads // groups), as in mamba-ssm."""
    return tensor.repeat_interleave(num_heads // tensor.shape[-2], dim=-2)


def reference_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 recurrence one token at a time: ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t``.

    x ``(b, l, heads, head_dim)``, dt ``(b, l, heads)`` (already positive), A ``(heads,)`` (negative),
    B/C ``(b, l, groups, d_state)``. Returns ``y (b, l, heads, head_dim)`` (no D skip) and the final state
    ``(b, heads, head_dim, d_state)``. Slow and obviously right: the tests' ground truth.
    """
    batch, length, heads, head_dim = x.shape
    B, C = _expand_groups(B, heads), _expand_groups(C, heads)
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_state is None else initial_state.to(x.dtype)
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        update = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        state = state * decay + update
        outputs.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, heads, head_dim)
    return y, state


def _ssd_pass(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk: int,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the chunked form over a whole number of chunks; see :func:`ssd_chunked_scan`."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[-2:]
    per_group = heads // groups
    n_chunks = length // chunk
    x = x.reshape(batch, n_chunks, chunk, groups, per_group, head_dim)
    dt = dt.reshape(batch, n_chunks, chunk, heads)
    B = B.reshape(batch, n_chunks, chunk, groups, d_state)
    C = C.reshape(batch, n_chunks, chunk, groups, d_state)

    # Cumulative log-decay inside each chunk (inclusive); non-increasing, so every difference used below is <= 0
    # on the causal side and exp() never overflows. The acausal side is masked to -inf *before* exp().
    log_decay = torch.cumsum(dt * A, dim=2)  # (b, c, q, h)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()

    # 1. Within chunks (the "diagonal blocks"): y_i += sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j.
    cs = log_decay.transpose(2, 3)  # (b, c, h, q)
    decay = torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, float("-inf")))
    decay = decay * dt.transpose(2, 3)[..., None, :]  # times dt_j: (b, c, h, i, j)
    scores = torch.einsum("bcign,bcjgn->bcgij", C, B)[:, :, :, None] * decay.view(
        batch, n_chunks, groups, per_group, chunk, chunk
    )
    y = torch.einsum("bcgkij,bcjgkp->bcigkp", scores, x)

    # 2. What each chunk adds to the state at its end: sum_j exp(cs_last - cs_j) dt_j x_j B_j^T.
    to_end = torch.exp(log_decay[:, :, -1:] - log_decay) * dt  # (b, c, q, h)
    weighted_x = x * to_end.view(batch, n_chunks, chunk, groups, per_group, 1)
    chunk_states = torch.einsum("bcjgn,bcjgkp->bcgkpn", B, weighted_x).reshape(
        batch, n_chunks, heads, head_dim, d_state
    )

    # 3. State entering each chunk, all at once: entering[t] = sum_{s<=t} exp(cum_t - cum_s) sources[s], where
    # sources = [incoming state, chunk_states...] and cum_s the total log-decay of chunks before s.
    cum = F.pad(torch.cumsum(log_decay[:, :, -1], dim=1), (0, 0, 1, 0))  # (b, c+1, h)
    sources = torch.cat([state[:, None].to(x.dtype), chunk_states], dim=1)  # (b, c+1, h, p, n)
    causal_chunks = torch.ones(n_chunks + 1, n_chunks + 1, dtype=torch.bool, device=x.device).tril()
    mix = (cum[:, :, None] - cum[:, None, :]).masked_fill(~causal_chunks[..., None], float("-inf")).exp()
    entering = torch.einsum("btsh,bshpn->bthpn", mix, sources)  # (b, c+1, h, p, n)
    final_state = entering[:, -1].clone()  # a copy: a view would keep every chunk's entering state alive

    # 4. Contribution of the entering state to each output: exp(cs_i) C_i . h_in.
    start = entering[:, :-1].reshape(batch, n_chunks, groups, per_group, head_dim, d_state)
    y_state = torch.einsum("bcign,bcgkpn->bcigkp", C, start)
    y = y + y_state * torch.exp(log_decay).view(batch, n_chunks, chunk, groups, per_group, 1)
    return y.reshape(batch, length, heads, head_dim), final_state


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 scan in the chunked matmul ("state space duality") form; same contract as :func:`reference_scan`.

    Inside a chunk the recurrence is a masked (decay-weighted) attention-like matmul; chunks exchange only their
    states. All chunks of a pass are computed in parallel; passes hold at most ~`TORCH_PATH_ELEMENTS_PER_PASS`
    elements in their largest intermediates and hand the state on, so memory does not grow with the length (with
    gradients, each pass is recomputed in backward rather than kept).
    Positions with ``dt == 0`` neither decay nor update the state (that is how padding is masked).
    """
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[-1]
    state = x.new_zeros(batch, heads, head_dim, d_state) if initial_state is None else initial_state.to(x.dtype)
    if length == 0:
        return x.new_zeros(batch, 0, heads, head_dim), state
    if length == 1:  # a decode step: the recurrence itself
        B1, C1 = _expand_groups(B[:, 0], heads), _expand_groups(C[:, 0], heads)  # (b, h, n)
        state = state * torch.exp(dt[:, 0] * A)[..., None, None]
        state = state + (dt[:, 0, :, None] * x[:, 0])[..., None] * B1[:, :, None, :]
        return torch.einsum("bhpn,bhn->bhp", state, C1)[:, None], state
    chunk = max(1, min(chunk_size, length))
    pad = (-length) % chunk
    if pad:  # trailing steps with dt = 0 and zero inputs leave the state untouched; their outputs are dropped
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    n_chunks = (length + pad) // chunk
    per_chunk = batch * heads * (chunk * chunk + 2 * chunk * head_dim + head_dim * d_state)
    chunks_per_pass = max(1, TORCH_PATH_ELEMENTS_PER_PASS // per_chunk)
    # In training, autograd would keep every pass's (chunk x chunk) decay and score tensors until backward, so
    # memory would grow with the length after all: each pass is recomputed in backward instead (same gradients).
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, state))
    outputs = []
    for first in range(0, n_chunks, chunks_per_pass):
        part = slice(first * chunk, min(n_chunks, first + chunks_per_pass) * chunk)
        args = (x[:, part], dt[:, part], A, B[:, part], C[:, part], chunk, state)
        if recompute:
            y, state = torch.utils.checkpoint.checkpoint(_ssd_pass, *args, use_reentrant=False)
        else:
            y, state = _ssd_pass(*args)
        outputs.append(y)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return y[:, :length], state


# ---------------------------------------------------------------------------------------------------------------
# Scans: Mamba-1 (diagonal decay per channel and state dimension)
# ---------------------------------------------------------------------------------------------------------------


def reference_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 recurrence one token at a time: ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``, ``y_t = h_t C_t``.

    u/delta ``(b, l, d_inner)`` (delta already positive), A ``(d_inner, d_state)``, B/C ``(b, l, d_state)``.
    Returns ``y (b, l, d_inner)`` (no D skip, no gate) and the final state ``(b, d_inner, d_state)``.
    """
    batch, length, channels = u.shape
    state = u.new_zeros(batch, channels, A.shape[-1]) if initial_state is None else initial_state.to(u.dtype)
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * A)
        state = state * decay + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, t]))
    y = torch.stack(outputs, dim=1) if outputs else u.new_zeros(batch, 0, channels)
    return y, state


def _selective_scan_block(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of :func:`selective_scan_blocked`, all of it in memory."""
    batch, length, channels = u.shape
    d_state = A.shape[-1]
    chunk = min(length, chunk_size or math.isqrt(length - 1) + 1)  # default ~sqrt(T): T/chunk + chunk steps
    pad = (-length) % chunk
    if pad:  # trailing steps with delta = 0 and no input are the identity map
        u, delta = F.pad(u, (0, 0, 0, pad)), F.pad(delta, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk
    shape = (batch, n_chunks, chunk, channels, d_state)
    log_decay = (delta[..., None] * A).view(shape)  # <= 0
    decay = torch.exp(log_decay)
    inputs = ((delta * u)[..., None] * B[:, :, None, :]).view(shape)

    # 1. Every chunk scanned at once from a zero state: `chunk` steps over (b, n_chunks, d, n). The steps are split
    #    once with unbind: indexing a full tensor inside the loop makes every backward step write a full-size gradient.
    #    The decay from each chunk's start is the running product of the same factors (a strided cumsum over the
    #    chunk axis costs more than the whole loop).
    decays, steps = decay.unbind(2), inputs.unbind(2)
    h, product = steps[0], decays[0]
    local, products = [h], [product]
    for k in range(1, chunk):
        h = decays[k] * h + steps[k]
        product = product * decays[k]
        local.append(h)
        products.append(product)
    local = torch.stack(local, dim=2)
    # 2. The state handed from chunk to chunk: `n_chunks` steps over (b, d, n). Decays are only multiplied (<= 1).
    decay_from_start = torch.stack(products, dim=2)
    chunk_decays, chunk_ends = decay_from_start[:, :, -1].unbind(1), local[:, :, -1].unbind(1)
    entering = []
    for k in range(n_chunks):
        entering.append(state)
        state = chunk_decays[k] * state + chunk_ends[k]
    # 3. Each position: its chunk-local state plus the decayed state that entered the chunk.
    states = local + decay_from_start * torch.stack(entering, dim=1)[:, :, None]
    y = torch.einsum("bmsdn,bmsn->bmsd", states, C.view(batch, n_chunks, chunk, d_state))
    return y.reshape(batch, n_chunks * chunk, channels)[:, :length], state


def selective_scan_blocked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 scan, vectorised; same contract as :func:`reference_selective_scan`.

    Mamba-1's decay differs per (channel, state) entry, so there is no matmul form. A two-level scan does O(T) work
    in ``chunk + T / chunk`` vectorised steps instead of T: all chunks are scanned at once from zero, then the
    states entering the chunks are passed along, then added back with their decay (kept <= 1, so nothing
    overflows). `chunk_size` None picks ~sqrt(T). Inputs longer than the per-pass budget run in blocks that hand the
    state on, so memory stays bounded.
    """
    batch, length, channels = u.shape
    d_state = A.shape[-1]
    state = u.new_zeros(batch, channels, d_state) if initial_state is None else initial_state.to(u.dtype)
    if length == 0:
        return u.new_zeros(batch, 0, channels), state
    if length == 1:  # a decode step: the recurrence itself
        state = state * torch.exp(delta[:, 0, :, None] * A) + (delta[:, 0] * u[:, 0])[..., None] * B[:, 0, None, :]
        return torch.einsum("bdn,bn->bd", state, C[:, 0])[:, None], state
    block = max(1, min(length, TORCH_PATH_ELEMENTS_PER_PASS // (4 * batch * channels * d_state)))
    outputs = []
    for first in range(0, length, block):
        part = slice(first, min(length, first + block))
        y, state = _selective_scan_block(u[:, part], delta[:, part], A, B[:, part], C[:, part], state, chunk_size)
        outputs.append(y)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return y, state


# ---------------------------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types, fp64 stays fp64: the precision the scan and norms run in."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the weight/input dtype (a bf16 norm loses the small visual residuals)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        compute = _compute_dtype(hidden_states.dtype)
        x = hidden_states.to(compute)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.to(compute)).to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Mamba2RMSNormGated(nn.Module):
    """Mamba-2's output norm: ``RMSNorm(y * silu(z))`` per group of `group_size` channels (mamba-ssm's default,
    ``norm_before_gate=False``; True gives ``RMSNorm(y) * silu(z)``). Computed in fp32; weight named ``weight``.
    """

    def __init__(
        self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None, norm_before_gate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.group_size = hidden_size if group_size is None else group_size
        if hidden_size % self.group_size:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of group_size {self.group_size}")
        self.norm_before_gate = norm_before_gate

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        compute = _compute_dtype(hidden_states.dtype)
        x = hidden_states.to(compute)
        if gate is not None and not self.norm_before_gate:
            x = x * F.silu(gate.to(compute))
        grouped = x.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        x = grouped.flatten(-2) * self.weight.to(compute)
        if gate is not None and self.norm_before_gate:
            x = x * F.silu(gate.to(compute))
        return x.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"


# ---------------------------------------------------------------------------------------------------------------
# Padding and the causal conv, shared by both mixers
# ---------------------------------------------------------------------------------------------------------------


class _Packing:
    """Moves each row's real tokens to the front (stable), so any padding becomes right padding, and back."""

    def __init__(self, attention_mask: torch.Tensor) -> None:
        mask = attention_mask.bool()
        self.mask = mask
        self.lengths = mask.sum(-1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        self.real = positions < self.lengths[:, None]  # the mask after packing
        self.order = None if torch.equal(mask, self.real) else torch.argsort((~mask).int(), dim=1, stable=True)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Real tokens first; padded slots zeroed (masked_fill: junk there, even NaN, reaches nothing)."""
        if self.order is not None:
            tensor = tensor.gather(1, self.order[..., None].expand(-1, -1, tensor.shape[-1]))
        return tensor.masked_fill(~self.real[..., None], 0.0)

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Back to the original positions, zeros at padding."""
        if self.order is not None:
            index = self.order[..., None].expand(-1, -1, tensor.shape[-1])
            tensor = torch.zeros_like(tensor).scatter(1, index, tensor)
        return tensor.masked_fill(~self.mask[..., None], 0.0)


def _split_initial_state(
    initial_state: SSMState | tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if initial_state is None:
        return None, None
    if isinstance(initial_state, torch.Tensor):
        return None, initial_state
    conv_state, ssm_state = initial_state
    return conv_state, ssm_state


def causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_state: torch.Tensor | None
) -> torch.Tensor:
    """Causal depthwise conv of ``x (b, channels, l)`` (no activation); `conv_state` ``(b, channels, width)``
    supplies the inputs before x (its last ``width - 1`` are used), zeros when None."""
    width = weight.shape[-1]
    if conv_state is not None:
        x = torch.cat([conv_state[..., -(width - 1) :].to(x.dtype), x], dim=-1) if width > 1 else x
        return F.conv1d(x.to(weight.dtype), weight, bias, groups=weight.shape[0])
    out = F.conv1d(x.to(weight.dtype), weight, bias, padding=width - 1, groups=weight.shape[0])
    return out[..., : x.shape[-1]]


def conv_window(
    x: torch.Tensor, conv_state: torch.Tensor | None, lengths: torch.Tensor | None, width: int
) -> torch.Tensor:
    """The last `width` conv inputs up to each row's last real token: the conv state a cache stores.

    x ``(b, channels, l)`` with real tokens first (packed); `conv_state` the inputs before x (None: zeros);
    `lengths` real tokens per row (None: all of them).
    """
    if conv_state is None:
        conv_state = x.new_zeros(x.shape[0], x.shape[1], width)
    history = torch.cat([conv_state[..., -width:].to(x.dtype), x], dim=-1)  # real token t sits at t + width
    if lengths is None:
        return history[..., -width:].clone()  # a copy: a view would keep the whole sequence's history alive
    index = lengths[:, None] + torch.arange(width, device=x.device)  # (b, width)
    return history.gather(-1, index[:, None, :].expand(-1, x.shape[1], -1))


class _SSMMixerBase(nn.Module):
    """Shared plumbing: path choice and reporting, the fp32 parameter guard, masked causal conv, state gathering."""

    kind = "ssm"
    keep_fp32_parameters = True
    conv1d: nn.Conv1d
    d_conv: int

    def __init__(self) -> None:
        super().__init__()
        self._forced_path: str | None = None

    # --- paths ---------------------------------------------------------------------------------------------------
    @property
    def compute_path(self) -> str:
        """The path a forward on this module's device takes: "kernels", "torch" or "reference".

        Assign one of those to force it (e.g. "reference" in tests, "torch" to bypass kernels), None for automatic.
        """
        return mixer_path(self.kind, self.conv1d.weight.device, self._forced_path)[0]

    @compute_path.setter
    def compute_path(self, path: str | None) -> None:
        if path is not None and path not in COMPUTE_PATHS:
            raise ValueError(f"compute_path must be one of {COMPUTE_PATHS} or None, got {path!r}")
        self._forced_path = path

    def _path_for(self, device: torch.device) -> str:
        path, _ = mixer_path(self.kind, device, self._forced_path)
        if path == "kernels" and device.type != "cuda":
            raise RuntimeError("compute_path 'kernels' needs CUDA tensors")
        if path == "kernels" and not kernels_available(self.kind)["scan"]:
            raise RuntimeError("compute_path 'kernels' needs mamba-ssm (pip install mamba-ssm causal-conv1d)")
        _announce(self.kind, path, device)
        return path

    # --- dtype guard ----------------------------------------------------------------------------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:  # type: ignore[override]
        """After any cast, put A_log / D / dt_bias back to (at least) fp32: fp16 `-exp(A_log)` and `dt` overflow."""
        result = super()._apply(fn, recurse)
        if self.keep_fp32_parameters:
            for name in SSM_FP32_PARAMETERS:
                param = self._parameters.get(name)
                if param is not None and param.is_floating_point() and param.element_size() < 4:
                    param.data = param.data.float()
                    if param.grad is not None:
                        param.grad.data = param.grad.data.float()
        return result

    # --- conv -----------------------------------------------------------------------------------------------------
    def _conv_silu(self, x: torch.Tensor, conv_state: torch.Tensor | None, path: str) -> torch.Tensor:
        """silu(causal depthwise conv) of ``x (b, channels, l)``; `conv_state` supplies the inputs before x."""
        width = self.d_conv
        weight, bias = self.conv1d.weight, self.conv1d.bias
        if conv_state is not None:
            x = torch.cat([conv_state[..., 1:].to(x.dtype), x], dim=-1)
        conv_fn = _kernel("causal_conv1d") if path == "kernels" and 2 <= width <= 4 else None
        if conv_fn is not None:  # pads on the left by itself: with a prefix, drop the outputs that belong to it
            out = conv_fn(x, weight.squeeze(1), bias, activation="silu")
            return out[..., width - 1 :] if conv_state is not None else out
        if conv_state is not None:
            return F.silu(F.conv1d(x, weight, bias, groups=weight.shape[0]))
        out = F.conv1d(x, weight, bias, padding=width - 1, groups=weight.shape[0])
        return F.silu(out[..., : x.shape[-1]])

    def _final_conv_state(
        self, x: torch.Tensor, conv_state: torch.Tensor | None, lengths: torch.Tensor | None
    ) -> torch.Tensor:
        """The last `d_conv` conv inputs up to each row's last real token (x packed, ``(b, channels, l)``)."""
        return conv_window(x, conv_state, lengths, self.d_conv)

    def _step_conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token through the conv: shift the window, append x ``(b, channels)``, return silu(conv), window."""
        window = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1)
        weight = self.conv1d.weight.squeeze(1)
        out = (window.to(weight.dtype) * weight).sum(-1)
        if self.conv1d.bias is not None:
            out = out + self.conv1d.bias
        return F.silu(out), window

    @staticmethod
    def _check_inputs(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must be (batch, seq, hidden), got shape {tuple(hidden_states.shape)}")
        if attention_mask is not None and attention_mask.shape != hidden_states.shape[:2]:
            raise ValueError(
                f"attention_mask must be (batch, seq) = {tuple(hidden_states.shape[:2])}, "
                f"got {tuple(attention_mask.shape)}"
            )


def _inverse_softplus_dt(n: int, dt_min: float, dt_max: float, dt_init_floor: float, dtype: torch.dtype):
    """dt ~ log-uniform[dt_min, dt_max] (floored), returned as the bias whose softplus is dt (mamba-ssm's init)."""
    dt = torch.exp(torch.rand(n, dtype=dtype) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _param_dtype() -> torch.dtype:
    """fp32 (or fp64 under a fp64 default) for the parameters that must not be half precision."""
    return _compute_dtype(torch.get_default_dtype())


# ---------------------------------------------------------------------------------------------------------------
# Mamba-2
# ---------------------------------------------------------------------------------------------------------------


class Mamba2Mixer(_SSMMixerBase):
    """Mamba-2 mixer with mamba-ssm's parameterisation and weight names (Vamba's ``vision_mixer.mixer.*``).

    ``in_proj`` -> [z | x, B, C | dt]; causal depthwise ``conv1d`` + SiLU over (x, B, C); scalar-decay SSM per head
    (``A = -exp(A_log)``, ``dt = softplus(dt + dt_bias)``, skip ``D``); gated RMSNorm ``norm`` (per group);
    ``out_proj``.
    """

    kind = "mamba2"

    def __init__(
        self,
        hidden_size: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        head_dim: int = 64,
        n_groups: int = 1,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1, 16),
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.head_dim = head_dim
        self.n_groups = n_groups
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        self.d_inner = expand * hidden_size
        if self.d_inner % head_dim:
            raise ValueError(f"expand * hidden_size = {self.d_inner} is not a multiple of head_dim {head_dim}")
        self.num_heads = self.d_inner // head_dim
        if self.num_heads % n_groups:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of n_groups {n_groups}")
        if not A_init_range[0] > 0 or A_init_range[1] < A_init_range[0]:
            raise ValueError(f"A_init_range must be positive and ordered, got {A_init_range}")
        self.dt_init = (dt_min, dt_max, dt_init_floor)
        self.A_init_range = tuple(A_init_range)
        self.conv_dim = self.d_inner + 2 * n_groups * d_state

        self.in_proj = nn.Linear(hidden_size, self.d_inner + self.conv_dim + self.num_heads, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        fp = _param_dtype()
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads, dtype=fp))
        self.A_log = nn.Parameter(torch.empty(self.num_heads, dtype=fp))
        self.D = nn.Parameter(torch.empty(self.num_heads, dtype=fp))
        self.norm = Mamba2RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // n_groups)
        self.out_proj = nn.Linear(self.d_inner, hidden_size, bias=bias)
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True  # as mamba-ssm: optimizers that honour it skip weight decay here
        self.init_ssm_parameters()

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """(Re)initialise the SSM-specific parameters as mamba-ssm does: A ~ U(A_init_range) stored as log,
        dt log-uniform in [dt_min, dt_max] stored through inverse softplus, D = 1, norm weight 1.

        Call it from a model's ``_init_weights`` (weights built on the meta device lose constructor init).
        """
        dt_min, dt_max, floor = self.dt_init
        self.dt_bias.copy_(_inverse_softplus_dt(self.num_heads, dt_min, dt_max, floor, torch.float32))
        self.A_log.copy_(torch.empty(self.num_heads).uniform_(*self.A_init_range).log())
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def allocate_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SSMState:
        """Zero state for `step`-only decoding: conv in the module dtype, SSM in fp32 unless told otherwise."""
        device = self.conv1d.weight.device if device is None else device
        conv = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=self.conv1d.weight.dtype)
        ssm = torch.zeros(
            batch_size, self.num_heads, self.head_dim, self.d_state, device=device, dtype=dtype or torch.float32
        )
        return SSMState(conv, ssm)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        initial_state: SSMState | tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
        return_final_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, SSMState]:
        """``(batch, seq, hidden)`` -> same shape (zeros at padded positions).

        attention_mask: ``(batch, seq)``, 0 = padding (any layout). initial_state: an :class:`SSMState` (exact
        continuation of an earlier call) or a bare SSM state tensor (conv window starts from zeros).
        return_final_state: also return the :class:`SSMState` after each row's last real token.
        """
        self._check_inputs(hidden_states, attention_mask)
        input_dtype = hidden_states.dtype
        path = self._path_for(hidden_states.device)
        packing = _Packing(attention_mask) if attention_mask is not None and not bool(attention_mask.all()) else None
        conv_state, ssm_state = _split_initial_state(initial_state)

        projected = self.in_proj(packing.pack(hidden_states) if packing else hidden_states)
        z, xBC, dt = projected.split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        xBC_t = xBC.transpose(1, 2)
        new_conv_state = (
            self._final_conv_state(xBC_t, conv_state, packing.lengths if packing else None)
            if return_final_state
            else None
        )
        xBC = self._conv_silu(xBC_t, conv_state, path).transpose(1, 2)
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)

        compute = _compute_dtype(xBC.dtype)
        dt = F.softplus(dt.to(compute) + self.dt_bias.to(compute))
        if packing is not None:  # padded steps: no decay, no update
            dt = dt.masked_fill(~packing.real[..., None], 0.0)
        A = -torch.exp(self.A_log.to(compute))
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        B = B.unflatten(-1, (self.n_groups, self.d_state))
        C = C.unflatten(-1, (self.n_groups, self.d_state))
        if ssm_state is not None:
            ssm_state = ssm_state.to(compute)

        if path == "kernels":
            y, final = _kernel("chunk_scan")(
                x, dt, A, B, C, chunk_size=self.chunk_size, initial_states=ssm_state, return_final_states=True
            )[:2]
            y, final = y.to(compute), final.to(compute)
        elif path == "reference":
            y, final = reference_scan(x.to(compute), dt, A, B.to(compute), C.to(compute), ssm_state)
        else:
            y, final = ssd_chunked_scan(x.to(compute), dt, A, B.to(compute), C.to(compute), self.chunk_size, ssm_state)

        y = y + x.to(compute) * self.D.to(compute)[:, None]
        y = self.norm(y.flatten(-2), z)
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(input_dtype)
        if packing is not None:
            out = packing.unpack(out)
        if return_final_state:
            return out, SSMState(new_conv_state, final)
        return out

    def step(
        self, hidden_states_t: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, SSMState]:
        """One token per row, ``(batch, hidden)`` or ``(batch, 1, hidden)``, from the state after the previous one.

        Returns the output (same shape as the input) and the new state (new tensors, same dtypes as given; copy
        them into a cache if it must be updated in place). Runs in torch on every device (a handful of small ops).
        """
        squeeze = hidden_states_t.dim() == 3
        if squeeze and hidden_states_t.shape[1] != 1:
            raise ValueError("step takes one token per row; use forward() with initial_state for several")
        hidden = hidden_states_t.reshape(hidden_states_t.shape[0], -1)
        input_dtype = hidden.dtype
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.num_heads], dim=-1)
        xBC, window = self._step_conv(xBC, conv_state)
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)

        compute = _compute_dtype(xBC.dtype)
        dt = F.softplus(dt.to(compute) + self.dt_bias.to(compute))  # (b, h)
        A = -torch.exp(self.A_log.to(compute))
        x = x.to(compute).unflatten(-1, (self.num_heads, self.head_dim))  # (b, h, p)
        B = _expand_groups(B.to(compute).unflatten(-1, (self.n_groups, self.d_state)), self.num_heads)
        C = _expand_groups(C.to(compute).unflatten(-1, (self.n_groups, self.d_state)), self.num_heads)
        state = ssm_state.to(compute) * torch.exp(dt * A)[..., None, None]
        state = state + (dt[..., None] * x)[..., None] * B[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, C) + x * self.D.to(compute)[:, None]
        y = self.norm(y.flatten(-2), z)
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(input_dtype)
        return (out[:, None] if squeeze else out), SSMState(window, state.to(ssm_state.dtype))

    def extra_repr(self) -> str:
        return (
            f"d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, head_dim={self.head_dim}, "
            f"num_heads={self.num_heads}, n_groups={self.n_groups}, chunk_size={self.chunk_size}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Mamba-1
# ---------------------------------------------------------------------------------------------------------------


class Mamba1Mixer(_SSMMixerBase):
    """Mamba-1 (selective scan) mixer with mamba-ssm's parameterisation and names, for the Vamba ablation.

    ``in_proj`` -> [x | z]; causal depthwise ``conv1d`` + SiLU on x; ``x_proj`` -> [dt (low rank) | B | C];
    ``dt_proj`` (its bias is the dt bias); ``A = -exp(A_log)`` of shape ``(d_inner, d_state)``; skip ``D``;
    output gated by ``silu(z)``; ``out_proj``.
    """

    kind = "mamba1"

    def __init__(
        self,
        hidden_size: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.hidden_size = hidden_size
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * hidden_size)
        self.dt_rank = math.ceil(hidden_size / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        self.dt_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.conv_dim = self.d_inner

        self.in_proj = nn.Linear(hidden_size, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        fp = _param_dtype()
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, dtype=fp))
        self.D = nn.Parameter(torch.empty(self.d_inner, dtype=fp))
        self.out_proj = nn.Linear(self.d_inner, hidden_size, bias=bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_reinit = True  # generic "zero all biases" inits must leave the dt bias alone
        self.init_ssm_parameters()

    @torch.no_grad()
    def init_ssm_parameters(self) -> None:
        """(Re)initialise as mamba-ssm: S4D-real A (1..d_state per channel, stored as log), dt_proj weight
        uniform/constant at ``dt_rank**-0.5 * dt_scale``, dt_proj bias = inverse softplus of log-uniform dt, D = 1.
        """
        dt_init, dt_scale, dt_min, dt_max, floor = self.dt_init
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        self.dt_proj.bias.copy_(_inverse_softplus_dt(self.d_inner, dt_min, dt_max, floor, torch.float32))
        self.A_log.copy_(torch.arange(1, self.d_state + 1, dtype=torch.float32).log().expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def allocate_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SSMState:
        """Zero state for `step`-only decoding: conv in the module dtype, SSM in fp32 unless told otherwise."""
        device = self.conv1d.weight.device if device is None else device
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=self.conv1d.weight.dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype or torch.float32)
        return SSMState(conv, ssm)

    def _delta(self, dt_low: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
        """softplus(dt_proj(dt_low)) with the bias added in fp32 (mamba-ssm's delta_bias)."""
        dt = F.linear(dt_low, self.dt_proj.weight).to(compute)
        return F.softplus(dt + self.dt_proj.bias.to(compute))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        initial_state: SSMState | tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
        return_final_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, SSMState]:
        """Same contract as :meth:`Mamba2Mixer.forward`."""
        self._check_inputs(hidden_states, attention_mask)
        input_dtype = hidden_states.dtype
        path = self._path_for(hidden_states.device)
        packing = _Packing(attention_mask) if attention_mask is not None and not bool(attention_mask.all()) else None
        conv_state, ssm_state = _split_initial_state(initial_state)
        if path == "kernels" and ssm_state is not None:
            path = "torch"  # selective_scan_fn takes no initial state

        projected = self.in_proj(packing.pack(hidden_states) if packing else hidden_states)
        x, z = projected.split([self.d_inner, self.d_inner], dim=-1)
        x_t = x.transpose(1, 2)
        new_conv_state = (
            self._final_conv_state(x_t, conv_state, packing.lengths if packing else None)
            if return_final_state
            else None
        )
        x = self._conv_silu(x_t, conv_state, path).transpose(1, 2)
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)

        compute = _compute_dtype(x.dtype)
        delta = self._delta(dt_low, compute)
        if packing is not None:  # padded steps: no decay, no update
            delta = delta.masked_fill(~packing.real[..., None], 0.0)
        A = -torch.exp(self.A_log.to(compute))

        if path == "kernels":
            y, final = _kernel("selective_scan")(
                x.transpose(1, 2).contiguous(),
                delta.to(x.dtype).transpose(1, 2).contiguous(),
                A.float(),
                B.transpose(1, 2).contiguous(),
                C.transpose(1, 2).contiguous(),
                return_last_state=True,
            )
            y, final = y.transpose(1, 2).to(compute), final.to(compute)
        elif path == "reference":
            y, final = reference_selective_scan(x.to(compute), delta, A, B.to(compute), C.to(compute), ssm_state)
        else:
            y, final = selective_scan_blocked(
                x.to(compute), delta, A, B.to(compute), C.to(compute), ssm_state, self.chunk_size
            )

        y = (y + x.to(compute) * self.D.to(compute)) * F.silu(z.to(compute))
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(input_dtype)
        if packing is not None:
            out = packing.unpack(out)
        if return_final_state:
            return out, SSMState(new_conv_state, final)
        return out

    def step(
        self, hidden_states_t: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, SSMState]:
        """Same contract as :meth:`Mamba2Mixer.step`."""
        squeeze = hidden_states_t.dim() == 3
        if squeeze and hidden_states_t.shape[1] != 1:
            raise ValueError("step takes one token per row; use forward() with initial_state for several")
        hidden = hidden_states_t.reshape(hidden_states_t.shape[0], -1)
        input_dtype = hidden.dtype
        x, z = self.in_proj(hidden).split([self.d_inner, self.d_inner], dim=-1)
        x, window = self._step_conv(x, conv_state)
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        compute = _compute_dtype(x.dtype)
        delta = self._delta(dt_low, compute)  # (b, d)
        A = -torch.exp(self.A_log.to(compute))
        x = x.to(compute)
        state = ssm_state.to(compute) * torch.exp(delta[..., None] * A)
        state = state + (delta * x)[..., None] * B.to(compute)[:, None, :]
        y = torch.einsum("bdn,bn->bd", state, C.to(compute)) + x * self.D.to(compute)
        y = y * F.silu(z.to(compute))
        out = self.out_proj(y.to(self.out_proj.weight.dtype)).to(input_dtype)
        return (out[:, None] if squeeze else out), SSMState(window, state.to(ssm_state.dtype))

    def extra_repr(self) -> str:
        return (
            f"d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, dt_rank={self.dt_rank}, "
            f"chunk_size={self.chunk_size}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Block
# ---------------------------------------------------------------------------------------------------------------

MIXERS: dict[str, type[_SSMMixerBase]] = {"mamba2": Mamba2Mixer, "mamba1": Mamba1Mixer}


class SSMBlock(nn.Module):
    """Pre-norm residual SSM block, ``x + mixer(RMSNorm(x))``: Vamba's per-layer video update.

    Weight names ``norm.weight`` and ``mixer.*`` (Vamba: ``vision_mixer.norm.weight``, ``vision_mixer.mixer.*``).
    Padded positions come back unchanged (the mixer outputs zeros there).
    """

    def __init__(self, hidden_size: int, mixer: str = "mamba2", norm_eps: float = 1e-5, **mixer_kwargs: Any) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {mixer!r}")
        self.mixer_type = mixer
        self.norm = RMSNorm(hidden_size, eps=norm_eps)
        self.mixer = MIXERS[mixer](hidden_size, **mixer_kwargs)

    @property
    def compute_path(self) -> str:
        return self.mixer.compute_path

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        initial_state: SSMState | tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
        return_final_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, SSMState]:
        result = self.mixer(self.norm(hidden_states), attention_mask, initial_state, return_final_state)
        if return_final_state:
            update, state = result
            return hidden_states + update, state
        return hidden_states + result

    def step(
        self, hidden_states_t: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
    ) -> tuple[torch.Tensor, SSMState]:
        update, state = self.mixer.step(self.norm(hidden_states_t), conv_state, ssm_state)
        return hidden_states_t + update, state

    def allocate_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> SSMState:
        return self.mixer.allocate_state(batch_size, device, dtype)
