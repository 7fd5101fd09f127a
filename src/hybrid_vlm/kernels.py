"""Which fast kernels are installed, and switching transformers 4.x mixers to the PyTorch path when they are not."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn
from transformers.utils import logging

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


def use_torch_ssm_path_where_needed(language_model: nn.Module, device: torch.device | str | None = None) -> bool:
    """transformers 4.x Jamba raises when `use_mamba_kernels` is set without kernels; fall back to its torch path.

    Returns whether any mixer was switched, and logs once which path runs.
    """
    if mamba_kernels_usable(device):
        return False
    switched = False
    for module in language_model.modules():
        if getattr(module, "use_fast_kernels", False):
            module.use_fast_kernels = False
            switched = True
    if switched:
        logger.warning_once(
            "hybrid_vlm: mamba-ssm/causal-conv1d kernels are not usable here (not installed or not on CUDA); "
            "the language model's SSM layers run their pure-PyTorch path."
        )
    return switched
