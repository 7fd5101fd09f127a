"""The configuration side's option schemas and checks, with no torch module in sight.

`HybridVLMConfig` validates every setting when it is built, and remote code copies the configuration file with
everything it imports; so what a setting may be (the choices of each option, the keywords of each SSM mixer, Vamba's
options, AnyRes pinpoints, Qwen2-VL's vision config) lives here, where loading, checking and saving a config needs
neither torch.nn nor transformers' model code. The model modules import these names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from numbers import Integral
from typing import Any

from transformers import PretrainedConfig

from .model_types import QWEN2VL_VISION_MODEL_TYPES
from .token_counts import (  # noqa: F401  (ANYRES_MERGES, FEATURE_SELECT_STRATEGIES: the spec owns them)
    ANYRES_MERGES,
    FEATURE_SELECT_STRATEGIES,
    GRID_ONLY_PROJECTORS,
    POOLING_PROJECTORS,
    _positive_int,
    vision_prefix_token_count,
)

# ---------------------------------------------------------------------------------------------------------------
# Choices of the structural settings. The model dispatches on them; a new one is added here first.

DECODERS = ("interleaved", "vamba")
PROJECTOR_TYPES = ("mlp2x_gelu", "mlp3x_gelu", "pool2d_mlp", "pool1d_mlp", "conv2d_adapter", "mamba", "identity")
# Vision-fusion modes for several encoders. "channel": one map of the concatenated widths (Cobra, N tokens);
# "sequence": the maps one after another (MambaVLM's visual long sequence, num_encoders * N tokens).
VISION_FUSIONS = ("channel", "sequence")
SCAN_FUSIONS = ("cross_stitch", "cross_cat")
SCAN_MERGES = ("sum", "mean")
# The keyword arguments each `hybrid_vlm.ssm` mixer takes besides its width and layer index (`norm_eps` goes to the
# block's norm). tests/test_config.py checks them against the mixers' signatures.
SSM_MIXER_OPTIONS: dict[str, frozenset[str]] = {
    "mamba2": frozenset({"A_init_range", "bias", "chunk_size", "conv_bias", "d_conv", "d_state", "dt_init_floor",
                         "dt_max", "dt_min", "expand", "head_dim", "n_groups", "norm_eps"}),
    "mamba1": frozenset({"bias", "chunk_size", "conv_bias", "d_conv", "d_state", "dt_init", "dt_init_floor",
                         "dt_max", "dt_min", "dt_rank", "dt_scale", "expand", "norm_eps"}),
}


# ---------------------------------------------------------------------------------------------------------------
# Projector settings

def check_ssm_options(ssm: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(ssm or {})
    mixer = options.pop("mixer", "mamba2")
    if mixer not in SSM_MIXER_OPTIONS:
        raise ValueError(f"projector ssm 'mixer' must be one of {sorted(SSM_MIXER_OPTIONS)}, got {mixer!r}.")
    unknown = sorted(set(options) - SSM_MIXER_OPTIONS[mixer])
    if unknown:
        raise ValueError(
            f"Unknown projector ssm option(s) {unknown} for mixer '{mixer}'; "
            f"allowed: {sorted(SSM_MIXER_OPTIONS[mixer])}."
        )
    return {"mixer": mixer, **options}


def setting(config: Any, name: str, default: Any = None) -> Any:
    """A config field, or its default when the config predates it (older config.json files)."""
    return getattr(config, name, default)


def selected_prefix_tokens(config: Any) -> int:
    """How many prefix (CLS/register) tokens each map keeps: 0 unless the strategy is "full"."""
    if setting(config, "vision_feature_select_strategy", "default") != "full":
        return 0
    vision = config.vision_config
    configs = vision if isinstance(vision, (list, tuple)) else [vision]
    counts = {vision_prefix_token_count(c) for c in configs}
    if len(counts) != 1:
        raise ValueError(
            f"vision_feature_select_strategy='full' with encoders that emit different prefix counts {sorted(counts)}; "
            "use 'default' so that every map is a plain patch grid."
        )
    return counts.pop()


def validate_projector_settings(config: Any) -> None:
    """Reject unknown or inconsistent projector settings of a config now, with a message that says what to change.

    Reads `projector_type` and the `projector_*` fields (missing ones take their defaults); the config calls it from
    its own validation.
    """
    projector_type = setting(config, "projector_type", "mlp2x_gelu")
    if projector_type not in PROJECTOR_TYPES:
        raise ValueError(f"Unknown projector_type '{projector_type}'. Choose one of {list(PROJECTOR_TYPES)}.")
    pooled = setting(config, "projector_pooled_grid")
    if projector_type in POOLING_PROJECTORS:
        if pooled is None:
            raise ValueError(f"projector_type='{projector_type}' needs projector_pooled_grid (LongLLaVA: 12).")
        _positive_int(pooled, "projector_pooled_grid")
        if setting(config, "vision_pooled_grid") is not None:
            raise ValueError(
                f"projector_type='{projector_type}' pools inside the projector; vision_pooled_grid would pool a second "
                "time before it. Set vision_pooled_grid=None (or use mlp2x_gelu with vision_pooled_grid)."
            )
    elif pooled is not None:
        raise ValueError(
            f"projector_pooled_grid only applies to {list(POOLING_PROJECTORS)}, not '{projector_type}'; remove it."
        )
    kernel = setting(config, "projector_conv_kernel", 2)
    stride = setting(config, "projector_conv_stride")
    _positive_int(kernel, "projector_conv_kernel")
    if stride is not None:
        _positive_int(stride, "projector_conv_stride")
    intermediate = setting(config, "projector_intermediate_size")
    if intermediate is not None:
        _positive_int(intermediate, "projector_intermediate_size")
    hidden = setting(config, "projector_hidden_size")
    if hidden is not None:
        _positive_int(hidden, "projector_hidden_size")
    fusion = setting(config, "projector_scan_fusion", "cross_stitch")
    if fusion not in SCAN_FUSIONS:
        raise ValueError(f"Unknown projector_scan_fusion '{fusion}'. Choose one of {list(SCAN_FUSIONS)}.")
    merge = setting(config, "projector_scan_merge", "sum")
    if merge not in SCAN_MERGES:
        raise ValueError(f"Unknown projector_scan_merge '{merge}'. Choose one of {list(SCAN_MERGES)}.")
    ssm = setting(config, "projector_ssm")
    if ssm is not None and not isinstance(ssm, dict):
        raise TypeError(f"projector_ssm must be a dict of SSMBlock options or None, got {type(ssm).__name__}.")
    check_ssm_options(ssm)
    if projector_type in GRID_ONLY_PROJECTORS and selected_prefix_tokens(config):
        raise ValueError(
            f"projector_type='{projector_type}' works on the patch grid only; set vision_feature_select_strategy="
            "'default' (drops the CLS/register tokens)."
        )


# ---------------------------------------------------------------------------------------------------------------
# AnyRes pinpoints


def as_size(value: Any, name: str = "size") -> tuple[int, int]:
    """(height, width) from an int (square), a pair, a ``{"height", "width"}`` dict or a 2-element tensor/array."""
    if isinstance(value, dict):
        if set(value) != {"height", "width"}:
            raise ValueError(f"AnyRes: {name} as a dict needs exactly the keys 'height' and 'width', got {value}.")
        value = (value["height"], value["width"])
    elif hasattr(value, "reshape") and hasattr(value, "tolist"):  # a tensor or an array
        value = [int(v) for v in value.reshape(-1).tolist()]
    elif isinstance(value, Integral) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"AnyRes: {name} must be (height, width), got {value!r}.")
    return anyres_positive_int(value[0], f"{name}[0]"), anyres_positive_int(value[1], f"{name}[1]")


def anyres_positive_int(value: Any, name: str) -> int:
    """`value` as an int, or a `ValueError` naming the AnyRes setting when it is not a positive int."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"AnyRes: {name} must be a positive int, got {value!r}.")
    return int(value)


