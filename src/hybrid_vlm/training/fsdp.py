"""FSDP wrapping: the layer classes of a model to shard as units."""

from __future__ import annotations

from torch import nn

from .model_parts import unwrap


def fsdp_wrap_classes(model: nn.Module) -> list[str]:
    """Layer class names to wrap with FSDP (`fsdp_transformer_layer_cls_to_wrap`) or to keep whole on one device.

    The model's collected `_no_split_modules` (vision tower + language model), limited to classes that really occur in
    it: transformers 5 lists, e.g., CLIP's text embeddings for a vision-only tower (accelerate then refuses the
    name), and on transformers 4.x the attribute of the outer model is empty (accelerate would wrap nothing).
    """
    base = unwrap(model)
    names: set[str] = set()
    present: set[str] = set()
    for module in base.modules():  # every sub-model's own list (the same on both transformers lines)
        names.update(getattr(module, "_no_split_modules", None) or [])
        present.add(type(module).__name__)
    found = sorted(names & present)
    if not found:
        raise ValueError(f"{type(base).__name__} declares no layer class to wrap (_no_split_modules is empty).")
    return found
