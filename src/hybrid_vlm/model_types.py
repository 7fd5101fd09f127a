"""What this library knows about each transformers model type it builds on: one row per language model and vision
encoder type, read by every module that needs such a fact.

A language-model row says whether the LM carries recurrent state (SSM or short-conv layers), whether it has any
attention at all, which transformers classes are its recurrent layers, which selective scan they run and whether
:mod:`hybrid_vlm.ssm_engine` serves them. A vision-encoder row says how many tokens the encoder emits before its patch
grid, whether it resizes its position embeddings to any input, which composite config holds it, and how its own image
processor prepares a picture. Adding a language model or a vision encoder that behaves like a listed one is one row
here (``docs/architecture.md`` shows it); ``tests/test_model_types.py`` checks every row against the installed
transformers.

This module imports neither torch nor transformers: configuration code and tools read it without loading models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLIP_PRESET",
    "COMPOSITE_VISION_TYPES",
    "DINOV2_PRESET",
    "ENGINE_MODEL_TYPES",
    "INTERPOLATING_VISION_TYPES",
    "LANGUAGE_MODEL_TYPES",
    "QWEN2VL_PRESET",
    "QWEN2VL_VISION_MODEL_TYPES",
    "SIGLIP_PRESET",
    "SSM_MIXER_CLASSES",
    "SSM_MODEL_TYPES",
    "SSM_ONLY_MODEL_TYPES",
    "VISION_ENCODER_TYPES",
    "VISION_MODEL_TYPES",
    "ImagePreset",
    "LanguageModelType",
    "VisionEncoderType",
    "engine_mixer_kinds",
    "has_ssm_layers",
    "language_model_type",
    "vision_encoder_type",
]

# ---------------------------------------------------------------------------------------------------------------
# Language models
# ---------------------------------------------------------------------------------------------------------------

SCANS = ("mamba1", "mamba2")


@dataclass(frozen=True)
class LanguageModelType:
    """Traits of a transformers language model type (a type not in the table is a plain attention LM).

    mixers: transformers class names of its recurrent layers (the modules that hold SSM or conv state).
    scan: the selective scan those mixers run, "mamba1" (a state per channel) or "mamba2" (a scalar decay per head);
        None for recurrent layers that are not a selective SSM (LFM2's gated short convolution).
    attention: whether it has attention layers at all; False for SSM-only LMs, whose cache has no sequence length.
    engine: whether :mod:`hybrid_vlm.ssm_engine` runs every one of its mixers (needs a scan).
    """

    mixers: tuple[str, ...] = ()
    scan: str | None = None
    attention: bool = True
    engine: bool = False

    def __post_init__(self) -> None:
        if self.scan is not None and self.scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS} or None, got {self.scan!r}.")
        if (self.scan or self.engine or not self.attention) and not self.mixers:
            raise ValueError("a language model with a scan, the engine or no attention needs its mixer class names.")
        if self.engine and self.scan is None:
            raise ValueError("the SSM engine runs selective scans only: set scan='mamba1' or 'mamba2'.")

    @property
    def recurrent(self) -> bool:
        """Carries state from token to token (padding and cache continuation need care)."""
        return bool(self.mixers)


LANGUAGE_MODEL_TYPES: dict[str, LanguageModelType] = {
    "mamba": LanguageModelType(mixers=("MambaMixer",), scan="mamba1", attention=False, engine=True),
    "falcon_mamba": LanguageModelType(mixers=("FalconMambaMixer",), scan="mamba1", attention=False),
    "mamba2": LanguageModelType(mixers=("Mamba2Mixer",), scan="mamba2", attention=False, engine=True),
    "jamba": LanguageModelType(mixers=("JambaMambaMixer",), scan="mamba1", engine=True),
    "zamba": LanguageModelType(mixers=("ZambaMambaMixer",), scan="mamba1"),
    "bamba": LanguageModelType(mixers=("BambaMixer",), scan="mamba2", engine=True),
    "granitemoehybrid": LanguageModelType(mixers=("GraniteMoeHybridMambaLayer",), scan="mamba2"),
    "zamba2": LanguageModelType(mixers=("Zamba2MambaMixer",), scan="mamba2", engine=True),
    "nemotron_h": LanguageModelType(mixers=("NemotronHMamba2Mixer",), scan="mamba2", engine=True),
    "falcon_h1": LanguageModelType(mixers=("FalconH1Mixer",), scan="mamba2", engine=True),
    "lfm2": LanguageModelType(mixers=("Lfm2ShortConv",)),
}

_ATTENTION_LM = LanguageModelType()


def language_model_type(model_type: str | None) -> LanguageModelType:
    """The row of a language model type; a type not in the table is an attention-only LM."""
    return LANGUAGE_MODEL_TYPES.get(model_type or "", _ATTENTION_LM)


def has_ssm_layers(text_config: Any) -> bool:
    """Whether the language model carries recurrent state (so padding and cache continuation need care)."""
    return language_model_type(getattr(text_config, "model_type", None)).recurrent


# Read-only views of the table, for code that asks "is this type one of ...".
SSM_MODEL_TYPES = tuple(name for name, row in LANGUAGE_MODEL_TYPES.items() if row.recurrent)
SSM_ONLY_MODEL_TYPES = tuple(name for name, row in LANGUAGE_MODEL_TYPES.items() if not row.attention)
ENGINE_MODEL_TYPES = tuple(name for name, row in LANGUAGE_MODEL_TYPES.items() if row.engine)
# transformers' selective-SSM mixer class -> its scan ("mamba1" / "mamba2").
SSM_MIXER_CLASSES = {mixer: row.scan for row in LANGUAGE_MODEL_TYPES.values() if row.scan for mixer in row.mixers}


def engine_mixer_kinds() -> dict[str, str]:
    """transformers mixer class -> scan, for the mixers the SSM engine runs."""
    return {mixer: row.scan for row in LANGUAGE_MODEL_TYPES.values() if row.engine for mixer in row.mixers}


# ---------------------------------------------------------------------------------------------------------------
# Vision encoders
# ---------------------------------------------------------------------------------------------------------------

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

RESIZE_MODES = ("shortest_edge", "squash")


@dataclass(frozen=True)
class ImagePreset:
    """How an encoder's own image processor prepares a picture (what `HybridVLMImageProcessor.from_vision_config`
    reproduces).

    resize: "shortest_edge" (scale the short side to the input size, then centre-crop a square) or "squash" (scale
        to exactly the input size, no crop).
    resample: PIL filter name.
    size: the input side when the encoder takes any size (the config has no fixed `image_size`); None: the config's.
    """

    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resize: str = "shortest_edge"
    resample: str = "bicubic"
    size: int | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}.")


TOWERS = ("vit", "qwen2_vl")


@dataclass(frozen=True)
class VisionEncoderType:
    """Traits of a vision encoder config type.

    preprocessing: the picture its own processor makes (mean/std, resize, filter).
    class_tokens: tokens before the patch grid that every input gets (CLS: CLIP and DINOv2 1, SigLIP 0).
    register_tokens_field: config field counting extra register tokens after the class token (DINOv2 with
        registers, "Vision Transformers Need Registers", arXiv:2309.16588), or None.
    interpolates_position_embeddings: resizes its position embeddings to any input size, so its `image_size` is not
        the size it must be fed (DINOv2).
    composite: model_type of the vision + text config that holds this one as `vision_config` ("clip" for CLIP).
    tower: "vit" (transformers' AutoModel; hidden states with the prefix tokens first) or "qwen2_vl" (Qwen2-VL's
        patch-merging tower, `hybrid_vlm.qwen2vl_vision`: any image size, no prefix, no feature layers).
    merge_size_field / temporal_patch_field: config fields for patches merged per side into one output token and
        video frames per temporal patch (Qwen2-VL's `spatial_merge_size`, `temporal_patch_size`), or None.
    """

    preprocessing: ImagePreset
    class_tokens: int = 0
    register_tokens_field: str | None = None
    interpolates_position_embeddings: bool = False
    composite: str | None = None
    tower: str = "vit"
    merge_size_field: str | None = None
    temporal_patch_field: str | None = None

    def __post_init__(self) -> None:
        if self.tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, got {self.tower!r}.")

    def prefix_tokens(self, config: Any) -> int:
        """Tokens the encoder emits before its patch grid, for this config."""
        registers = int(getattr(config, self.register_tokens_field)) if self.register_tokens_field else 0
        return self.class_tokens + registers


CLIP_PRESET = ImagePreset(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize="shortest_edge")
SIGLIP_PRESET = ImagePreset(IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, resize="squash")
# DINOv2's own processor resizes to 256 and crops 224; we resize and crop to the config's image_size.
DINOV2_PRESET = ImagePreset(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resize="shortest_edge")
# Qwen2-VL takes any size whose sides are multiples of 28 (patch 14 x merge 2); we squash to a fixed square
# (448: 16x16 = 256 tokens; the processor's size= changes it).
QWEN2VL_PRESET = ImagePreset(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize="squash", size=448)

# Qwen2-VL's vision config is 'qwen2_vl_vision' on transformers 5.x; 4.x gives it the composite's name 'qwen2_vl'.
_QWEN2VL_VISION = VisionEncoderType(
    QWEN2VL_PRESET, tower="qwen2_vl", merge_size_field="spatial_merge_size", temporal_patch_field="temporal_patch_size"
)

VISION_ENCODER_TYPES: dict[str, VisionEncoderType] = {
    "clip_vision_model": VisionEncoderType(CLIP_PRESET, class_tokens=1, composite="clip"),
    "siglip_vision_model": VisionEncoderType(SIGLIP_PRESET, composite="siglip"),
    "dinov2": VisionEncoderType(DINOV2_PRESET, class_tokens=1, interpolates_position_embeddings=True),
    "dinov2_with_registers": VisionEncoderType(
        DINOV2_PRESET,
        class_tokens=1,
        register_tokens_field="num_register_tokens",
        interpolates_position_embeddings=True,
    ),
    "qwen2_vl_vision": _QWEN2VL_VISION,
    "qwen2_vl": _QWEN2VL_VISION,
}


def vision_encoder_type(model_type: str | None) -> VisionEncoderType:
    """The row of a vision encoder type; a clear error for one HybridVLM cannot use."""
    row = VISION_ENCODER_TYPES.get(model_type or "")
    if row is None:
        raise ValueError(
            f"Unknown vision encoder '{model_type}': HybridVLM knows {list(VISION_ENCODER_TYPES)}. A new encoder is a "
            "row in hybrid_vlm.model_types.VISION_ENCODER_TYPES."
        )
    return row


VISION_MODEL_TYPES = tuple(VISION_ENCODER_TYPES)
INTERPOLATING_VISION_TYPES = tuple(
    name for name, row in VISION_ENCODER_TYPES.items() if row.interpolates_position_embeddings
)
COMPOSITE_VISION_TYPES = tuple(dict.fromkeys(row.composite for row in VISION_ENCODER_TYPES.values() if row.composite))
QWEN2VL_VISION_MODEL_TYPES = tuple(name for name, row in VISION_ENCODER_TYPES.items() if row.tower == "qwen2_vl")
