"""Qwen2-VL's vision tower (ViT with 2-D RoPE + the 2x2 PatchMerger) as a HybridVLM vision tower.

Vamba (arXiv:2503.11579) keeps Qwen2-VL's vision side unchanged: the ViT and its merger, whose output already has the
language model's width. This module runs transformers' own `Qwen2VisionTransformerPretrainedModel` behind the
vision-tower seam (`encode_patch_maps`), so the numbers are transformers' and the weights load from a Qwen2-VL or a
Vamba checkpoint without renaming anything below `visual.`.

What differs from a CLIP-style tower:

* Qwen2-VL's image processor does not hand the model pictures but a flat list of patches, grouped by 2x2 merge
  window and with every image duplicated along time (`temporal_patch_size=2`). HybridVLM's processors produce
  ordinary `(batch, 3, H, W)` pixels; `patchify` turns them into exactly the layout
  `Qwen2VLImageProcessor` writes (tested against it), with `H` and `W` multiples of 28.
* The output is the merger's: one token per 2x2 patch window, LM-wide, in raster order over the `(H/28, W/28)`
  grid. So the effective patch size is 28, there are no prefix tokens, and the projector is an identity.
* There is one feature layer, the merged last block: `vision_feature_layer` does not apply. The config default
  (`-2`) and `-1` are accepted and both mean the merger's output; any other value is refused.
* Images only: a video frame is encoded as an image (duplicated along time), as HybridVLM encodes every frame.
  Video frames are paired as Qwen2-VL and Vamba do: `temporal_patch_size` consecutive frames form one temporal
  patch, so a video gets one token grid per frame pair (`VisualTokenSpec.video_temporal_patch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from .compat import merged_vision_features

# `model_type` of transformers' Qwen2VLVisionConfig: "qwen2_vl_vision" on 5.x; 4.x gives the vision config the
# composite's name, "qwen2_vl". Both name the same config class on their line.
from .model_types import QWEN2VL_VISION_MODEL_TYPES

# Feature layers accepted for this tower (the HybridVLMConfig default and "last"); both mean the merger's output.
ACCEPTED_FEATURE_LAYERS = (-2, -1)
# Keys of the vision-config dict that identify a composite Qwen2-VL config (it holds the vision config inside).
_COMPOSITE_KEYS = ("vision_config", "text_config")


def _vision_config_class() -> type[PretrainedConfig]:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

    return Qwen2VLVisionConfig


def is_qwen2vl_vision_config(config: Any) -> bool:
    """True for transformers' Qwen2-VL vision config (either line's class)."""
    return isinstance(config, _vision_config_class())


def qwen2vl_vision_config(value: Any) -> PretrainedConfig:
    """A `Qwen2VLVisionConfig` from a dict saved by either transformers line (model_type `qwen2_vl_vision` or 4.x's
    `qwen2_vl`), a vision config, or a full Qwen2-VL config / config dict (its vision part is taken)."""
    config_class = _vision_config_class()
    if isinstance(value, config_class):
        return value
    if isinstance(value, PretrainedConfig):
        vision = getattr(value, "vision_config", None)
        if getattr(value, "model_type", None) in QWEN2VL_VISION_MODEL_TYPES and vision is not None:
            return qwen2vl_vision_config(vision)
        raise TypeError(f"expected a Qwen2-VL (vision) config, got {type(value).__name__}.")
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a Qwen2-VL vision config or a dict, got {type(value).__name__}.")
    values = dict(value)
    if values.get("model_type") not in QWEN2VL_VISION_MODEL_TYPES:
        raise ValueError(
            f"model_type {values.get('model_type')!r} is not a Qwen2-VL vision config "
            f"(expected one of {list(QWEN2VL_VISION_MODEL_TYPES)})."
        )
    if any(key in values for key in _COMPOSITE_KEYS):  # a whole Qwen2-VL config: take its vision part
        vision = values.get("vision_config")
        if not isinstance(vision, (Mapping, PretrainedConfig)):
            raise ValueError("this Qwen2-VL config has no vision_config to take the vision tower from.")
        vision = dict(vision) if isinstance(vision, Mapping) else vision
        if isinstance(vision, dict):
            vision.setdefault("model_type", "qwen2_vl_vision")
        return qwen2vl_vision_config(vision)
    values.pop("model_type")
    known = set(config_class().to_dict())
    # Keep only fields this line's class knows (5.x adds rope_parameters; 4.x writes no such field), plus the
    # generic PretrainedConfig ones, so a config saved on one line builds on the other.
    return config_class(**{k: v for k, v in values.items() if k in known and k != "transformers_version"})


# Fields of a Qwen2-VL text config that a plain Qwen2 config takes unchanged (same modules, same weight names).
_QWEN2_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout", "bos_token_id",
    "eos_token_id", "pad_token_id",
)


def qwen2_text_config(source: Any) -> dict[str, Any]:
    """A plain `qwen2` text-config dict for the language model of a Qwen2-VL (or Vamba) config.

    `source`: a `Qwen2VLConfig` / its `text_config`, or a config.json dict (new nested or old flat layout). Qwen2-VL's
    LM is Qwen2 with M-RoPE; when every token's three position ids are equal (text, and HybridVLM's 1-D positions)
    M-RoPE is ordinary RoPE, so the LM becomes `qwen2` with the same weights and the same outputs. Rope scalings
    other than M-RoPE are refused rather than silently dropped.
    """
    if isinstance(source, PretrainedConfig):
        text = getattr(source, "text_config", None) or source
        values = text.to_dict()
        values.setdefault("rope_theta", getattr(text, "rope_theta", None))
    elif isinstance(source, Mapping):
        values = dict(source)
        if isinstance(values.get("text_config"), Mapping):
            values = {**{k: v for k, v in values.items() if k != "text_config"}, **values["text_config"]}
    else:
        raise TypeError(f"expected a Qwen2-VL config or a config dict, got {type(source).__name__}.")
    rope = values.get("rope_parameters") or values.get("rope_scaling") or {}
    kinds = {rope.get("type"), rope.get("rope_type")} - {None, "default", "mrope"}
    if kinds:
        raise NotImplementedError(
            f"the language model uses rope scaling {sorted(kinds)}; only Qwen2-VL's M-RoPE (plain RoPE for 1-D "
            "positions) is supported."
        )
    theta = values.get("rope_theta") or rope.get("rope_theta") or 1000000.0
    text = {k: values[k] for k in _QWEN2_TEXT_FIELDS if values.get(k) is not None}
    return {"model_type": "qwen2", **text, "rope_theta": float(theta)}


def patchify(
    pixel_values: torch.Tensor,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    frames_per_patch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, C, H, W)` images -> Qwen2-VL's flat patches `(B * gh * gw, C * temporal_patch_size * p * p)` and
    `grid_thw` `(B, 3)`, in the order `Qwen2VLImageProcessor` writes them.

    Every image is one temporal patch (the frame repeated `temporal_patch_size` times); patches are listed merge
    window by merge window (windows in raster order, the `merge_size x merge_size` patches of a window in raster
    order), each patch flattened as (channel, time, row, column). With `frames_per_patch=temporal_patch_size` the
    batch is a video's frames instead, and each run of that many consecutive frames is one temporal patch (Qwen2-VL's
    video layout): `B / temporal_patch_size` patches.
    """
    if pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}.")
    if frames_per_patch not in (1, temporal_patch_size):
        raise ValueError(f"frames_per_patch must be 1 or temporal_patch_size={temporal_patch_size}.")
    if pixel_values.shape[0] % frames_per_patch:
        raise ValueError(
            f"{pixel_values.shape[0]} frames cannot be paired into temporal patches of {frames_per_patch}; give a "
            f"multiple of {frames_per_patch} frames (the video processor's temporal_patch_size does that)."
        )
    batch, channels, height, width = pixel_values.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(
            f"Qwen2-VL's vision tower needs images whose sides are multiples of {factor} (patch {patch_size} x merge "
            f"{merge_size}), got {height}x{width}; the image processor resizes to such a size."
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    if frames_per_patch == 1:
        frames = pixel_values.unsqueeze(1).expand(batch, temporal_patch_size, channels, height, width)
    else:
        batch //= frames_per_patch
        frames = pixel_values.reshape(batch, temporal_patch_size, channels, height, width)
    patches = frames.reshape(
        batch, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )
    # -> (batch, window row, window col, row in window, col in window, channel, time, pixel row, pixel col)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(batch * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    grid_thw = torch.tensor([[1, grid_h, grid_w]] * batch, dtype=torch.long, device=pixel_values.device)
    return flat, grid_thw


def check_feature_layers(layers: Any) -> None:
    """Refuse a `vision_feature_layer` other than the default/last one: the tower has a single output."""
    values = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if len(values) != 1 or values[0] not in ACCEPTED_FEATURE_LAYERS:
        raise ValueError(
            f"vision_feature_layer={layers!r} does not apply to Qwen2-VL's vision tower: its only output is the "
            "patch merger applied to the last block (already the language model's width). Leave "
            "vision_feature_layer at its default (-2) or set -1; both mean that output."
        )


class Qwen2VLVisionEncoder(nn.Module):
    """transformers' Qwen2-VL vision model (blocks + merger) behind HybridVLM's vision-tower seam.

    The wrapped model's modules are registered directly on this one (`patch_embed`, `rotary_pos_emb`, `blocks`,
    `merger`), so the weights sit at `model.vision_tower.blocks.0...` - the names below `visual.` in Qwen2-VL and
    Vamba checkpoints - on both transformers lines. `forward` runs transformers' forward.
    """

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        config = qwen2vl_vision_config(config)
        wrapped = Qwen2VisionTransformerPretrainedModel._from_config(config)
        for name, child in wrapped.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "wrapped", wrapped)  # not a registered child: no second copy of the keys
        self.config = wrapped.config
        self._no_split_modules = list(getattr(wrapped, "_no_split_modules", None) or [])  # device_map="auto"
        self.vit_patch_size = int(config.patch_size)
        self.temporal_patch_size = int(config.temporal_patch_size)
        self.spatial_merge_size = int(config.spatial_merge_size)
        # Pixels per output token side, and the width of the single map: the merger's output (the LM's width).
        self.patch_size = self.vit_patch_size * self.spatial_merge_size
        self.map_widths: tuple[int, ...] = (int(config.hidden_size),)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Merged features `(B, (H/28) * (W/28), hidden_size)` of `(B, 3, H, W)` processed images."""
        return self.encode_patch_maps(pixel_values, [ACCEPTED_FEATURE_LAYERS[-1]])[0]

    def encode_patch_maps(
        self, pixel_values: torch.Tensor, layers: Sequence[int], frames_per_patch: int = 1
    ) -> list[torch.Tensor]:
        """One map: the merger's output for each image, in raster order over the `(H/28, W/28)` token grid.

        `frames_per_patch=temporal_patch_size`: `pixel_values` are a video's frames, paired into temporal patches
        (one output row per pair)."""
        check_feature_layers(layers)
        channels = int(self.config.in_channels)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must be (batch, {channels}, height, width) images for Qwen2-VL's vision tower, got "
                f"{tuple(pixel_values.shape)}."
            )
        _, _, height, width = pixel_values.shape
        flat, grid_thw = patchify(
            pixel_values, self.vit_patch_size, self.temporal_patch_size, self.spatial_merge_size, frames_per_patch
        )
        batch = grid_thw.shape[0]
        dtype = self.patch_embed.proj.weight.dtype
        output = self.wrapped(flat.to(dtype), grid_thw=grid_thw)
        merged = merged_vision_features(output)
        tokens = (height // self.patch_size) * (width // self.patch_size)
        return [merged.reshape(batch, tokens, merged.shape[-1])]


def build_qwen2vl_vision_tower(vision_config: PretrainedConfig) -> nn.Module:
    """Builder registered in `vision_encoders.VISION_TOWER_BUILDERS` for both lines' model_type."""
    return Qwen2VLVisionEncoder(vision_config)


__all__ = [
    "QWEN2VL_VISION_MODEL_TYPES",
    "Qwen2VLVisionEncoder",
    "build_qwen2vl_vision_tower",
    "check_feature_layers",
    "is_qwen2vl_vision_config",
    "patchify",
    "qwen2_text_config",
    "qwen2vl_vision_config",
]
