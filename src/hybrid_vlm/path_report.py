"""Which fast kernels are installed, which compute path each module of a model takes (and why), and switching
transformers 4.x mixers to the PyTorch path when the kernels cannot run.

Three kinds of modules choose a path:

* the SSM mixers this library owns (:mod:`hybrid_vlm.ssm`: Vamba's visual stream, the Mamba projector): mamba-ssm /
  causal-conv1d kernels when they import and the tensors are on CUDA, else the chunked PyTorch path;
* attention, through transformers' attention interface (``config._attn_implementation``: sdpa by default,
  flash_attention_2 or eager when asked for), including Vamba's cross-attention;
* the SSM layers of language models transformers owns (Jamba, Mamba, Mamba-2, Bamba, Zamba2, NemotronH, FalconH1):
  transformers' kernel path where the kernels run, else this package's engine (:mod:`hybrid_vlm.ssm_engine`, the
  torch paths of :mod:`hybrid_vlm.ssm` on the layer's weights), or transformers' reference path when switched off.

:func:`compute_paths` reports all three for a model; :func:`format_compute_paths` renders it (``hybrid-vlm env``
prints it for a tiny preset), and a language model prepared by :func:`use_torch_ssm_path_where_needed` logs it once
the first time it runs on a device.
"""

from __future__ import annotations

import importlib.util
import logging as logging_module
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import logging

from .compat import KERNEL_FALLBACK_MESSAGES, disable_unusable_mixer_kernels

logger = logging.get_logger(__name__)

KERNEL_PACKAGES = {"mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d", "flash_attn": "flash-attn"}


def installed_kernels() -> dict[str, bool]:
    """Import name -> installed, without importing (a broken CUDA build must not break our import)."""
    return {name: importlib.util.find_spec(name) is not None for name in KERNEL_PACKAGES}


def mamba_kernels_usable(device: torch.device | str | None = None) -> bool:
    """mamba-ssm and causal-conv1d are CUDA-only: usable when both are installed and the tensors are on CUDA."""
    kernels = installed_kernels()
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return kernels["mamba_ssm"] and kernels["causal_conv1d"] and on_cuda


# ---------------------------------------------------------------------------------------------------------------
# Path report
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputePath:
    """One kind of module in a model, the path it takes, and why; `modules` counts the modules sharing it."""

    component: str
    path: str
    reason: str
    modules: int
    example: str  # the first module's qualified name


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters(recurse=True):
        return tensor.device
    return torch.device("cpu")


def _missing(names: tuple[str, ...]) -> list[str]:
    installed = installed_kernels()
    return [KERNEL_PACKAGES[n] for n in names if not installed[n]]


def own_ssm_path(mixer: nn.Module, device: torch.device | None = None) -> tuple[str, str]:
    """(path, reason) for one of our SSM mixers (`hybrid_vlm.ssm`), as its forward on `device` would choose."""
    from . import ssm

    device = device or _device_of(mixer)
    kind = getattr(mixer, "kind", "mamba2")
    torch_label = "torch chunked (SSD matmul form)" if kind == "mamba2" else "torch blocked scan"
    forced = getattr(mixer, "_forced_path", None)
    if forced is not None:
        label = {"torch": torch_label, "kernels": "mamba-ssm kernels", "reference": "reference recurrence"}[forced]
        return label, f"forced (compute_path='{forced}')"
    if device.type != "cuda":
        return torch_label, f"tensors on {device.type} (mamba-ssm kernels are CUDA-only)"
    missing = _missing(("mamba_ssm",))
    if missing:
        return torch_label, "mamba-ssm not installed (pip install mamba-ssm causal-conv1d)"
    available = ssm.kernels_available(kind)  # imports the kernels: only ever reached on CUDA
    if not available["scan"]:
        return torch_label, "mamba-ssm is installed but its kernels failed to import (see the log)"
    conv = "causal-conv1d" if available["causal_conv1d"] else "torch conv: causal-conv1d not installed"
    return "mamba-ssm kernels", f"CUDA tensors, mamba-ssm imports (conv: {conv})"


