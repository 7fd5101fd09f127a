"""The compute path each module of a model takes (and why), and switching transformers 4.x mixers to the PyTorch path
when the kernels cannot run.

Three kinds of modules choose a path:

* the SSM mixers this library owns (:mod:`hybrid_vlm.ssm`: Vamba's visual stream, the Mamba projector): mamba-ssm /
  causal-conv1d kernels when they import and the tensors are on CUDA, else the chunked PyTorch path;
* attention, through transformers' attention interface (``config._attn_implementation``: sdpa by default,
  flash_attention_2 or eager when asked for), including Vamba's cross-attention;
* the SSM layers of language models transformers owns (Jamba, Mamba, Mamba-2, Bamba, Zamba2, NemotronH, FalconH1):
  transformers' kernel path where the kernels run, else this package's engine (:mod:`hybrid_vlm.ssm_engine`, the
  torch paths of :mod:`hybrid_vlm.ssm` on the layer's weights), or transformers' reference path when switched off.

The SSM paths are decided by :mod:`hybrid_vlm.ssm` alone (`ssm.mixer_path`, `ssm.lm_layer_path`); the forwards ask
it too, so this report says what runs. :func:`compute_paths` reports all three kinds for a model;
:func:`format_compute_paths` renders it (``hybrid-vlm env`` prints it for a tiny preset), and a language model
prepared by :func:`use_torch_ssm_path_where_needed` logs it once the first time it runs on a device.
"""

from __future__ import annotations

import logging as logging_module
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import logging

from .compat import KERNEL_FALLBACK_MESSAGES, disable_unusable_mixer_kernels
from .ssm import (
    _SSMMixerBase,
    installed_kernels,
    lm_layer_path,
    lm_mixer_kind,
    mamba_kernels_usable,
    mixer_path,
)

logger = logging.get_logger(__name__)


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


def _torch_label(kind: str) -> str:
    return "torch chunked (SSD matmul form)" if kind == "mamba2" else "torch blocked scan"


def own_ssm_path(mixer: nn.Module, device: torch.device | None = None) -> tuple[str, str]:
    """(path, reason) for one of our SSM mixers (`hybrid_vlm.ssm`), as its forward on `device` chooses."""
    kind = getattr(mixer, "kind", "mamba2")
    path, reason = mixer_path(kind, device or _device_of(mixer), getattr(mixer, "_forced_path", None))
    label = {"torch": _torch_label(kind), "kernels": "mamba-ssm kernels", "reference": "reference recurrence"}[path]
    return label, reason


def transformers_ssm_path(mixer: nn.Module, device: torch.device | None = None) -> tuple[str, str]:
    """(path, reason) for a transformers-owned SSM mixer (Jamba, Mamba, Mamba-2, ...) on `device`."""
    path, reason = lm_layer_path(mixer, device or _device_of(mixer))
    labels = {
        "engine": f"hybrid_vlm engine ({_torch_label(lm_mixer_kind(mixer) or 'mamba2')})",
        "transformers": "transformers torch reference",
        "kernels": "mamba-ssm kernels (transformers)",
    }
    return labels[path], reason


def ssm_layer_paths(model: nn.Module) -> dict[str, str]:
    """Qualified name -> path of every SSM layer of `model` on its device, as `hybrid_vlm.ssm` decides it: ours
    "kernels" / "torch" / "reference" (`ssm.COMPUTE_PATHS`), transformers' "kernels" / "engine" / "transformers"
    (`ssm.LM_MIXER_PATHS`)."""
    paths = {}
    for name, module in model.named_modules():
        if isinstance(module, _SSMMixerBase):
            paths[name] = mixer_path(module.kind, _device_of(module), module._forced_path)[0]
        elif lm_mixer_kind(module) is not None:
            paths[name] = lm_layer_path(module, _device_of(module))[0]
    return paths


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
    if lm_mixer_kind(module) is not None:
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
