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


# ---------------------------------------------------------------------------------------------------------------
# Token arithmetic (pure: no torch). The projectors (projectors.py) that change token counts.
# ---------------------------------------------------------------------------------------------------------------

# Projectors whose output has one token per input token.
TOKEN_PRESERVING_PROJECTORS = ("mlp2x_gelu", "mlp3x_gelu", "mamba")
# Projectors that pool each view's patch grid to a fixed side.
POOLING_PROJECTORS = ("pool2d_mlp", "pool1d_mlp")
# Projectors that need a plain patch grid (no CLS/register prefix in the way).
GRID_ONLY_PROJECTORS = ("conv2d_adapter", "mamba")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def projector_output_grid(
    projector_type: str,
    grid: tuple[int, int],
    *,
    pooled_grid: int | None = None,
    conv_kernel: int = 2,
    conv_stride: int | None = None,
) -> tuple[int, int]:
    """(height, width) of one map's tokens after the projector, from its patch grid (prefix tokens not included).

    MLPs and the Mamba projector keep the grid; ``pool2d_mlp`` / ``pool1d_mlp`` give ``pooled_grid`` squared (for
    1-D pooling that is a token count, not a spatial layout); ``conv2d_adapter`` gives the output of a convolution
    without padding: ``(side - kernel) // stride + 1``.
    """
    height, width = (_positive_int(int(v), "grid side") for v in grid)
    if projector_type in POOLING_PROJECTORS:
        if pooled_grid is None:
            raise ValueError(f"projector_type '{projector_type}' needs a pooled grid side (LongLLaVA: 12).")
        side = _positive_int(pooled_grid, "pooled_grid")
        if side > min(height, width):
            raise ValueError(
                f"pooled_grid {side} is larger than the {height}x{width} patch grid; pooling only reduces."
            )
        return side, side
    if projector_type == "conv2d_adapter":
        kernel = _positive_int(conv_kernel, "conv_kernel")
        stride = kernel if conv_stride is None else _positive_int(conv_stride, "conv_stride")
        if kernel > min(height, width):
            raise ValueError(f"conv2d_adapter: kernel {kernel} is larger than the {height}x{width} patch grid.")
        return (height - kernel) // stride + 1, (width - kernel) // stride + 1
    if projector_type in TOKEN_PRESERVING_PROJECTORS:
        return height, width
    known = [*TOKEN_PRESERVING_PROJECTORS, *POOLING_PROJECTORS, "conv2d_adapter"]
    raise ValueError(f"Unknown projector_type '{projector_type}'. Choose one of {known}.")



@dataclass(frozen=True)
class VisualTokenSpec:
    """What the token count of one image depends on; the processor stores it, the model derives it."""

    patch_size: int
    num_prefix_tokens: int
    vision_feature_select_strategy: str = "default"
    # Side each view's patch grid is pooled to, by the model (`vision_pooled_grid`) or inside the projector
    # (`pool2d_mlp` / `pool1d_mlp`: `projector_pooled_grid`); LongLLaVA: 24x24 -> 12x12. None: no pooling.
    pooled_grid: int | None = None
    # (kernel, stride) of the `conv2d_adapter` projector, which shrinks each view's grid; None for other projectors.
    projector_conv: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, config: Any) -> VisualTokenSpec:
        """Derive the spec from a `HybridVLMConfig`."""
        vision_config = config.vision_config
        projector_type = getattr(config, "projector_type", "mlp2x_gelu")
        pooled_grid = getattr(config, "vision_pooled_grid", None)
        if projector_type in POOLING_PROJECTORS:
            pooled_grid = config.projector_pooled_grid
        projector_conv = None
        if projector_type == "conv2d_adapter":
            kernel = config.projector_conv_kernel
            projector_conv = (kernel, config.projector_conv_stride or kernel)
        return cls(
            patch_size=int(vision_config.patch_size),
            num_prefix_tokens=vision_prefix_token_count(vision_config),
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            pooled_grid=pooled_grid,
            projector_conv=projector_conv,
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
    grid = (height // spec.patch_size, width // spec.patch_size)
    if spec.pooled_grid is not None:
        grid = projector_output_grid("pool2d_mlp", grid, pooled_grid=spec.pooled_grid)
    if spec.projector_conv is not None:
        kernel, stride = spec.projector_conv
        grid = projector_output_grid("conv2d_adapter", grid, conv_kernel=kernel, conv_stride=stride)
    patches = grid[0] * grid[1]
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