# transformers' SSM mixers: Jamba's, Mamba's and Mamba-2's (and their relatives that share the kernel packages).
_TRANSFORMERS_SSM_CLASSES = (
    "JambaMambaMixer",
    "MambaMixer",
    "Mamba2Mixer",
    "FalconMambaMixer",
    "BambaMixer",
    "Zamba2MambaMixer",
    "NemotronHMamba2Mixer",
    "FalconH1Mixer",
)


def transformers_ssm_path(mixer: nn.Module, device: torch.device | None = None) -> tuple[str, str]:
    """(path, reason) for a transformers-owned SSM mixer (Jamba, Mamba, Mamba-2) on `device`.

    transformers 4.x takes the kernels when mamba-ssm and causal-conv1d import and the weights are on CUDA (Jamba
    also needs `use_mamba_kernels`); 5.x binds each kernel function at import when its package is installed.
    """
    device = device or _device_of(mixer)
    from .ssm_engine import engine_path, mixer_kind

    engine = engine_path(mixer, device)  # ssm.lm_mixer_path decides, where our engine is installed
    if engine is not None:
        path, reason = engine
        if path == "engine":
            kind = mixer_kind(mixer)
            label = "torch chunked (SSD matmul form)" if kind == "mamba2" else "torch blocked scan"
            return f"hybrid_vlm engine ({label})", reason
        if path == "transformers":
            return "transformers torch reference", reason
        return "mamba-ssm kernels (transformers)", reason
    missing = _missing(("mamba_ssm", "causal_conv1d"))
    reference = "transformers torch reference"
    if missing:
        return reference, f"{' and '.join(missing)} not installed"
    if device.type != "cuda":
        return reference, f"tensors on {device.type} (the kernels are CUDA-only)"
    if getattr(mixer, "use_fast_kernels", True) is False:
        return reference, "use_mamba_kernels=False (switched off: kernels were not usable when the model was built)"
    return "mamba-ssm kernels (transformers)", "kernels import and the weights are on CUDA"


def _attention_path(module: nn.Module, implementation: str | None, cross: bool) -> tuple[str, str]:
    implementation = implementation or "eager"
    installed = installed_kernels()
    if cross and implementation not in ("eager", "sdpa", "flex_attention"):
        return "sdpa", f"'{implementation}' cannot take the per-token visual mask (self-attention keeps it)"
    if implementation == "sdpa" and cross:
        return "sdpa", "transformers' sdpa with the visual mask (which visual tokens each text token may see)"
    if implementation == "sdpa":
        hint = ""
        if installed["flash_attn"] and _device_of(module).type == "cuda":
            hint = "; flash-attn is installed: attn_implementation='flash_attention_2' selects it"
        return "sdpa", "transformers' default (torch picks its fused kernel when no mask is materialised)" + hint
    if implementation.startswith("flash_attention"):
        state = "installed" if installed["flash_attn"] else "NOT installed"
        return implementation, f"requested (attn_implementation); flash-attn {state}"
    return implementation, "requested (attn_implementation)"


def _classify(name: str, module: nn.Module) -> tuple[str, str, str] | None:
    """(component, path, reason) of one module, or None for modules that choose no path."""
    from .ssm import _SSMMixerBase

    if isinstance(module, _SSMMixerBase):
        where = (
            "projector SSM"
            if "multi_modal_projector" in name
            else "Vamba visual-stream SSM"
            if "vision_mixer" in name
            else "SSM"
        )
        return (f"{where} ({module.kind}, hybrid_vlm.ssm)", *own_ssm_path(module))
    cls = type(module).__name__
    if cls in _TRANSFORMERS_SSM_CLASSES and type(module).__module__.startswith("transformers."):
        return (f"LM SSM layers ({cls})", *transformers_ssm_path(module))
    config = getattr(module, "config", None)
    if cls.endswith("Attention") and config is not None and hasattr(config, "_attn_implementation"):
        cross = cls == "VambaCrossAttention"
        where = "vision tower attention" if "vision_tower" in name else (
            "Vamba cross-attention" if cross else "LM self-attention"
        )
        return (f"{where} ({cls})", *_attention_path(module, config._attn_implementation, cross))
    return None