def check_pinpoints(image_grid_pinpoints: Any, tile_size: Any = None) -> list[list[int]]:
    """Validate LLaVA-NeXT pinpoints as a JSON-friendly ``[[height, width], ...]``.

    With ``tile_size``, every pinpoint must be a whole number of tiles: LLaVA-NeXT silently floors otherwise, which
    drops image content from the tiles.
    """
    if isinstance(image_grid_pinpoints, (str, bytes)) or not isinstance(image_grid_pinpoints, (list, tuple)):
        raise ValueError(
            f"AnyRes: image_grid_pinpoints must be a list of [height, width] resolutions, got {image_grid_pinpoints!r}."
        )
    if not image_grid_pinpoints:
        raise ValueError("AnyRes: image_grid_pinpoints is empty; give at least one [height, width] resolution.")
    pins = [list(as_size(p, f"image_grid_pinpoints[{i}]")) for i, p in enumerate(image_grid_pinpoints)]
    if tile_size is not None:
        tile_h, tile_w = as_size(tile_size, "tile_size")
        bad = [p for p in pins if p[0] % tile_h or p[1] % tile_w]
        if bad:
            raise ValueError(
                f"AnyRes: image_grid_pinpoints {bad} are not multiples of the tile size {tile_h}x{tile_w}; every "
                "pinpoint must be a whole number of tiles (e.g. [336, 672] for 336 px tiles)."
            )
    return pins


