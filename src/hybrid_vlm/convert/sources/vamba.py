"""Vamba (TIGER-AI-Lab/Vamba) checkpoints -> HybridVLM, and the check that refuses to load one unconverted.

A released Vamba checkpoint declares `model_type: qwen2_vl`, so stock transformers loads it as Qwen2-VL and silently
drops its per-layer `cross_attn` / `alpha` / `vision_mixer` weights (`hybrid_vlm.vamba.ADDED_WEIGHT_PATTERN`). The
converter keeps the layer names under ``model.language_model.``, makes Qwen2-VL's ViT + merger (``visual.*``) the
vision tower, reads `VambaOptions` off the config flags and the Mamba-2 weights' shapes, and writes a processor that
reproduces the reference's chat prompts and frame sampling.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...chat_templates import VAMBA_CHAT_TEMPLATE, VAMBA_IMAGE_TOKEN, VAMBA_VIDEO_TOKEN
from ...compat import decode_special_floats
from ...configuration_hybrid_vlm import HybridVLMConfig
from ...image_processing_hybrid_vlm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HybridVLMImageProcessor
from ...qwen2vl_vision import qwen2_text_config, qwen2vl_vision_config
from ...vamba import ADDED_WEIGHT_PATTERN
from ...video_processing_hybrid_vlm import HybridVLMVideoProcessor
from ..common import (
    Recipe,
    first_match,
    has_name,
    has_tokenizer,
    load_tokenizer,
    read_json,
    source_generation_config,
    source_image_processor_dict,
)
from ..errors import ConversionError
from ..options import ConvertOptions
from ..reader import CheckpointReader, SourceTensor, weight_names
from ..rules import MappingPlan, Rule, plan_mapping, to_scalar

__all__ = [
    "VAMBA_NUM_FRAMES",
    "UnconvertedVambaCheckpointError",
    "build_recipe",
    "check_unconverted_vamba",
    "convert_vamba_language_state_dict",
    "detect_unconverted_vamba",
    "map_vamba_language_keys",
    "qwen2vl_vamba_config",
    "vamba_conversion_message",
    "vamba_language_rules",
]

# Frames Vamba's chat script samples from a video file (its "middle" rule, `vamba_middle` here).
VAMBA_NUM_FRAMES = 128
_VAMBA_VISION = re.compile(r"^(?:model\.)?visual\.")
_QWEN2_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class UnconvertedVambaCheckpointError(ValueError):
    """A Vamba checkpoint is about to be loaded as plain Qwen2-VL, which would silently drop its new layers."""


def vamba_language_rules() -> list[Rule]:
    """Vamba's language side (a `qwen2_vl` checkpoint's `model.*` + `lm_head`) -> HybridVLM's Vamba decoder.

    Layer weights keep their names under ``model.language_model.``; Vamba's ``alpha`` (stored as shape [1]) becomes
    the scalar HybridVLM keeps. The vision side (``visual.*``) is left to the full converter (`_vamba_rules`).
    """
    return [
        Rule.drop("rotary inv_freq buffer (recomputed from the config on load)", r"\.rotary_emb\.inv_freq$"),
        Rule.rename("mixing weight alpha ([1] -> scalar)", r"^model\.(?:language_model\.)?layers\.(\d+)\.alpha$",
                    r"model.language_model.layers.\1.alpha", to_scalar),
        Rule.rename("language model (newer qwen2_vl layout)", r"^model\.language_model\.(.+)$",
                    r"model.language_model.\1"),
        Rule.rename("language model", r"^model\.(?!visual\.)(.+)$", r"model.language_model.\1"),
        Rule.rename("LM head", r"^lm_head\.weight$", "lm_head.weight"),
    ]


def _vamba_language_plan(names: Iterable[str], target_names: Container[str] | None) -> MappingPlan:
    names = [n for n in names if not _VAMBA_VISION.search(n)]
    plan = plan_mapping(names, vamba_language_rules(), known_targets=target_names)
    if plan.leftovers:
        raise ConversionError(f"Vamba language side: no rule (or no target weight) for {plan.leftovers[:10]}.")
    return plan


def map_vamba_language_keys(names: Iterable[str], target_names: Container[str] | None = None) -> dict[str, str]:
    """Source name -> HybridVLM name for Vamba's language side; vision (``visual.*``) names are left out, any other
    unmatched name raises (it would be a trained weight lost). With `target_names` (a HybridVLM Vamba model's
    state-dict keys) a name that has no counterpart there raises too."""
    plan = _vamba_language_plan(names, target_names)
    return {source: target for source, (target, _) in plan.mapped.items()}


def convert_vamba_language_state_dict(
    state: Mapping[str, torch.Tensor], target_names: Container[str] | None = None
) -> dict[str, torch.Tensor]:
    """Vamba's language-side tensors under HybridVLM's names (``visual.*`` skipped, buffers dropped).

    Load the result into a HybridVLM with ``decoder_type="vamba"`` and a matching Qwen2 ``text_config`` with
    ``load_state_dict(..., strict=False)``; the vision tower stays to be provided.
    """
    plan = _vamba_language_plan(state, target_names)
    out = {}
    for source, (target, rule) in plan.mapped.items():
        tensor = state[source]
        out[target] = rule.transform(tensor) if rule.transform is not None else tensor
    return out


def detect_unconverted_vamba(folder_or_config: Any) -> bool:
    """True for a Vamba checkpoint in its released form: model_type qwen2_vl plus `cross_attn`/`alpha`/
    `vision_mixer` weights (a folder, its config.json as a dict, or a loaded config whose `_name_or_path` is a
    local folder). Stock transformers loads such a folder as Qwen2-VL and silently drops those weights."""
    from transformers import PretrainedConfig

    folder: Path | None = None
    if isinstance(folder_or_config, (str, os.PathLike)):
        folder = Path(folder_or_config)
        if not folder.exists():
            raise FileNotFoundError(f"detect_unconverted_vamba: no such folder: {folder}")
        if not (folder / "config.json").is_file():
            raise ValueError(f"detect_unconverted_vamba: {folder} holds no config.json: not a checkpoint folder.")
        config = read_json(folder / "config.json")
    elif isinstance(folder_or_config, PretrainedConfig):
        config = folder_or_config.to_dict()
        name = getattr(folder_or_config, "_name_or_path", "") or ""
        folder = Path(name) if name and Path(name).is_dir() else None
    elif isinstance(folder_or_config, Mapping):
        config = dict(folder_or_config)
    else:
        raise TypeError(f"expected a folder, a config dict or a PretrainedConfig, got {type(folder_or_config)}.")
    if config.get("model_type") not in _QWEN2_VL_TYPES:
        return False
    if any("vamba" in str(a).lower() for a in config.get("architectures") or []):
        return True
    if folder is None:
        return False
    return any(ADDED_WEIGHT_PATTERN.search(name) for name in weight_names(folder))


def vamba_conversion_message(folder: Any) -> str:
    """What to tell someone about to load an unconverted Vamba checkpoint."""
    return (
        f"{folder} is a Vamba checkpoint (model_type qwen2_vl with per-layer cross_attn/alpha/vision_mixer weights). "
        "Stock transformers loads it as Qwen2-VL and silently drops those weights, so its outputs would be wrong. "
        "Convert it to HybridVLM instead: `hybrid-vlm convert SRC DST --from vamba` (or "
        "hybrid_vlm.convert.convert(SRC, DST, 'vamba'))."
    )


def check_unconverted_vamba(folder_or_config: Any) -> None:
    """Raise `UnconvertedVambaCheckpointError` with the advice above when `detect_unconverted_vamba` says so."""
    if detect_unconverted_vamba(folder_or_config):
        where = getattr(folder_or_config, "_name_or_path", None) or folder_or_config
        raise UnconvertedVambaCheckpointError(vamba_conversion_message(where))


def _vamba_rules() -> list[Rule]:
    """Vamba's names -> ours: the ViT + merger under ``visual.`` become the Qwen2-VL vision tower (same names below
    it), the language side as in `vamba_language_rules`."""
    return [
        Rule.drop("rotary inv_freq buffer of the vision tower (recomputed from the config on load)",
                  r"^(?:model\.)?visual\.rotary_pos_emb\.inv_freq$"),
        Rule.rename("Qwen2-VL vision tower + merger", r"^(?:model\.)?visual\.(.+)$", r"model.vision_tower.\1"),
        *vamba_language_rules(),
    ]


def _vamba_options(raw: Mapping[str, Any], entries: Mapping[str, SourceTensor], hidden: int, notes: list[str]
                   ) -> dict[str, Any]:
    """VambaOptions from Vamba's config flags and its Mamba-2 weights' shapes (the shapes decide; the config's
    `vision_mamba_mixer_config` gives what shapes cannot: the group count and the chunk size)."""
    mixer = raw.get("vision_mamba_mixer_config") or {}
    layer = r"^model\.(?:language_model\.)?layers\.\d+\."
    layer_norm = bool(raw.get("cross_attn_use_layer_norm", False))
    options: dict[str, Any] = {
        "mix": "alpha" if has_name(entries, layer + r"alpha$") else "sum",
        # The reference replaces the visual stream by its input-normed states when this flag is set.
        "cross_attention_kv_norm": layer_norm,
        "visual_stream_norm": layer_norm,
        # Every text token sees all visual tokens of its sample; text positions count text tokens only; the visual
        # pre-norm is mamba-ssm's RMSNorm with its default eps.
        "cross_attention_visibility": "all",
        "text_positions": "text",
        "ssm_norm_eps": 1e-5,
    }
    a_log = first_match(entries, layer + r"vision_mixer\.mixer\.A_log$")
    if a_log is None:
        options["visual_mixer"] = "none"
        return options
    if len(a_log.shape) != 1:
        raise NotImplementedError("this Vamba checkpoint's visual SSM is not Mamba-2 (A_log is not per head).")
    if mixer.get("d_ssm") is not None or mixer.get("D_has_hdim") or mixer.get("norm_before_gate") or not mixer.get(
        "rmsnorm", True
    ):
        raise NotImplementedError(
            "this Vamba checkpoint's Mamba-2 uses d_ssm / D_has_hdim / norm_before_gate / no gated norm; HybridVLM's "
            "Mamba-2 is mamba-ssm's default block (Vamba's released setting)."
        )
    unsupported = {
        "norm_type": (mixer.get("norm_type", "rmsnorm"), "rmsnorm"),
        "dt_limit": (list(decode_special_floats(mixer.get("dt_limit", [0.0, math.inf]))), [0.0, math.inf]),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(
                f"this Vamba checkpoint's vision_mamba_mixer_config has {name}={value!r}; HybridVLM's visual Mamba-2 "
                f"block computes {name}={supported!r} only (Vamba's released setting)."
            )
    options["ssm_bias"] = has_name(entries, layer + r"vision_mixer\.mixer\.in_proj\.bias$")
    options["ssm_conv_bias"] = has_name(entries, layer + r"vision_mixer\.mixer\.conv1d\.bias$")
    norm = first_match(entries, layer + r"vision_mixer\.mixer\.norm\.weight$")
    conv = first_match(entries, layer + r"vision_mixer\.mixer\.conv1d\.weight$")
    if norm is None or conv is None:
        raise ConversionError("the Vamba checkpoint's vision_mixer lacks mixer.norm.weight or mixer.conv1d.weight.")
    heads, inner, conv_dim, d_conv = a_log.shape[0], norm.shape[0], conv.shape[0], conv.shape[-1]
    groups = int(mixer.get("ngroups", 1))
    d_state, rest = divmod(conv_dim - inner, 2 * groups)
    if rest or inner % heads or inner % hidden:
        raise ConversionError(
            f"the Vamba Mamba-2 shapes do not fit together (d_inner {inner}, heads {heads}, conv channels {conv_dim}, "
            f"groups {groups}, hidden {hidden})."
        )
    options.update(visual_mixer="mamba2", ssm_d_state=d_state, ssm_d_conv=d_conv, ssm_expand=inner // hidden,
                   ssm_head_dim=inner // heads, ssm_n_groups=groups, ssm_chunk_size=int(mixer.get("chunk_size", 256)))
    if mixer.get("hidden_dim") not in (None, hidden):
        notes.append(f"vision_mamba_mixer_config.hidden_dim {mixer.get('hidden_dim')} is not the LM width {hidden}.")
    return options


def qwen2vl_vamba_config(config: Any, vamba_options: dict[str, Any] | None = None, **overrides: Any) -> HybridVLMConfig:
    """The Vamba HybridVLMConfig for a Qwen2-VL config (or config.json dict): its tower + merger (identity projector),
    its LM as plain Qwen2 (M-RoPE equals RoPE for HybridVLM's 1-D positions), its placeholder token ids."""
    vision = qwen2vl_vision_config(config)
    text = qwen2_text_config(config)

    def get(name: str) -> Any:
        return config.get(name) if isinstance(config, dict) else getattr(config, name, None)

    tie = bool(get("tie_word_embeddings"))
    values: dict[str, Any] = dict(
        vision_config=vision,
        text_config={**text, "tie_word_embeddings": tie},
        decoder_type="vamba",
        vamba_options=vamba_options,
        projector_type="identity",
        vision_feature_layer=-1,
        image_token_id=get("image_token_id"),
        video_token_id=get("video_token_id"),
        tie_word_embeddings=tie,
    )
    values.update(overrides)
    return HybridVLMConfig(**values)


def build_recipe(kind: str, folder: Path, reader: CheckpointReader, options: ConvertOptions) -> Recipe:
    """The recipe of a Vamba folder (`qwen2_vl` with Vamba's added weights; the engine checked the model type)."""
    raw = read_json(folder / "config.json")
    entries = reader.tensors()
    if not any(ADDED_WEIGHT_PATTERN.search(name) for name in entries):
        raise ConversionError(
            f"{folder} is a plain Qwen2-VL checkpoint (no cross_attn/alpha/vision_mixer weights), not Vamba. Build a "
            "Vamba model from it with hybrid_vlm.build_vamba(folder), or load it with transformers."
        )
    notes: list[str] = []
    if not isinstance(raw.get("vision_config"), Mapping):
        raise ConversionError(f"{folder}/config.json has no vision_config for the Qwen2-VL vision tower.")
    vision = qwen2vl_vision_config({**raw["vision_config"], "model_type": "qwen2_vl_vision"})
    merger = first_match(entries, r"^(?:model\.)?visual\.merger\.mlp\.2\.weight$")
    if merger is not None and merger.shape[0] != vision.hidden_size:
        notes.append(f"vision_config.hidden_size {vision.hidden_size} corrected to the merger's output width "
                     f"{merger.shape[0]} (the weights decide).")
        vision.hidden_size = merger.shape[0]
    text = qwen2_text_config(raw)
    vamba_options = _vamba_options(raw, entries, text["hidden_size"], notes)
    # The reference leaves cross-attention queries/keys unrotated unless this flag is set; with it, queries are
    # rotated at their text positions and keys by M-RoPE at each visual token's (t, h, w) in its grid.
    vamba_options["cross_attention_rope"] = bool(raw.get("cross_attn_use_position_embeddings", False))
    if vamba_options["cross_attention_rope"]:
        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        if isinstance(raw.get("text_config"), Mapping):
            rope = raw["text_config"].get("rope_scaling") or raw["text_config"].get("rope_parameters") or rope
        section = rope.get("mrope_section") if isinstance(rope, Mapping) else None
        if not section:
            raise ConversionError(
                f"{folder}/config.json sets cross_attn_use_position_embeddings=true but its rope_scaling has no "
                "mrope_section, which the reference's M-RoPE on the cross-attention keys needs."
            )
        vamba_options.update(cross_attention_key_positions="grid", mrope_section=[int(v) for v in section])
    tie = "lm_head.weight" not in entries
    if tie and not raw.get("tie_word_embeddings", False):
        raise ConversionError("the source has no lm_head.weight and its config does not tie it to the embeddings.")
    config = qwen2vl_vamba_config(
        {**text, "model_type": "qwen2_vl", "vision_config": vision.to_dict(), "tie_word_embeddings": tie},
        vamba_options,
        image_token_id=raw.get("image_token_id", 151655), video_token_id=raw.get("video_token_id", 151656),
    )
    recipe = Recipe(config, _vamba_rules(), notes=notes, description="Vamba (TIGER-AI-Lab/Vamba, qwen2_vl)")
    if vamba_options["mix"] == "sum":  # use_alpha_balancing=false: no alpha to load; ours is kept but unused
        recipe.filled = {f"model.language_model.layers.{i}.alpha": torch.tensor(0.5)
                         for i in range(int(text["num_hidden_layers"]))}
        notes.append("the source has no alpha (use_alpha_balancing=false): mix='sum' (SA + CA, as the reference); "
                     "the unused alpha weights are written as 0.5.")
    if has_tokenizer(folder):
        _vamba_processor_parts(folder, recipe, vision)
    return recipe


def _vamba_processor_parts(folder: Path, recipe: Recipe, vision: Any) -> None:
    """Tokenizer, processors, chat template and generation config that reproduce the reference's chat code.

    Prompt: Qwen2-VL ChatML with the default system prompt; each image/video becomes ``<|vision_start|>``, one
    ``<|image_pad|>``/``<|video_pad|>`` per visual token, ``<|vision_end|>`` (the reference has no pads: its visual
    tokens are not in the text; the model splits them out, so the text stream is the reference's). Pixels: Qwen2-VL's
    `smart_resize` with the source's min/max pixels, bicubic, its mean/std. Frames of a video file: Vamba's chat
    sampling (`vamba_middle`), an even count (two frames per temporal patch).
    """
    config = recipe.config
    tokenizer = load_tokenizer(folder)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (VAMBA_IMAGE_TOKEN, VAMBA_VIDEO_TOKEN)}
    for token, token_id in ids.items():
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ConversionError(
                f"the tokenizer in {folder} has no {token!r} token; Vamba's prompts need Qwen2-VL's special tokens "
                "(<|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>)."
            )
    if config.image_token_id != ids[VAMBA_IMAGE_TOKEN] or config.video_token_id != ids[VAMBA_VIDEO_TOKEN]:
        recipe.notes.append(
            f"image/video token ids set to the tokenizer's {VAMBA_IMAGE_TOKEN} / {VAMBA_VIDEO_TOKEN} ids "
            f"{ids[VAMBA_IMAGE_TOKEN]} / {ids[VAMBA_VIDEO_TOKEN]} (config.json said {config.image_token_id} / "
            f"{config.video_token_id})."
        )
        config.image_token_id, config.video_token_id = ids[VAMBA_IMAGE_TOKEN], ids[VAMBA_VIDEO_TOKEN]
    saved = source_image_processor_dict(folder) or {}
    patch = int(saved.get("patch_size", getattr(vision, "patch_size", 14)))
    merge = int(saved.get("merge_size", getattr(vision, "spatial_merge_size", 2)))
    if patch * merge != int(vision.patch_size) * int(vision.spatial_merge_size):
        raise ConversionError(
            f"preprocessor_config.json says patch {patch} x merge {merge}, but the vision tower has patch "
            f"{vision.patch_size} x merge {vision.spatial_merge_size}."
        )
    size = saved.get("size") if isinstance(saved.get("size"), dict) else {}
    min_pixels = saved.get("min_pixels", size.get("min_pixels", size.get("shortest_edge", 56 * 56)))
    max_pixels = saved.get("max_pixels", size.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)))
    if "min_pixels" not in saved:
        recipe.notes.append(f"the source saved no min/max pixels; using {min_pixels} / {max_pixels}.")
    frame_params: dict[str, Any] = dict(
        do_resize=True,
        size={"min_pixels": int(min_pixels), "max_pixels": int(max_pixels), "factor": patch * merge},
        resample=saved.get("resample", 3),  # bicubic
        do_center_crop=False,
        do_rescale=saved.get("do_rescale", True),
        rescale_factor=saved.get("rescale_factor", 1 / 255),
        do_normalize=saved.get("do_normalize", True),
        image_mean=saved.get("image_mean", OPENAI_CLIP_MEAN),
        image_std=saved.get("image_std", OPENAI_CLIP_STD),
        do_convert_rgb=saved.get("do_convert_rgb", True),
    )
    recipe.tokenizer = tokenizer
    recipe.image_processor = HybridVLMImageProcessor(**frame_params, anyres=False)
    recipe.processor_kwargs = {
        "image_token": VAMBA_IMAGE_TOKEN,
        "video_token": VAMBA_VIDEO_TOKEN,
        "video_processor": HybridVLMVideoProcessor(
            **frame_params,
            sampling="vamba_middle",
            num_frames=VAMBA_NUM_FRAMES,
            temporal_patch_size=int(saved.get("temporal_patch_size", vision.temporal_patch_size)),
        ),
    }
    recipe.image_layout = recipe.video_layout = "qwen2vl"
    recipe.layout_markers = "special"
    recipe.chat_template = VAMBA_CHAT_TEMPLATE
    # The reference generates with nothing suppressed (a generated pad is an ordinary token to it and to us).
    recipe.generation_config = source_generation_config(folder, config.text_config, [])
