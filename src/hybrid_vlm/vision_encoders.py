"""Vision towers: one transformers encoder, or several fed the same picture (MambaVLM / Cobra).

The model asks a tower for *patch maps*: prefix-free `(num_views, grid_h * grid_w, width)` features in raster
order, one map per encoder. How the maps are fused (along channels or along the sequence) and projected is the
model's and the projector's business; what the maps are is the tower's. Towers that are not plain ViTs (Qwen2-VL's
patch-merging encoder) implement the same `encode_patch_maps` method and register a builder in
`VISION_TOWER_BUILDERS`.

Several encoders read one `pixel_values` tensor whose channels hold one normalised copy of the picture per encoder
(`3 * num_encoders` channels, encoder order): DINOv2 and SigLIP were trained with different means and stds, and
feeding both the same normalisation is a silent accuracy loss. The image processor writes those channels when its
`image_mean` / `image_std` are per-encoder lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig

from .config_options import VISION_FUSIONS
from .model_types import QWEN2VL_VISION_MODEL_TYPES
from .qwen2vl_vision import build_qwen2vl_vision_tower
from .token_counts import vision_prefix_token_count


class UnwrappedVisionModel(nn.Module):
    """A CLIP/SigLIP vision model seen without its `vision_model` wrapper (transformers 4.x has one, 5.x not;
    the structure decides, not the version).

    Registering the inner modules directly gives the unwrapped weight layout (`model.vision_tower.encoder...`)
    everywhere, so a folder saved by either line loads on the other; `forward` still runs the wrapped model (its
    hidden-state capture lives in its decorated forward). The modules are shared, not copied.
    """

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        for name, child in wrapped.vision_model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "wrapped", wrapped)  # not a registered child: no second copy of the keys
        self.config = wrapped.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    @property
    def _supports_sdpa(self) -> bool:  # what transformers asks a composite model's towers
        return bool(getattr(self.wrapped, "_supports_sdpa", False))

    @property
    def _supports_flash_attn(self) -> bool:
        return bool(getattr(self.wrapped, "_supports_flash_attn", False))


def unwrap_vision_model(encoder: nn.Module) -> nn.Module:
    """The encoder with the weight layout of the unwrapped vision models (see `UnwrappedVisionModel`)."""
    if isinstance(getattr(encoder, "vision_model", None), nn.Module):
        return UnwrappedVisionModel(encoder)
    return encoder


def build_single_encoder(vision_config: PretrainedConfig) -> nn.Module:
    """One ViT-style encoder from its config, with the same weight names on transformers 4.x and 5.x."""
    return unwrap_vision_model(AutoModel.from_config(vision_config))


def hidden_state_maps(
    encoder: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int],
    num_prefix_tokens: int,
    tower_outputs: list | None = None,
    output_attentions: bool = False,
) -> torch.Tensor:
    """The chosen hidden states of one ViT, concatenated on channels, without its CLS/register tokens.

    `tower_outputs`, when given, receives the encoder's own output (`last_hidden_state`, `hidden_states`, and
    `attentions` with `output_attentions`).
    """
    dtype = next(encoder.parameters()).dtype
    extra = {"output_attentions": True} if output_attentions else {}
    outputs = encoder(pixel_values.to(dtype), output_hidden_states=True, **extra)
    if tower_outputs is not None:
        tower_outputs.append(outputs)
    features = torch.cat([outputs.hidden_states[i] for i in layers], dim=-1)
    return features[:, num_prefix_tokens:]


class MultiVisionEncoder(nn.Module):
    """Several ViTs that see the same picture, each through its own normalisation (MambaVLM, Cobra).

    Weights live under `encoders.<i>` (`model.vision_tower.encoders.0...`), so tooling that skips the vision tower
    by name still skips all of them. Every encoder must produce the same patch grid (same image and patch size):
    both fusions pair the encoders' tokens position by position.
    """

    def __init__(self, vision_configs: Sequence[PretrainedConfig]) -> None:
        super().__init__()
        if len(vision_configs) < 2:
            raise ValueError("MultiVisionEncoder needs at least two vision configs; use one encoder directly.")
        self.configs = list(vision_configs)
        self.config = self.configs[0]
        self.encoders = nn.ModuleList(build_single_encoder(c) for c in self.configs)
        self.prefix_tokens = [vision_prefix_token_count(c) for c in self.configs]
        self.patch_size = int(self.config.patch_size)

    @property
    def num_encoders(self) -> int:
        return len(self.encoders)

    def map_widths(self, num_layers: int = 1) -> tuple[int, ...]:
        return tuple(int(c.hidden_size) * num_layers for c in self.configs)

    def encode_patch_maps(self, pixel_values: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        expected = 3 * self.num_encoders
        if pixel_values.shape[1] != expected:
            raise ValueError(
                f"This model has {self.num_encoders} vision encoders and needs pixel_values with {expected} channels "
                f"(one normalised RGB copy per encoder), got {pixel_values.shape[1]}. Use the model's processor "
                "(HybridVLMProcessor.from_model_config / AutoProcessor), whose image_mean/image_std hold one "
                "triple per encoder."
            )
        return [
            hidden_state_maps(encoder, pixel_values[:, 3 * i : 3 * i + 3], layers, prefix)
            for i, (encoder, prefix) in enumerate(zip(self.encoders, self.prefix_tokens))
        ]


def build_multi_encoder(vision_configs: Sequence[PretrainedConfig]) -> nn.Module:
    return MultiVisionEncoder(vision_configs)


# model_type of a vision config -> builder of a tower that has its own `encode_patch_maps` (non-ViT encoders).
VISION_TOWER_BUILDERS: dict[str, Callable[[PretrainedConfig], nn.Module]] = {
    model_type: build_qwen2vl_vision_tower for model_type in QWEN2VL_VISION_MODEL_TYPES  # Qwen2-VL (Vamba)
}


def build_vision_tower(vision_config: PretrainedConfig | Sequence[PretrainedConfig]) -> nn.Module:
    """The tower for a config (or a list of configs: several encoders)."""
    if isinstance(vision_config, (list, tuple)):
        if len(vision_config) == 1:
            vision_config = vision_config[0]
        else:
            return build_multi_encoder(vision_config)
    builder = VISION_TOWER_BUILDERS.get(vision_config.model_type)
    if builder is not None:
        return builder(vision_config)
    return build_single_encoder(vision_config)


def vision_no_split_modules(vision_configs: Sequence[PretrainedConfig]) -> set[str]:
    """Module classes of the encoders that must not be split across devices."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    names: set[str] = set()
    for config in vision_configs:
        try:
            model_class = MODEL_MAPPING[type(config)]
        except KeyError:  # a tower built by VISION_TOWER_BUILDERS from a config AutoModel does not map
            continue
        names |= set(getattr(model_class, "_no_split_modules", None) or [])
    return names


