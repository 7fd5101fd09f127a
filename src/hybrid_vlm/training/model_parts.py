"""Where the parts of a HybridVLM model are, under a PEFT wrapper or not: what the training helpers look up."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_peft_model(model: nn.Module) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def find_name(root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def find_part(model: nn.Module, attribute: str) -> nn.Module | None:
    """`model.<attribute>` or `model.model.<attribute>` (the ForConditionalGeneration wrapper keeps parts inside)."""
    for owner in (model, getattr(model, "model", None)):
        part = getattr(owner, attribute, None) if owner is not None else None
        if isinstance(part, nn.Module):
            return part
    return None


def required_part(model: nn.Module, attribute: str) -> tuple[nn.Module, str]:
    part = find_part(model, attribute)
    name = find_name(model, part)
    if part is None or name is None:
        raise ValueError(
            f"{type(model).__name__} has no `{attribute}`; these helpers expect a HybridVLM model "
            "(model.vision_tower, model.multi_modal_projector, model.language_model, lm_head)."
        )
    return part, name


def is_moe_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "experts", None), nn.Module)
