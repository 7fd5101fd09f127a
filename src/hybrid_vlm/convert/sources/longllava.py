"""LongLLaVA (FreedomIntelligence/LongLLaVA, `llava_jamba`) checkpoints -> HybridVLM.

Its vendored 2024 Jamba names differ from transformers' Jamba (`moe.experts.{j}`, `pre_moe_layernorm`,
`mamba.{B,C}_layernorm`); its config mixes Jamba's fields with LLaVA's training-script `mm_*` fields; it never had an
`<image>` token (images were spliced in by id), so `<image>`/`<video>` are added, with zero rows in the embeddings.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...chat_templates import LONGLLAVA_CHAT_TEMPLATE
from ...configuration_hybrid_vlm import HybridVLMConfig
from ...image_processing_hybrid_vlm import HybridVLMImageProcessor
from ...presets import CLIP_VIT_L_336
from ..common import (
    Recipe,
    add_placeholder_tokens,
    has_name,
    has_tokenizer,
    image_processor_from_source,
    load_tokenizer,
    read_json,
    source_generation_config,
    source_image_processor_dict,
)
from ..errors import ConversionError
from ..options import ConvertOptions
from ..reader import CheckpointReader, SourceTensor
from ..rules import Rule, common_drop_rules, pad_rows

__all__ = ["build_recipe", "longllava_rules"]


# LongLLaVA config fields that belong to LLaVA's training scripts, not to the Jamba language model.
_JAMBA_RENAMES = {"n_ctx": "max_position_embeddings"}


def _jamba_text_config(raw: Mapping[str, Any]) -> Any:
    """transformers' JambaConfig from a llava_jamba config: the Jamba fields, LLaVA's mm_* fields left out."""
    from transformers import JambaConfig

    known = set(JambaConfig().to_dict())
    values = {}
    for key, value in raw.items():
        key = _JAMBA_RENAMES.get(key, key)
        if key in known and key not in ("model_type", "architectures", "auto_map", "transformers_version"):
            values[key] = value
    return JambaConfig(**values)


_KNOWN_CLIP_TOWERS = {"clip-vit-large-patch14-336": 336, "clip-vit-large-patch14": 224}


def _clip_config_from_weights(entries: Mapping[str, SourceTensor], prefix: str, tower_name: str) -> dict[str, Any]:
    """A CLIP vision config read off the tower's weights; heads and activation come from the tower's name when it is
    a known OpenAI CLIP, else heads assume CLIP's 64-wide heads."""

    def shape(suffix: str) -> tuple[int, ...]:
        key = prefix + suffix
        if key not in entries:
            raise ConversionError(f"the vision tower weights lack {key!r}; pass vision_config= explicitly.")
        return entries[key].shape

    hidden, _, patch, _ = shape("embeddings.patch_embedding.weight")
    positions = shape("embeddings.position_embedding.weight")[0]
    layers = len({m.group(1) for n in entries if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", n))})
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"the vision tower has {positions} positions, not a CLS token plus a square grid.")
    inferred = {
        "model_type": "clip_vision_model", "hidden_size": hidden,
        "intermediate_size": shape("encoder.layers.0.mlp.fc1.weight")[0], "num_hidden_layers": layers,
        "image_size": grid * patch, "patch_size": patch,
    }
    base_name = tower_name.rstrip("/").split("/")[-1]
    if base_name in _KNOWN_CLIP_TOWERS:
        known = {**CLIP_VIT_L_336, "image_size": _KNOWN_CLIP_TOWERS[base_name]}
        different = {k: (v, known[k]) for k, v in inferred.items() if known.get(k) != v}
        if different:
            raise ConversionError(f"the vision tower is named {tower_name!r} but its weights differ: {different}.")
        return known
    if hidden % 64:
        raise ConversionError(
            f"cannot tell the head count of the vision tower {tower_name!r} (width {hidden}); pass vision_config= "
            "(a CLIP vision config dict or the tower's folder)."
        )
    return {**inferred, "num_attention_heads": hidden // 64}


def _vision_config_from_option(value: Any) -> dict[str, Any]:
    from transformers import PretrainedConfig

    if isinstance(value, PretrainedConfig):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    if path.is_dir():
        path = path / "config.json"
    data = read_json(path)
    if data.get("model_type") in ("clip", "siglip") and isinstance(data.get("vision_config"), dict):
        data = {**data["vision_config"], "model_type": f"{data['model_type']}_vision_model"}
    return data


def _longllava_vision_config(raw: Mapping[str, Any], entries: Mapping[str, SourceTensor], option: Any, prefix: str,
                             notes: list[str]) -> dict[str, Any]:
    tower = str(raw.get("mm_vision_tower") or raw.get("vision_tower") or "")
    if option is not None:
        return _vision_config_from_option(option)
    if tower and Path(tower, "config.json").is_file():
        notes.append(f"vision config read from the tower folder {tower}.")
        return _vision_config_from_option(tower)
    if "siglip" in tower.lower():
        raise ConversionError(f"the vision tower {tower!r} is SigLIP; pass vision_config= (its config or folder).")
    config = _clip_config_from_weights(entries, prefix, tower)
    notes.append(f"vision config of {tower or 'the vision tower'} derived from its weights and name.")
    return config


def build_recipe(kind: str, folder: Path, reader: CheckpointReader, options: ConvertOptions) -> Recipe:
    """The recipe of a LongLLaVA folder (its config.json declares `llava_jamba`, which the engine checked)."""
    raw = read_json(folder / "config.json")
    notes: list[str] = []
    if raw.get("mm_use_im_start_end"):
        raise NotImplementedError("mm_use_im_start_end=True (LLaVA's <im_start>/<im_end> tokens) is not supported.")
    projector = raw.get("mm_projector_type", "linear")
    if projector not in ("mlp2x_gelu", "mlp3x_gelu"):
        raise NotImplementedError(
            f"projector {projector!r} is not supported; HybridVLM has LLaVA's 'mlp2x_gelu' and 'mlp3x_gelu'."
        )
    if not raw.get("mamba_inner_layernorms", True):
        raise NotImplementedError(
            "mamba_inner_layernorms=False: transformers' Jamba always normalises dt/B/C, so such a checkpoint "
            "would compute something else there."
        )
    text = _jamba_text_config(raw)
    entries = reader.tensors()
    vision_prefix = "model.vision_tower.vision_tower.vision_model."
    vision = _longllava_vision_config(raw, entries, options.vision_config, vision_prefix, notes)
    select = raw.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if select not in strategies:
        raise NotImplementedError(f"mm_vision_select_feature={select!r} is not supported (patch or cls_patch).")
    pooling = raw.get("resamplePooling")
    pooled_grid = None
    if pooling:
        if pooling != "2d":
            raise NotImplementedError(
                f"resamplePooling={pooling!r} (1-D linear pooling to 144 tokens) is not supported; '2d' is."
            )
        grid = vision["image_size"] // vision["patch_size"]
        if grid != 24:
            raise ConversionError(
                f"LongLLaVA's 2-D pooling is hard-wired to a 24x24 patch grid; this tower has {grid}x{grid}."
            )
        pooled_grid = 12
    merge = str(raw.get("mm_patch_merge_type", "flat"))
    newline = "unpad" in merge
    anyres = raw.get("image_aspect_ratio") == "anyres"
    if newline and not has_name(entries, r"^model\.image_newline$"):
        raise ConversionError(f"mm_patch_merge_type={merge!r} needs model.image_newline, which the source lacks.")
    layout = {"anyres_merge": "spatial" if merge.startswith("spatial") else "flat", "image_newline": newline,
              "anyres_unpad": newline}

    tokenizer = load_tokenizer(folder, exact=True) if has_tokenizer(folder) else None
    vocab_size = text.vocab_size
    image_id = video_id = None
    if tokenizer is not None:
        image_id, video_id = add_placeholder_tokens(tokenizer, notes)
        vocab_size = max(vocab_size, len(tokenizer))
    extra_rows = vocab_size - text.vocab_size
    text.vocab_size = vocab_size
    text_dict = text.to_dict()
    tie = "lm_head.weight" not in entries
    if tie and not raw.get("tie_word_embeddings", False):
        raise ConversionError("the source has no lm_head.weight and its config does not tie it to the embeddings.")
    text_dict["tie_word_embeddings"] = tie
    config = HybridVLMConfig(
        vision_config=vision,
        text_config=text_dict,
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategies[select],
        image_token_id=image_id,
        video_token_id=video_id,
        vision_pooled_grid=pooled_grid,
        tie_word_embeddings=tie,
        # LLaVA's mlp3x_gelu: vision -> LM width, then LM -> LM twice (the intermediate width is the LM's)
        projector_type=projector,
        projector_intermediate_size=text.hidden_size if projector == "mlp3x_gelu" else None,
        **layout,
    )
    rules = longllava_rules(config.text_config, extra_rows)
    if extra_rows:
        notes.append(f"added {extra_rows} zero row(s) to the embeddings and LM head for the new placeholder tokens.")
    recipe = Recipe(config, rules, notes=notes, description="LongLLaVA (llava_jamba, FreedomIntelligence/LongLLaVA)")
    if tokenizer is not None:
        recipe.tokenizer = tokenizer
        recipe.image_processor = _longllava_image_processor(raw, vision, anyres, notes)
        # LongLLaVA's chat code reads a video file at one frame a second, at most 128 frames (spread evenly over the
        # video when it is longer); frames passed in memory are used as given.
        recipe.video_sampling = {"sampling": "fps", "fps": 1.0, "max_frames": 128}
        recipe.chat_template = LONGLLAVA_CHAT_TEMPLATE
        if layout["anyres_merge"] == "flat":
            # LongLLaVA's own prompts: <img>...</img> around images, <vid>/<t> for videos, written as plain text;
            # videos exactly as its chat code writes them (the 'longllava-chat' layout, docs/converting.md).
            recipe.image_layout = "longllava"
            recipe.video_layout = "longllava-chat"
            recipe.layout_markers = "text"
            notes.append("prompts use the 'longllava' image layout and the 'longllava-chat' video layout with "
                         "plain-text markers, as LongLLaVA's chat code writes them (<img>, </img>, <vid>, <t>, </vid> "
                         "are ordinary text there; its video prompt ends in '<img><image></img</vid>').")
        else:
            recipe.video_layout = "plain"
            notes.append(f"mm_patch_merge_type={merge!r} stitches tiles spatially, which the 'longllava' layout "
                         "(global view + whole tiles per row) cannot describe: images and videos use the llava layout, "
                         "without <img>/<vid> markers.")
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        eos = eos if isinstance(eos, int) and eos != tokenizer.unk_token_id else None
        recipe.generation_config = source_generation_config(folder, config.text_config, [image_id, video_id], eos)
    return recipe


def _longllava_image_processor(raw: Mapping[str, Any], vision: Mapping[str, Any], anyres: bool, notes: list[str]
                               ) -> Any:
    """The tower's own preprocessing (its folder's preprocessor_config.json, as the reference loads it; else the
    encoder's standard one), with LongLLaVA's `image_aspect_ratio`: "pad" pads to a square with the mean colour."""
    overrides: dict[str, Any] = {}
    if anyres:
        pinpoints = raw.get("image_grid_pinpoints")
        overrides["image_grid_pinpoints"] = ast.literal_eval(pinpoints) if isinstance(pinpoints, str) else pinpoints
    elif raw.get("image_aspect_ratio", "pad") == "pad":  # absent: the reference's `process_images` pads too
        overrides["image_aspect_ratio"] = "pad"
        notes.append("image_aspect_ratio='pad': images are padded to a centred square with the mean colour before "
                     "resizing, as LongLLaVA's expand2square does.")
    tower = Path(str(raw.get("mm_vision_tower") or raw.get("vision_tower") or ""))
    if tower.parts and source_image_processor_dict(tower) is not None:
        notes.append(f"image preprocessing read from the tower folder {tower}.")
        return image_processor_from_source(tower, vision, notes, **overrides)
    return HybridVLMImageProcessor.from_vision_config(vision, **overrides)


def longllava_rules(text_config: Any, extra_rows: int) -> list[Rule]:
    """LongLLaVA (vendored AI21 Jamba + LLaVA) names -> ours.

    The vendored Jamba gives every layer a `moe` block; a dense layer's is a single expert without router
    (`moe.experts.0.*`), which transformers' Jamba calls `feed_forward.*`.
    """
    experts = _layers_num_experts(text_config)

    def feed_forward(match: re.Match[str]) -> str | None:
        layer, expert, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        if layer >= len(experts):
            return None
        if experts[layer] > 1:
            return f"model.language_model.layers.{layer}.feed_forward.experts.{expert}.{rest}"
        if expert != 0:
            return None  # a dense layer has exactly one expert: anything else is a leftover to report
        return f"model.language_model.layers.{layer}.feed_forward.{rest}"

    pad = pad_rows(extra_rows) if extra_rows else None
    lm = r"model.language_model.layers.\1"
    return common_drop_rules() + [
        Rule.rename("vision tower (LLaVA's CLIPVisionTower wrapper removed)",
                    r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
        Rule.rename("projector mm_projector.0 -> linear_1", r"^model\.mm_projector\.0\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_1.\1"),
        Rule.rename("projector mm_projector.2 -> linear_2", r"^model\.mm_projector\.2\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_2.\1"),
        Rule.rename("projector mm_projector.4 -> linear_3 (mlp3x_gelu)", r"^model\.mm_projector\.4\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_3.\1"),
        Rule.rename("AnyRes image newline", r"^model\.image_newline$", "model.image_newline"),
        Rule.rename("embeddings", r"^model\.embed_tokens\.weight$", "model.language_model.embed_tokens.weight", pad),
        Rule.rename("final norm", r"^model\.final_layernorm\.weight$", "model.language_model.final_layernorm.weight"),
        Rule.rename("moe.experts.{j} -> feed_forward[.experts.{j}]",
                    r"^model\.layers\.(\d+)\.moe\.experts\.(\d+)\.(.+)$", feed_forward),
        Rule.rename("moe.router -> feed_forward.router", r"^model\.layers\.(\d+)\.moe\.router\.weight$",
                    lm + ".feed_forward.router.weight"),
        Rule.rename("pre_moe_layernorm -> pre_ff_layernorm", r"^model\.layers\.(\d+)\.pre_moe_layernorm\.weight$",
                    lm + ".pre_ff_layernorm.weight"),
        Rule.rename("mamba.B_layernorm -> mamba.b_layernorm", r"^model\.layers\.(\d+)\.mamba\.B_layernorm\.weight$",
                    lm + ".mamba.b_layernorm.weight"),
        Rule.rename("mamba.C_layernorm -> mamba.c_layernorm", r"^model\.layers\.(\d+)\.mamba\.C_layernorm\.weight$",
                    lm + ".mamba.c_layernorm.weight"),
        Rule.rename("Jamba layer (same name)",
                    r"^model\.layers\.(\d+)\.((?:self_attn|mamba)\.[^.]+(?:\.weight|\.bias)?|input_layernorm\.weight)$",
                    lm + r".\2"),
        Rule.rename("LM head", r"^lm_head\.weight$", "lm_head.weight", pad),
    ]


def _layers_num_experts(text_config: Any) -> list[int]:
    """Experts per layer the way transformers' Jamba lays them out (1 = a dense MLP)."""
    period, offset = text_config.expert_layer_period, text_config.expert_layer_offset
    return [
        text_config.num_experts if i % period == offset else 1 for i in range(text_config.num_hidden_layers)
    ]
