"""The papers' training stages: which weights train (projector alignment, instruction tuning, full, Vamba's stage 1)."""

from __future__ import annotations

from torch import nn
from transformers.utils import logging

from ..vamba import is_added_weight
from .model_parts import is_peft_model, required_part

logger = logging.get_logger(__name__)

# Vamba's layers added to each decoder layer (names fixed by its checkpoint layout): trained alone in its stage 1.

TRAINING_STAGES: dict[str, str] = {
    "projector": "only the projector trains (LLaVA/LongLLaVA/MMJamba stage 1: modality alignment)",
    "projector+lm": "projector and language model (with lm_head) train; vision tower frozen (instruction tuning)",
    "full": "everything trains",
    "new-layers": "only layers added to a pretrained LM train (Vamba stage 1: cross-attention, alpha, vision mixer)",
}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) parameters count once."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def _parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: vision tower, language model (with lm_head), new layers, and the rest (the connector)."""
    vision, _ = required_part(model, "vision_tower")
    language_model, lm_name = required_part(model, "language_model")
    vision_ids = {id(p) for p in vision.parameters()}
    lm_ids = {id(p) for p in language_model.parameters()}
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is not None:
        lm_ids |= {id(p) for p in lm_head.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "lm": [], "new": [], "connector": []}
    for name, parameter in model.named_parameters():
        if id(parameter) in vision_ids:
            groups["vision"].append(parameter)
        elif id(parameter) in lm_ids:
            relative = name[len(lm_name) + 1 :] if name.startswith(lm_name + ".") else name
            groups["new" if is_added_weight(relative) else "lm"].append(parameter)
        else:
            groups["connector"].append(parameter)
    return groups


_STAGE_GROUPS = {
    "projector": ("connector",),
    "projector+lm": ("connector", "lm", "new"),
    "full": ("vision", "connector", "lm", "new"),
    "new-layers": ("new",),
}


def freeze_for_stage(model: nn.Module, stage: str) -> int:
    """Set `requires_grad` for one of the papers' training stages; return the number of trainable parameters.

    Stages: see `TRAINING_STAGES`. Parameters outside the vision tower and the language model (the projector and
    any other multimodal connector weights) count as the projector. For LoRA, use `lora_config` instead: stages
    decide which *base* weights train, which is not what an adapter model wants.
    """
    if stage not in _STAGE_GROUPS:
        raise ValueError(f"Unknown training stage {stage!r}; use one of: " + ", ".join(TRAINING_STAGES) + ".")
    if is_peft_model(model):
        raise ValueError(
            "freeze_for_stage() got a PEFT model: stages select base weights to train. Call it on the base model "
            "before get_peft_model, or choose adapter targets with lora_config(model, include_projector=...)."
        )
    groups = _parameter_groups(model)
    if stage == "new-layers" and not groups["new"]:
        raise ValueError(
            "Stage 'new-layers' trains layers added to a pretrained LM (Vamba's cross_attn, alpha and vision_mixer); "
            f"{type(model).__name__} has none. Use 'projector' for projector-only alignment."
        )
    active = set(_STAGE_GROUPS[stage])
    for group, parameters in groups.items():
        for parameter in parameters:
            parameter.requires_grad_(group in active)
    trainable, total = count_parameters(model)
    logger.info(f"freeze_for_stage({stage!r}): {trainable:,} of {total:,} parameters trainable.")
    return trainable