# ---------------------------------------------------------------------------------------------------------------
# Qwen2-VL's vision config (Vamba's tower)

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


def check_feature_layers(layers: Any) -> None:
    """Refuse a `vision_feature_layer` other than the default/last one: the tower has a single output."""
    values = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if len(values) != 1 or values[0] not in ACCEPTED_FEATURE_LAYERS:
        raise ValueError(
            f"vision_feature_layer={layers!r} does not apply to Qwen2-VL's vision tower: its only output is the "
            "patch merger applied to the last block (already the language model's width). Leave "
            "vision_feature_layer at its default (-2) or set -1; both mean that output."
        )


# ---------------------------------------------------------------------------------------------------------------
# Vamba's options

MIX_MODES = ("alpha", "sum")
VISUAL_MIXERS = ("mamba2", "mamba1", "none")
CROSS_ATTENTION_INITS = ("self_attention", "random")
# Which visual tokens a text token cross-attends to: "all" of its sample (the Vamba reference), or "causal" (only
# those before it in the interleaved sequence).
CROSS_ATTENTION_VISIBILITIES = ("all", "causal")
# What default position ids count: "text" (text tokens only; the visual tokens are not in the reference's text
# sequence) or "sequence" (every token of the interleaved sequence).
TEXT_POSITIONS = ("text", "sequence")
# Where cross-attention keys are rotated (with cross_attention_rope): at the visual tokens' position ids
# ("sequence"), or by M-RoPE at each visual token's (t, h, w) place in its image's or video's token grid ("grid").
KEY_POSITIONS = ("sequence", "grid")

