"""The one place that says how many LM tokens a picture becomes.

The processor uses it to expand each `<image>` placeholder; the model uses it to check the features it produced.
Keeping a single copy of this arithmetic is what stops processor and model from disagreeing (CLS token or not,
register tokens, pooling), which otherwise surfaces as a shape error deep inside the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral
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
    # Side each view's patch grid is pooled to before the projector (LongLLaVA: 24x24 -> 12x12); None: no pooling.
    pooled_grid: int | None = None

    @classmethod
    def from_config(cls, config: Any) -> VisualTokenSpec:
        """Derive the spec from a `HybridVLMConfig`."""
        vision_config = config.vision_config
        return cls(
            patch_size=int(vision_config.patch_size),
            num_prefix_tokens=vision_prefix_token_count(vision_config),
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            pooled_grid=getattr(config, "vision_pooled_grid", None),
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
    if spec.pooled_grid is not None:
        if spec.pooled_grid > min(height, width) // spec.patch_size:
            raise ValueError(
                f"pooled_grid {spec.pooled_grid} is larger than the {height // spec.patch_size}x"
                f"{width // spec.patch_size} patch grid of a {height}x{width} image; pooling only reduces."
            )
        patches = spec.pooled_grid * spec.pooled_grid
    if spec.vision_feature_select_strategy == "full":
        return patches + spec.num_prefix_tokens
    return patches


# How a video is laid out in the prompt. Both put one placeholder token (the video token) per visual feature; they
# differ in the marker tokens around the frames. Every marker is one special token (the processor checks).
#   plain:     <video> x (frames * tokens per frame)
#   longllava: <vid> <img>[frame 0]</img> <t> <img>[frame 1]</img> ... <img>[frame F-1]</img> </vid>
VIDEO_LAYOUTS: tuple[str, ...] = ("plain", "longllava")


def count_video_tokens(
    spec: VisualTokenSpec,
    num_frames: int,
    height: int,
    width: int,
    layout: str = "plain",
    include_markers: bool = True,
) -> int:
    """Number of LM tokens one video of `num_frames` frames of `height` x `width` pixels (as fed to the encoder) is.

    Every frame is encoded like an image, so the feature count is `num_frames * count_image_tokens(...)`: that is what
    the model scatters into the video-token positions, and what `include_markers=False` returns for any layout. With
    `include_markers=True` (the default) the layout's marker tokens are added, i.e. the length of the whole expansion
    of one `<video>` placeholder: `longllava` adds `<vid>`, `</vid>`, `<img>`/`</img>` per frame and a `<t>` between
    consecutive frames (3 * num_frames + 1); `plain` adds none. The processor uses both numbers, the model the first.
    """
    if layout not in VIDEO_LAYOUTS:
        raise ValueError(f"Unknown video layout {layout!r}; use one of {list(VIDEO_LAYOUTS)}.")
    if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1:
        raise ValueError(f"A video needs at least one frame, got num_frames={num_frames!r}.")
    num_frames = int(num_frames)
    tokens = num_frames * count_image_tokens(spec, height, width)
    if include_markers and layout == "longllava":
        # <vid> + </vid>, <img> + </img> around every frame, <t> between consecutive frames.
        tokens += 2 + 2 * num_frames + (num_frames - 1)
    return tokens