def encode_patch_maps(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int],
    num_prefix_tokens: int,
    frames_per_patch: int = 1,
    tower_outputs: list | None = None,
    output_attentions: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Patch maps of any tower, plus the prefix tokens of a single ViT (for `vision_feature_select_strategy="full"`).

    Towers with their own `encode_patch_maps` (several encoders, Qwen2-VL) never return a prefix.
    `frames_per_patch > 1`: video frames that the tower encodes in groups (Qwen2-VL's temporal patches).
    `tower_outputs` / `output_attentions`: see `hidden_state_maps` (a single ViT only; other towers add nothing).
    """
    if frames_per_patch > 1:
        return tower.encode_patch_maps(pixel_values, layers, frames_per_patch=frames_per_patch), None
    if hasattr(tower, "encode_patch_maps"):
        return tower.encode_patch_maps(pixel_values, layers), None
    if pixel_values.shape[1] != 3:
        raise ValueError(
            f"pixel_values must have 3 channels for this model's single vision encoder, got {pixel_values.shape[1]} "
            "(a processor for a several-encoder model writes one RGB copy per encoder)."
        )
    features = hidden_state_maps(tower, pixel_values, layers, 0, tower_outputs, output_attentions)
    prefix = features[:, :num_prefix_tokens] if num_prefix_tokens else None
    return [features[:, num_prefix_tokens:]], prefix


__all__ = [
    "VISION_FUSIONS",
    "VISION_TOWER_BUILDERS",
    "MultiVisionEncoder",
    "UnwrappedVisionModel",
    "build_vision_tower",
    "encode_patch_maps",
]