# Language models checked on transformers 4.57 and 5.x (tests/test_vamba.py re-checks those the installed line has):
# without visual tokens the Vamba build reproduces the LM bit for bit, and the cross-attention equals the LM's own
# self-attention restricted to visual keys (so a copy from self-attention means what the paper means).
VERIFIED_MODEL_TYPES = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "ministral",
    "qwen2_vl_text",
    "olmo",
    "helium",
    "arcee",
    "seed_oss",
    "starcoder2",
    "glm",
    "nemotron",
    "ernie4_5",
    "internlm3",
)
# Language models with the usual attribute names that compute something else around them: refused, with the reason.
INCOMPATIBLE_MODEL_TYPES = {
    "gemma": "scales the input embeddings inside the model forward",
    "gemma2": "has sandwich norms and logit soft-capping",
    "gemma3_text": "has sandwich norms and per-layer-type rotary embeddings",
    "glm4": "has extra norms after attention and MLP",
    "granite": "scales residuals, embeddings and attention by config multipliers",
    "cohere": "runs attention and MLP in parallel from one norm",
    "smollm3": "skips the rotary embedding on some layers",
    "olmo2": "normalises after attention and MLP, not before",
    "exaone4": "normalises after attention and MLP, not before",
    "apertus": "names its pre-norms differently (attention_layernorm, feedforward_layernorm)",
    "stablelm": "applies a partial rotary embedding inside its attention",
    "hunyuan_v1_dense": "normalises queries and keys after the rotary embedding inside its attention",
    "diffllama": "uses differential attention",
    "bitnet": "normalises inside its attention before o_proj",
    "doge": "uses dynamic-mask attention",
}


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class VambaOptions:
    """What the Vamba paper ablates, plus the visual SSM's shape. Stored in the model config as a plain dict.

    alpha_init: initial value of each layer's mixing scalar ``a`` (kept in [0, 1] by clamping in the forward).
    mix: ``"alpha"`` (``a*SA + (1-a)*CA``) or ``"sum"`` (``SA + CA``, the plain ablation; ``alpha`` is unused).
    visual_mixer: SSM block on the visual stream per layer: ``"mamba2"`` (paper's best), ``"mamba1"`` or ``"none"``.
    cross_attention_init: ``"self_attention"`` (copy each layer's q/k/v/o, Table 2's key finding) or ``"random"``.
    cross_attention_kv_norm: apply the layer's input norm to the visual states before the K/V projections, so a
        cross-attention copied from self-attention sees inputs scaled as self-attention saw them in the source LM.
    visual_stream_norm: with ``cross_attention_kv_norm``, the normed visual states also *replace* the visual stream
        (they feed the K/V projections, the SSM block and the next layer). The Vamba reference does this when its
        ``cross_attn_use_layer_norm`` is set; ``False`` norms only the K/V input.
    cross_attention_visibility: ``"all"`` (default, the reference): every text token, the system prompt included,
        cross-attends to every visual token of its sample and gets the ``a`` mix. ``"causal"``: a text token sees only
        the visual tokens before it in the interleaved sequence, and text with none before it skips the mix (the
        stricter reading, for streaming or multi-turn chats that add images later on a cache).
    text_positions: ``"text"`` (default, the reference): default position ids count text tokens only, so a text
        token's position does not depend on how many visual tokens there are (training too); visual tokens count
        among themselves. ``"sequence"``: every token of the interleaved sequence counts.
    cross_attention_rope: rotate cross-attention queries and keys with RoPE at their position ids (see
        ``text_positions``; our default: a copy of self-attention expects rotated inputs). The released Vamba
        checkpoints were trained without (`cross_attn_use_position_embeddings=False`); their converter turns it off.
    cross_attention_key_positions: ``"sequence"`` (keys at the visual tokens' position ids) or ``"grid"``: keys
        rotated by M-RoPE (``mrope_section``, summing to head_dim / 2) at each visual token's (t, h, w) in its own
        token grid, counted from 0 for every image and video, queries at their text positions. As in the reference
        with ``cross_attn_use_position_embeddings=True``, keys are rotated only in the forward that brings them: the
        cache keeps them unrotated and later (decode) steps read them so. The model must pass ``visual_positions``.
    ssm_*: the SSM block's settings; ``ssm_d_state=None`` means 128 for Mamba-2 and 16 for Mamba-1 (mamba-ssm's
        defaults). ``ssm_head_dim``/``ssm_n_groups`` are Mamba-2 only, ``ssm_dt_rank`` Mamba-1 only.
        ``ssm_norm_eps`` is the eps of the block's pre-norm (1e-5, mamba-ssm's RMSNorm default, as in the
        reference); ``None`` takes the LM's ``rms_norm_eps``. ``ssm_bias`` / ``ssm_conv_bias``: biases of the
        mixer's in/out projections and of its conv (mamba-ssm's defaults: none, and a conv bias).
    """

    alpha_init: float = 0.5
    mix: str = "alpha"
    visual_mixer: str = "mamba2"
    cross_attention_init: str = "self_attention"
    cross_attention_kv_norm: bool = True
    visual_stream_norm: bool = False
    cross_attention_rope: bool = True
    cross_attention_visibility: str = "all"
    text_positions: str = "text"
    cross_attention_key_positions: str = "sequence"
    mrope_section: list[int] | None = None
    ssm_d_state: int | None = None
    ssm_d_conv: int = 4
    ssm_expand: int = 2
    ssm_head_dim: int = 64
    ssm_n_groups: int = 1
    ssm_chunk_size: int = 256
    ssm_dt_rank: int | str = "auto"
    ssm_norm_eps: float | None = 1e-5
    ssm_bias: bool = False
    ssm_conv_bias: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the bad setting and the accepted values."""
        if isinstance(self.alpha_init, bool) or not isinstance(self.alpha_init, (int, float)):
            raise ValueError(f"alpha_init must be a number in [0, 1], got {self.alpha_init!r}.")
        if not 0.0 <= float(self.alpha_init) <= 1.0:
            raise ValueError(f"alpha_init must be in [0, 1] (the forward clamps a to it), got {self.alpha_init}.")
        for name, allowed in (
            ("mix", MIX_MODES),
            ("visual_mixer", VISUAL_MIXERS),
            ("cross_attention_init", CROSS_ATTENTION_INITS),
            ("cross_attention_visibility", CROSS_ATTENTION_VISIBILITIES),
            ("text_positions", TEXT_POSITIONS),
            ("cross_attention_key_positions", KEY_POSITIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        for name in ("cross_attention_kv_norm", "visual_stream_norm", "cross_attention_rope", "ssm_bias",
                     "ssm_conv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        for name in ("ssm_d_conv", "ssm_expand", "ssm_head_dim", "ssm_n_groups", "ssm_chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.ssm_d_state is not None and (
            isinstance(self.ssm_d_state, bool) or not isinstance(self.ssm_d_state, int) or self.ssm_d_state < 1
        ):
            raise ValueError(f"ssm_d_state must be a positive integer or None, got {self.ssm_d_state!r}.")
        if self.ssm_dt_rank != "auto" and (
            isinstance(self.ssm_dt_rank, bool) or not isinstance(self.ssm_dt_rank, int) or self.ssm_dt_rank < 1
        ):
            raise ValueError(f"ssm_dt_rank must be 'auto' or a positive integer, got {self.ssm_dt_rank!r}.")
        if self.cross_attention_key_positions == "grid":
            section = self.mrope_section
            if not self.cross_attention_rope:
                raise ValueError(
                    "cross_attention_key_positions='grid' rotates keys; it needs cross_attention_rope=True."
                )
            if (
                not isinstance(section, (list, tuple))
                or len(section) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in section)
            ):
                raise ValueError(
                    f"cross_attention_key_positions='grid' needs mrope_section, three positive ints (t, h, w) "
                    f"summing to head_dim / 2, e.g. [16, 24, 24]; got {section!r}."
                )
            self.mrope_section = [int(v) for v in section]
        elif self.mrope_section is not None:
            raise ValueError("mrope_section only applies with cross_attention_key_positions='grid'.")
        if self.visual_stream_norm and not self.cross_attention_kv_norm:
            raise ValueError(
                "visual_stream_norm=True replaces the visual stream by the K/V norm's output; it needs "
                "cross_attention_kv_norm=True as well."
            )
        eps = self.ssm_norm_eps
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
            raise ValueError(f"ssm_norm_eps must be a small positive number (e.g. 1e-5) or None, got {eps!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> VambaOptions:
        """Build from a dict (e.g. ``config.vamba_options``); unknown keys are an error, not silently dropped."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown Vamba option(s) {unknown}. Valid options: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def coerce(cls, options: VambaOptions | dict[str, Any] | None) -> VambaOptions:
        if isinstance(options, cls):
            options.validate()
            return options
        if options is None or isinstance(options, dict):
            return cls.from_dict(options)
        raise TypeError(f"Vamba options must be a VambaOptions, a dict or None, got {type(options).__name__}.")

    def mixer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `SSMBlock`'s mixer."""
        kwargs: dict[str, Any] = dict(d_conv=self.ssm_d_conv, expand=self.ssm_expand, chunk_size=self.ssm_chunk_size)
        if self.ssm_bias:
            kwargs["bias"] = True
        if not self.ssm_conv_bias:
            kwargs["conv_bias"] = False
        if self.ssm_d_state is not None:
            kwargs["d_state"] = self.ssm_d_state
        if self.visual_mixer == "mamba2":
            kwargs.update(head_dim=self.ssm_head_dim, n_groups=self.ssm_n_groups)
        elif self.visual_mixer == "mamba1":
            kwargs["dt_rank"] = self.ssm_dt_rank
        return kwargs