def compute_paths(model: nn.Module) -> list[ComputePath]:
    """Which path each SSM and attention module of `model` takes on its current device, and why.

    One row per (component, path, reason); `modules` counts them and `example` names the first.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compute_paths expects a torch.nn.Module (a HybridVLM model), got {type(model).__name__}.")
    rows: dict[tuple[str, str, str], list[str]] = {}
    for name, module in model.named_modules():
        found = _classify(name, module)
        if found is not None:
            rows.setdefault(found, []).append(name)
    return [ComputePath(c, p, r, len(names), names[0]) for (c, p, r), names in rows.items()]


def format_compute_paths(paths: list[ComputePath]) -> str:
    """One line per row: component, count, path, reason."""
    if not paths:
        return "(no SSM or attention modules)"
    width = max(len(p.component) for p in paths)
    return "\n".join(f"{p.component:<{width}}  x{p.modules:<3} {p.path}: {p.reason}" for p in paths)


# One log line per (model, device type): the first forward on a device says which paths run.
_announced: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


def announce_compute_paths(model: nn.Module, device: torch.device | None = None) -> bool:
    """Log the path report of `model` once per device type; returns whether it logged now.

    A torch fallback on CUDA is a warning (it costs speed and memory); everything else is info.
    """
    device = device or _device_of(model)
    seen = _announced.setdefault(model, set())
    if device.type in seen:
        return False
    seen.add(device.type)
    paths = compute_paths(model)
    summary = "; ".join(f"{p.component}: {p.path} ({p.reason})" for p in paths)
    slow = device.type == "cuda" and any(
        p.path.startswith(("torch", "transformers torch", "hybrid_vlm engine")) for p in paths
    )
    (logger.warning if slow else logger.info)(f"hybrid_vlm: compute paths on {device.type}: {summary}")
    return True


def _announce_on_first_forward(module: nn.Module, args: tuple) -> None:
    if torch.compiler.is_compiling():
        return
    announce_compute_paths(module)


def use_torch_ssm_path_where_needed(language_model: nn.Module, device: torch.device | str | None = None) -> bool:
    """transformers 4.x Jamba raises when `use_mamba_kernels` is set without kernels; fall back to its torch path.

    Also registers the one-time path log on the language model's first forward. Returns whether any mixer was
    switched (a switch is logged once).
    """
    if not getattr(language_model, "_hybrid_vlm_announces_paths", False):
        language_model.register_forward_pre_hook(_announce_on_first_forward)
        language_model._hybrid_vlm_announces_paths = True
    if mamba_kernels_usable(device):
        return False
    switched = disable_unusable_mixer_kernels(language_model)
    if switched:
        say_torch_ssm_path_once()
    return switched


# ------------------------------------------------------------------------------ one note instead of transformers'

_TORCH_SSM_NOTE = (
    "hybrid_vlm: the SSM layers run their pure-PyTorch path here: correct, but slower than the mamba-ssm / "
    "causal-conv1d kernels, which need those packages and a CUDA GPU. `hybrid-vlm env` shows each module's path."
)
_said_torch_ssm_path = False


def say_torch_ssm_path_once() -> bool:
    """Warn, once per process, that SSM layers run without the CUDA kernels; returns whether it warned now."""
    global _said_torch_ssm_path
    if _said_torch_ssm_path:
        return False
    _said_torch_ssm_path = True
    logger.warning(_TORCH_SSM_NOTE)
    return True


class KernelFallbackFilter(logging_module.Filter):
    """Drops transformers' per-kernel "falling back ... install mamba_ssm / causal_conv1d" lines (2-4 per run, and
    on a CPU the kernels cannot exist at all) and says it once, in one line, instead."""

    def filter(self, record: logging_module.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if not any(text in message for text in KERNEL_FALLBACK_MESSAGES):
            return True
        say_torch_ssm_path_once()
        return False


def install_kernel_fallback_filter() -> None:
    """Attach `KernelFallbackFilter` to the handlers of transformers' library logger (idempotent)."""
    root = logging.get_logger()
    for handler in root.handlers:
        if not any(isinstance(f, KernelFallbackFilter) for f in handler.filters):
            handler.addFilter(KernelFallbackFilter())
