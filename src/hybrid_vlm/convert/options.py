"""What a conversion can be asked beyond source, destination and kind (torch-free, so the CLI's parser is cheap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "ConvertOptions"]

# Largest safetensors file written (transformers' own default for `save_pretrained` on the 4.x line).
DEFAULT_MAX_SHARD_SIZE = "5GB"


@dataclass
class ConvertOptions:
    """Options that only some kinds read; a kind's recipe ignores the others."""

    vision_config: Any = None  # LongLLaVA: the CLIP tower's config when the weights and name cannot tell it
    vision_towers: Sequence[Any] | None = None  # Cobra: (DINOv2 folder, SigLIP folder), frozen and not in the run
