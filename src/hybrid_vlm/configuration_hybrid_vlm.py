"""Configuration of HybridVLM: a vision encoder, a projector and any causal language model transformers knows."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

# transformers 4.x remote code copies only the relative imports written in this file, but then walks the copies
# recursively: every module reachable from here (validation uses projectors and vamba) is imported directly.
from .anyres import check_pinpoints, pool_2d  # noqa: F401
from .compat import decode_special_floats, portable_rope_fields
from .projectors import validate_projector_settings
from .qwen2vl_vision import QWEN2VL_VISION_MODEL_TYPES, check_feature_layers, qwen2vl_vision_config
from .ssm import SSMBlock  # noqa: F401
from .token_counts import ANYRES_MERGES, FEATURE_SELECT_STRATEGIES, VisualTokenSpec
from .vision_encoders import VISION_FUSIONS

# Values accepted by the structural settings. Later families extend these tuples; the model dispatches on them.
DECODERS = ("interleaved", "vamba")
PROJECTOR_TYPES = ("mlp2x_gelu", "mlp3x_gelu", "pool2d_mlp", "pool1d_mlp", "conv2d_adapter", "mamba", "identity")
# Vision encoders whose output layout (prefix tokens + a square patch grid) the token-count function knows.
VISION_MODEL_TYPES = (
    "clip_vision_model", "siglip_vision_model", "dinov2", "dinov2_with_registers", *QWEN2VL_VISION_MODEL_TYPES
)
# Encoders that resize their position embeddings to the input (their image_size is not their input size).
INTERPOLATING_VISION_TYPES = ("dinov2", "dinov2_with_registers")
# Composite configs that carry a vision config inside them; we take the vision part.
_COMPOSITE_VISION_TYPES = ("clip", "siglip")


def _as_config(value: Any, name: str, default_type: str) -> PretrainedConfig:
    """Turn a dict (as found in config.json) or None into a transformers config object."""
    if value is None:
        return CONFIG_MAPPING[default_type]()
    model_type = value.get("model_type") if isinstance(value, dict) else getattr(value, "model_type", None)
    if "vision_config" in name and model_type in QWEN2VL_VISION_MODEL_TYPES:
        # Qwen2-VL's vision config is 'qwen2_vl_vision' on 5.x and 'qwen2_vl' (the composite's name) on 4.x.
        return qwen2vl_vision_config(decode_special_floats(value) if isinstance(value, dict) else value)
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        model_type = value.get("model_type")
        if model_type is None:
            raise ValueError(f"`{name}` is a dict without a `model_type`; add e.g. model_type='{default_type}'.")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(
                f"`{name}` has model_type '{model_type}', which this transformers version does not know. "
                "Upgrade transformers or pick another model."
            )
        kwargs = {k: decode_special_floats(v) for k, v in value.items() if k != "model_type"}
        return CONFIG_MAPPING[model_type](**portable_rope_fields(kwargs))
    raise TypeError(f"`{name}` must be a transformers config, a dict or None, got {type(value).__name__}.")


def _vision_part(config: PretrainedConfig) -> PretrainedConfig:
    """A composite CLIP/SigLIP config stands for its vision part."""
    if config.model_type in _COMPOSITE_VISION_TYPES and hasattr(config, "vision_config"):
        return config.vision_config
    return config


class HybridVLMConfig(PretrainedConfig):
    r"""
    Configuration of a [`HybridVLMForConditionalGeneration`].

    The three model families are configurations of this one class: the vision side (`vision_config`), the projector
    (`projector_type`), how vision reaches the language model (`decoder`) and the language model (`text_config`,
    any causal LM transformers ships: Jamba, Mamba, Mamba2, Bamba, Zamba2, NemotronH, FalconH1, Llama, Qwen2, ...).

    Args:
        vision_config: vision encoder config (CLIP, SigLIP or DINOv2 vision config, or a dict with `model_type`).
            Defaults to CLIP ViT-L/14 at 336 px. A list of configs puts several encoders side by side (MambaVLM,
            Cobra: DINOv2 + SigLIP); `vision_config` then holds the first and `extra_vision_configs` the others
            (transformers expects one config object there), and `vision_configs` lists them all.
        anyres_max_feature_tiles: AnyRes: LLaVA-OneVision's `anyres_max_N` (N here; OneVision: 9): after un-padding,
            a tile feature map larger than 1.1x N views' tokens is scaled down bilinearly. None: no cap.
        video_pool_stride: videos: pool every frame's projected feature grid to ceil(side / stride) with bilinear
            interpolation (LLaVA-OneVision: 2). None: frames are encoded like images.
        video_newline: videos: the learned `image_newline` embedding after each video's tokens (LLaVA-OneVision).
        vision_fusion: how several encoders' patch maps are combined: `"channel"` (Cobra: one token per patch with
            the widths concatenated) or `"sequence"` (MambaVLM: every encoder's tokens, encoder after encoder, the
            "visual long sequence"). Ignored with one encoder.
        text_config: causal language model config (or a dict with `model_type`). Defaults to Jamba.
        decoder_type: how visual features reach the LM. `"interleaved"`: projected features replace the placeholder
            tokens in the LM input (LLaVA style). `"vamba"`: text tokens see the visual tokens only through a
            per-layer cross-attention while a Mamba block updates the visual stream (see docs/vamba.md).
            Also accepted as `decoder=`; it is stored as `decoder_type`
            because transformers reserves `config.decoder` for the decoder sub-config of encoder-decoder models.
        projector_type: `"mlp2x_gelu"` (LLaVA's two-layer MLP), `"mlp3x_gelu"` (Cobra's fused 3-layer MLP),
            `"pool2d_mlp"` / `"pool1d_mlp"` (LongLLaVA's pooling, and its 1-D ablation, then the 2-layer MLP),
            `"conv2d_adapter"` (MMJamba's video adapter), `"mamba"` (MambaVLM's cross-stitch Mamba projector).
            See docs/projectors.md.
        projector_hidden_act: activation of the MLP projector.
        multimodal_projector_bias: whether the projector's linear layers have biases.
        vision_feature_layer: hidden-state index (or list of indices, concatenated on channels) taken from the
            vision encoder. `-2` is the penultimate layer, as in LLaVA.
        vision_feature_select_strategy: `"default"` keeps only the patch tokens (drops CLS/register tokens);
            `"full"` keeps every token the encoder emits.
        image_token_id: id of the `<image>` placeholder token in the text vocabulary.
        video_token_id: id of the `<video>` placeholder token in the text vocabulary.
        tie_word_embeddings: tie `lm_head` to the LM's input embeddings.
        image_newline: AnyRes: a learned embedding after every row of stitched tile features (LLaVA-NeXT).
        image_grid_pinpoints: AnyRes: LLaVA-NeXT's allowed `[height, width]` resolutions. The model derives each image's
            tile grid from `image_sizes` with them when the inputs carry no `image_grids` / `num_patches` (what
            transformers' `LlavaNextProcessor` returns); converted LLaVA-NeXT / OneVision checkpoints set them.
        anyres_unpad: AnyRes: cut tile features that only cover padding back to the image's aspect ratio.
        anyres_merge: AnyRes: `"spatial"` stitches tiles into one feature map (LLaVA-NeXT); `"flat"` keeps each
            tile's tokens together (LongLLaVA's layout).
        vision_pooled_grid: pool each view's patch grid to this side with bilinear interpolation before the
            projector (LongLLaVA: 24x24 -> 12x12, i.e. 12); None for no pooling.
        projector_intermediate_size: `mlp3x_gelu`: width after its first layer (None: 4x the vision width, Cobra).
        projector_pooled_grid: `pool2d_mlp` / `pool1d_mlp`: side the patch grid is pooled to inside the projector.
        projector_conv_kernel, projector_conv_stride: `conv2d_adapter`: convolution window and step (None: kernel).
        projector_hidden_size: `mamba`: width the scans run at (None: the widest encoder).
        projector_scan_fusion: `mamba`: `"cross_stitch"` (interleave the encoders' maps) or `"cross_cat"`.
        projector_scan_merge: `mamba`: merge of the four scan directions, `"sum"` or `"mean"`.
        projector_ssm: `mamba`: `hybrid_vlm.ssm.SSMBlock` options (`mixer`, `d_state`, `expand`, `head_dim`, ...).
        ssm_engine: run `hybrid_vlm.ssm`'s PyTorch paths in the SSM layers of the language model wherever the
            mamba-ssm CUDA kernels do not run (`hybrid_vlm.ssm_engine`); False keeps transformers' own PyTorch path.
            The environment variable `HYBRID_VLM_SSM_ENGINE=0` switches it off for every model.
        vamba_options: settings of the Vamba decoder (`hybrid_vlm.vamba.VambaOptions` fields), only with
            `decoder_type="vamba"`.
    """

    model_type = "hybrid_vlm"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        decoder_type: str = "interleaved",
        projector_type: str = "mlp2x_gelu",
        projector_hidden_act: str = "gelu",
        multimodal_projector_bias: bool = True,
        vision_feature_layer: int | list[int] = -2,
        vision_feature_select_strategy: str = "default",
        image_token_id: int | None = None,
        video_token_id: int | None = None,
        tie_word_embeddings: bool = False,
        vamba_options: dict[str, Any] | None = None,
        image_newline: bool = False,
        anyres_unpad: bool = True,
        anyres_merge: str = "spatial",
        vision_pooled_grid: int | None = None,
        projector_intermediate_size: int | None = None,
        projector_pooled_grid: int | None = None,
        projector_conv_kernel: int = 2,
        projector_conv_stride: int | None = None,
        projector_hidden_size: int | None = None,
        projector_scan_fusion: str = "cross_stitch",
        projector_scan_merge: str = "sum",
        projector_ssm: dict[str, Any] | None = None,
        vision_fusion: str = "channel",
        anyres_max_feature_tiles: int | None = None,
        video_pool_stride: int | None = None,
        video_newline: bool = False,
        extra_vision_configs: list[PretrainedConfig | dict] | None = None,
        image_grid_pinpoints: list[list[int]] | None = None,
        ssm_engine: bool = True,
        **kwargs: Any,
    ) -> None:
        # TRL reads `auto_map`; transformers breaks on None. Keep it a dict.
        self.auto_map = kwargs.pop("auto_map", None) or {}
        if isinstance(vision_config, (list, tuple)):
            if not vision_config:
                raise ValueError("vision_config is an empty list; give at least one vision encoder config.")
            if extra_vision_configs:
                raise ValueError("Give several encoders either as a vision_config list or as extra_vision_configs.")
            vision_config, extra_vision_configs = vision_config[0], list(vision_config[1:])
        self.vision_config = _vision_part(_as_config(vision_config, "vision_config", "clip_vision_model"))
        if extra_vision_configs is not None and not isinstance(extra_vision_configs, (list, tuple)):
            raise TypeError("extra_vision_configs must be a list of vision configs (or dicts with `model_type`).")
        self.extra_vision_configs = [
            _vision_part(_as_config(c, f"extra_vision_configs[{i}]", "clip_vision_model"))
            for i, c in enumerate(extra_vision_configs or [])
        ]
        self.vision_fusion = vision_fusion
        self.anyres_max_feature_tiles = anyres_max_feature_tiles
        self.video_pool_stride = video_pool_stride
        self.video_newline = video_newline
        self.text_config = _as_config(text_config, "text_config", "jamba")
        if "decoder" in kwargs:
            decoder = kwargs.pop("decoder")
            if not isinstance(decoder, str):
                raise TypeError("`decoder` names the fusion (a string such as 'interleaved'); use decoder_type=.")
            decoder_type = decoder
        self.decoder_type = decoder_type
        self.projector_type = projector_type
        self.projector_hidden_act = projector_hidden_act
        self.multimodal_projector_bias = multimodal_projector_bias
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.vamba_options = vamba_options
        self.image_newline = image_newline
        self.anyres_unpad = anyres_unpad
        self.image_grid_pinpoints = None if image_grid_pinpoints is None else check_pinpoints(image_grid_pinpoints)
        self.anyres_merge = anyres_merge
        self.vision_pooled_grid = vision_pooled_grid
        self.projector_intermediate_size = projector_intermediate_size
        self.projector_pooled_grid = projector_pooled_grid
        self.projector_conv_kernel = projector_conv_kernel
        self.projector_conv_stride = projector_conv_stride
        self.projector_hidden_size = projector_hidden_size
        self.projector_scan_fusion = projector_scan_fusion
        self.projector_scan_merge = projector_scan_merge
        self.projector_ssm = projector_ssm
        self.ssm_engine = bool(ssm_engine)
        # transformers 4.x ties lm_head by the *text* config's flag (Mamba's defaults to True), 5.x by this one: keep
        # them equal so both lines build and load the same model.
        self.text_config.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_hybrid_config()

    def validate_hybrid_config(self) -> None:
        """Reject unknown or inconsistent settings now, with a message that says what to change."""
        if self.decoder_type not in DECODERS:
            raise ValueError(f"Unknown decoder_type '{self.decoder_type}'. Choose one of {list(DECODERS)}.")
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"Unknown projector_type '{self.projector_type}'. Choose one of {list(PROJECTOR_TYPES)}.")
        validate_projector_settings(self)
        if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"Unknown vision_feature_select_strategy '{self.vision_feature_select_strategy}'. "
                f"Choose one of {list(FEATURE_SELECT_STRATEGIES)}."
            )
        for vision_config in self.vision_configs:
            vision_type = vision_config.model_type
            if vision_type not in VISION_MODEL_TYPES:
                raise ValueError(
                    f"vision_config has model_type '{vision_type}', which HybridVLM cannot use as a vision encoder. "
                    f"Use one of {list(VISION_MODEL_TYPES)} (e.g. CLIPVisionConfig, SiglipVisionConfig, "
                    "Dinov2Config)."
                )
        self._validate_vision_fusion()
        text_type = self.text_config.model_type
        if self.decoder_type == "vamba":
            self._validate_vamba(text_type)
        elif self.vamba_options is not None:
            raise ValueError("vamba_options only apply to decoder_type='vamba'; remove them or set decoder_type.")
        causal_lm = text_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or self.decoder_type == "vamba"
        if not causal_lm or text_type not in MODEL_MAPPING_NAMES:
            raise ValueError(
                f"text_config has model_type '{text_type}', which is not a causal language model this transformers "
                "version can build with AutoModel/AutoModelForCausalLM. Use a decoder-only LM config such as "
                "JambaConfig, Mamba2Config, BambaConfig or LlamaConfig."
            )
        layers = self.vision_feature_layer
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise TypeError(
                f"vision_feature_layer must be an int or a list of ints, got {self.vision_feature_layer!r}."
            )
        for vision_config in self.vision_configs:
            if vision_config.model_type in QWEN2VL_VISION_MODEL_TYPES:
                check_feature_layers(self.vision_feature_layer)  # one output (the merger's): -2 (default) or -1
                continue
            num_layers = vision_config.num_hidden_layers
            bad = [i for i in layers if not -(num_layers + 1) <= i <= num_layers]
            if bad:
                raise ValueError(
                    f"vision_feature_layer {bad} is out of range: the vision encoder has {num_layers} layers "
                    f"({vision_config.model_type}), so hidden states are indexed {-(num_layers + 1)}..{num_layers}. "
                    "Use -2 for the penultimate layer."
                )
        if self.anyres_merge not in ANYRES_MERGES:
            raise ValueError(f"Unknown anyres_merge '{self.anyres_merge}'. Choose one of {list(ANYRES_MERGES)}.")
        self._validate_onevision_options()
        if self.anyres_merge == "flat" and (self.image_newline or self.anyres_unpad):
            raise ValueError(
                "anyres_merge='flat' keeps every tile's tokens together, so it cannot add row newlines or un-pad; "
                "set image_newline=False and anyres_unpad=False."
            )
        if self.vision_config.model_type in QWEN2VL_VISION_MODEL_TYPES:
            pooled = [n for n in ("vision_pooled_grid", "projector_pooled_grid") if getattr(self, n) is not None]
            if pooled:
                raise ValueError(
                    f"{pooled[0]} needs a fixed patch grid; Qwen2-VL's vision tower takes any image size (its merger "
                    "already reduces 2x2 patches to one token). Remove it."
                )
            grid = 0
        else:
            grid = self.vision_config.image_size // self.vision_config.patch_size
        for name in ("vision_pooled_grid", "projector_pooled_grid"):
            pooled = getattr(self, name)
            valid = pooled is None or (isinstance(pooled, int) and not isinstance(pooled, bool) and 1 <= pooled <= grid)
            if not valid:
                raise ValueError(
                    f"{name}={pooled!r} must be an int in 1..{grid} (the encoder's {grid}x{grid} patch "
                    "grid); LongLLaVA pools 24x24 to 12."
                )
        vocab_size = self.text_config.vocab_size
        for name in ("image_token_id", "video_token_id"):
            token_id = getattr(self, name)
            if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < vocab_size):
                raise ValueError(
                    f"{name}={token_id!r} is not a valid id in the text vocabulary of size {vocab_size}. "
                    "Add the placeholder token to the tokenizer, resize the embeddings, and pass its id."
                )
        if self.image_token_id is not None and self.image_token_id == self.video_token_id:
            raise ValueError(
                f"image_token_id and video_token_id are both {self.image_token_id}; images and videos need "
                "different placeholder tokens."
            )
        pad_id = getattr(self.text_config, "pad_token_id", None)
        if pad_id is not None and pad_id in (self.image_token_id, self.video_token_id):
            raise ValueError(
                f"The text config's pad_token_id ({pad_id}) is also a visual placeholder id; padding would be "
                "mistaken for image positions. Use a distinct pad token."
            )

    def _validate_vision_fusion(self) -> None:
        if self.vision_fusion not in VISION_FUSIONS:
            raise ValueError(f"Unknown vision_fusion '{self.vision_fusion}'. Choose one of {list(VISION_FUSIONS)}.")
        configs = self.vision_configs
        if len(configs) == 1:
            return
        if any(c.model_type in QWEN2VL_VISION_MODEL_TYPES for c in configs):
            raise ValueError("Qwen2-VL's vision tower cannot be combined with other encoders; give it alone.")
        # DINOv2 interpolates its position embeddings to any input, so its image_size need not match the others'.
        fixed = [c for c in configs if c.model_type not in INTERPOLATING_VISION_TYPES] or configs[:1]
        shapes = {(int(c.image_size), int(c.patch_size)) for c in fixed} | {
            (int(fixed[0].image_size), int(c.patch_size)) for c in configs
        }
        if len(shapes) != 1:
            raise ValueError(
                f"Several vision encoders must see the same image size with the same patch size so that their patch "
                f"grids line up, got (image_size, patch_size) {sorted(shapes)}. Set image_size/patch_size to agree "
                "(MambaVLM/Cobra: DINOv2 and SigLIP both at 378 px with 14 px patches)."
            )
        if self.vision_feature_select_strategy != "default":
            raise ValueError(
                "Several vision encoders are fused patch by patch, so their CLS/register tokens cannot be kept: "
                "set vision_feature_select_strategy='default'."
            )
        if self.decoder_type == "vamba":
            raise ValueError("decoder_type='vamba' takes one vision encoder; give vision_config a single config.")

    def _validate_onevision_options(self) -> None:
        for name in ("anyres_max_feature_tiles", "video_pool_stride"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
        if self.anyres_max_feature_tiles is not None and (self.anyres_merge != "spatial" or not self.anyres_unpad):
            raise ValueError(
                "anyres_max_feature_tiles scales the stitched, un-padded tile map (LLaVA-OneVision); it needs "
                "anyres_merge='spatial' and anyres_unpad=True."
            )
        if not isinstance(self.video_newline, bool):
            raise ValueError(f"video_newline must be True or False, got {self.video_newline!r}.")
        if self.video_newline and not self.image_newline:
            raise ValueError("video_newline appends the learned image_newline embedding; set image_newline=True too.")
        if self.video_pool_stride is not None and (
            VisualTokenSpec.from_config(self).num_maps > 1
            or self.vision_feature_select_strategy == "full" and VisualTokenSpec.from_config(self).num_prefix_tokens
            or self.projector_type not in ("mlp2x_gelu", "mlp3x_gelu", "identity")
        ):
            raise ValueError(
                "video_pool_stride pools each frame's projected patch grid: it needs a grid without CLS/register "
                "tokens and a projector that keeps one token per patch (mlp2x_gelu, mlp3x_gelu, identity)."
            )

    @property
    def vision_configs(self) -> list[PretrainedConfig]:
        """Every vision encoder's config, in the order their features are fused."""
        return [self.vision_config, *self.extra_vision_configs]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["extra_vision_configs"] = [c.to_dict() for c in self.extra_vision_configs]
        return output

    def _validate_vamba(self, text_type: str) -> None:
        from .caching import has_ssm_layers
        from .vamba import INCOMPATIBLE_MODEL_TYPES, VambaOptions

        self.vamba_options = VambaOptions.coerce(self.vamba_options).to_dict()
        if text_type in INCOMPATIBLE_MODEL_TYPES or has_ssm_layers(self.text_config):
            raise ValueError(
                f"decoder_type='vamba' builds cross-attention from a transformer LM's self-attention; '{text_type}' "
                "is not one it supports. Use a Qwen2/Llama-style text_config, or decoder_type='interleaved'."
            )

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list."""
        layers = self.vision_feature_layer
        return list(layers) if isinstance(layers, (list, tuple)) else [layers]
