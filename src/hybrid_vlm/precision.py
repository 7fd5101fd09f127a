"""Warn when a model with SSM (Mamba) layers trains in fp16.

The selective scan's state and `dt = softplus(...)` overflow fp16's range (max 65504) on long sequences: the loss
turns into inf/NaN after some steps, or gradients are silently clipped away. bf16 has fp32's range and is the safe
half-precision choice; fp32 always works. This module has no training dependencies (no trl/peft): the model's
forward calls `warn_if_fp16_with_ssm` while training, so the warning reaches users of any trainer loop.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .ssm import is_ssm_mixer

logger = logging.get_logger(__name__)

__all__ = ["FP16_SSM_WARNING", "find_ssm_mixers", "fp16_training_reason", "warn_if_fp16_with_ssm"]

FP16_SSM_WARNING = (
    "{model} has {count} SSM (Mamba) layer(s) and is training in fp16 ({reason}). The SSM state and the step size dt "
    "overflow fp16's range (max 65504): expect inf/NaN losses or silently lost gradients. Train in bf16 "
    "(TrainingArguments(bf16=True), GPUs from Ampere on) or fp32 instead."
)
_CACHE_ATTRIBUTE = "_hybrid_vlm_ssm_mixers"
_warned: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def find_ssm_mixers(model: nn.Module) -> list[nn.Module]:
    """The model's SSM mixer modules (cached on the model: the forward pass asks every step)."""
    cached = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cached is None:
        cached = [module for module in model.modules() if is_ssm_mixer(module)]
        model.__dict__[_CACHE_ATTRIBUTE] = cached
    return cached


def _autocast_fp16() -> str | None:
    for device_type in ("cuda", "cpu", "xpu", "mps"):
        try:
            if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
                return f"{device_type} autocast to float16"
        except (RuntimeError, ValueError, TypeError):  # device type unknown to this torch build
            continue
    return None


def fp16_training_reason(model: nn.Module, args: Any = None) -> str | None:
    """Why this model is (about to be) trained in fp16, or None: `args.fp16`, fp16 autocast, or fp16 SSM weights."""
    if args is not None and (getattr(args, "fp16", False) or getattr(args, "fp16_full_eval", False)):
        return "fp16=True in the training arguments"
    reason = _autocast_fp16()
    if reason is not None:
        return reason
    for mixer in find_ssm_mixers(model):
        if any(parameter.dtype == torch.float16 for parameter in mixer.parameters()):
            return "SSM weights stored as float16"
        break  # one mixer tells: a model is cast as a whole
    return None


def warn_if_fp16_with_ssm(model: nn.Module, args: Any = None) -> bool:
    """Log a warning (once per model) when a model with SSM layers trains in fp16; return whether it warned.

    `args` is an optional `TrainingArguments` (its `fp16` flag is checked, so this can run before training too).
    Transformer-only models never warn, and neither does bf16 or fp32.
    """
    mixers = find_ssm_mixers(model)
    if not mixers or model in _warned:
        return False
    reason = fp16_training_reason(model, args)
    if reason is None:
        return False
    _warned.add(model)
    logger.warning(FP16_SSM_WARNING.format(model=type(model).__name__, count=len(mixers), reason=reason))
    return True
