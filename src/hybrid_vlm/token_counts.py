"""The one place that says how many LM tokens a picture becomes.

The processor uses it to expand each `<image>` placeholder; the model uses it to check the features it produced.
Keeping a single copy of this arithmetic is what stops processor and model from disagreeing (CLS token or not,
register tokens, pooling), which otherwise surfaces as a shape error deep inside the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig


def vision_prefix_token_count(vision_config: PretrainedConfig) -> int:
    """Tokens a vision encoder emits before its patch grid: CLS for CLIP/DINOv2, plus DINOv2's register tokens."""
    model_type = vision_config.model_type
    if model_type == "siglip_vision_model":
        return 0
    if model_type == "dinov2_with_registers":
        return 1 + int(vision_config.num_register_tokens)
    if model_type in ("clip_vision_model", "dinov2"):
        return 1
    raise ValueError(f"Unknown vision encoder '{model_type}': cannot tell how many prefix tokens it emits.")


@dataclass(frozen=True)
class VisualTokenSpec:
    """What the token count of one image depends on; the processor stores it, the model derives it."""

    patch_size: int
    num_prefix_tokens: int
    vision_feature_select_strategy: str = "default"

    @classmethod
    def from_config(cls, config: Any) -> VisualTokenSpec:
        """Derive the spec from a `HybridVLMConfig`."""
        vision_config = config.vision_config
        return cls(
            patch_size=int(vision_config.patch_size),
            num_prefix_tokens=vision_prefix_token_count(vision_config),
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_image_tokens(spec: VisualTokenSpec, height: int, width: int) -> int:
    """Number of LM tokens one image of `height` x `width` pixels (as fed to the encoder) turns into."""
    if height <= 0 or width <= 0:
        raise ValueError(f"Image size must be positive, got {height}x{width}.")
    if height % spec.patch_size or width % spec.patch_size:
        raise ValueError(
            f"Image size {height}x{width} is not a multiple of the encoder's patch size {spec.patch_size}; "
            "resize or crop to a multiple of it (the image processor does this for you)."
        )
    patches = (height // spec.patch_size) * (width // spec.patch_size)
    if spec.vision_feature_select_strategy == "full":
        return patches + spec.num_prefix_tokens
    return patches
