"""transformers' own LLaVA, LLaVA-NeXT and LLaVA-OneVision checkpoints (either transformers line, any LM) -> HybridVLM.

The layouts differ only in where the parts sit (legacy ``language_model.<base>.*`` or 4.52+/5.x's
``model.language_model.*``) and in the AnyRes fields; the weights keep their values and shapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...configuration_hybrid_vlm import VISION_MODEL_TYPES, HybridVLMConfig
from ..common import (
    Recipe,
    base_model_prefix,
    find_name,
    has_tokenizer,
    image_processor_from_source,
    load_tokenizer,
    source_chat_template,
    source_generation_config,
    source_image_processor_dict,
    tie_setting,
)
from ..options import ConvertOptions
from ..reader import CheckpointReader
from ..rules import Rule, common_drop_rules

__all__ = ["build_recipe", "llava_rules"]


def _strip_vision_model(match: re.Match[str]) -> str:
    return "model.vision_tower." + match.group(1)


def llava_rules(text_config: Any, newline: bool) -> list[Rule]:
    """transformers LLaVA layouts of every release -> ours.

    Legacy (both lines save this): ``vision_tower[.vision_model].*``, ``multi_modal_projector.*``,
    ``language_model.<base>.*``, ``language_model.lm_head.*``, ``image_newline``. In-memory 4.52+/5.x names:
    ``model.vision_tower[.vision_model].*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
    ``lm_head.*``, ``model.image_newline``.
    """
    base = re.escape(base_model_prefix(text_config))
    rules = common_drop_rules() + [
        Rule.rename("vision tower (4.x CLIP/SigLIP wrapper removed)", r"^(?:model\.)?vision_tower\.vision_model\.(.+)$",
                    _strip_vision_model),
        Rule.rename("vision tower", r"^(?:model\.)?vision_tower\.(.+)$", r"model.vision_tower.\1"),
        Rule.rename("projector", r"^(?:model\.)?multi_modal_projector\.(.+)$", r"model.multi_modal_projector.\1"),
        Rule.rename("language model (legacy layout)", rf"^language_model\.{base}\.(.+)$", r"model.language_model.\1"),
        Rule.rename("language model", r"^model\.language_model\.(.+)$", r"model.language_model.\1"),
        Rule.rename("LM head", r"^(?:language_model\.)?lm_head\.(.+)$", r"lm_head.\1"),
    ]
    if newline:
        rules.append(Rule.rename("AnyRes image newline", r"^(?:model\.)?image_newline$", "model.image_newline"))
    return rules


def build_recipe(kind: str, folder: Path, reader: CheckpointReader, options: ConvertOptions) -> Recipe:
    """The recipe of a transformers LLaVA, LLaVA-NeXT (`llava-next`) or LLaVA-OneVision (`llava-onevision`) folder."""
    from transformers import AutoConfig

    source = AutoConfig.from_pretrained(str(folder))
    model_type = source.model_type
    vision, text = source.vision_config, source.text_config
    notes: list[str] = []
    video_token_id = None
    onevision: dict[str, Any] = {}
    if kind == "llava-onevision":
        aspect = str(getattr(source, "vision_aspect_ratio", "anyres_max_9") or "")
        match = re.fullmatch(r"anyres_max_(\d+)", aspect)
        if match is None and aspect != "anyres":
            raise NotImplementedError(f"vision_aspect_ratio={aspect!r} is not supported ('anyres_max_N' or 'anyres').")
        video_token_id = getattr(source, "video_token_id", None)
        if video_token_id is None:
            video_token_id = getattr(source, "video_token_index", None)
        # its packing: tile map capped at N views' tokens; videos 2x2-pooled per frame, one newline per video
        onevision.update(anyres_max_feature_tiles=int(match.group(1)) if match else None, video_pool_stride=2,
                         video_newline=True, video_token_id=video_token_id)
    if vision.model_type not in VISION_MODEL_TYPES:
        raise NotImplementedError(
            f"the source's vision tower is '{vision.model_type}', which HybridVLM does not support "
            f"(supported: {list(VISION_MODEL_TYPES)})."
        )
    strategy = source.vision_feature_select_strategy
    if vision.model_type == "siglip_vision_model" and strategy == "default":
        raise NotImplementedError(
            "this LLaVA uses a SigLIP tower with vision_feature_select_strategy='default', which in transformers "
            "drops SigLIP's first *patch* token (SigLIP has no CLS token); HybridVLM drops only real prefix tokens."
        )
    entries = reader.tensors()
    newline = kind in ("llava-next", "llava-onevision")
    head = find_name(entries, ["language_model.lm_head.weight", "lm_head.weight"])
    base = base_model_prefix(text)
    embed_names = [f"language_model.{base}.embed_tokens.weight", "model.language_model.embed_tokens.weight"]
    tie = tie_setting(entries, reader, text, head, find_name(entries, embed_names), notes)
    text_dict = text.to_dict()
    text_dict["tie_word_embeddings"] = tie
    image_token_id = getattr(source, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(source, "image_token_index", None)
    extra: dict[str, Any] = {}
    if newline:
        # the pinpoints let the model take transformers' processor output (image_sizes alone) as transformers does
        extra.update(image_newline=True, anyres_unpad=True, anyres_merge="spatial",
                     image_grid_pinpoints=[list(p) for p in source.image_grid_pinpoints])
    extra.update(onevision)
    config = HybridVLMConfig(
        vision_config=vision.to_dict(),
        text_config=text_dict,
        projector_hidden_act=source.projector_hidden_act,
        multimodal_projector_bias=getattr(source, "multimodal_projector_bias", True),
        vision_feature_layer=source.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_id=image_token_id,
        tie_word_embeddings=tie,
        **extra,
    )
    recipe = Recipe(config, llava_rules(text, newline), notes=notes,
                     description=f"transformers {type(source).__name__.replace('Config', '')} ({model_type})")
    if has_tokenizer(folder):
        recipe.tokenizer = load_tokenizer(folder)
        processor_overrides: dict[str, Any] = {}
        if newline:
            pinpoints = source.image_grid_pinpoints
            saved = source_image_processor_dict(folder) or {}
            if saved.get("image_grid_pinpoints") not in (None, pinpoints):
                notes.append("the source's image processor lists other image_grid_pinpoints than its model config; "
                             "the model config's (which decide the model's packing) are used.")
            processor_overrides["image_grid_pinpoints"] = pinpoints
        recipe.image_processor = image_processor_from_source(folder, vision, notes, **processor_overrides)
        recipe.chat_template = source_chat_template(folder, recipe.tokenizer)
        if recipe.chat_template is None:
            notes.append("the source has no chat template; the converted processor has none either.")
        recipe.generation_config = source_generation_config(
            folder, text, [i for i in (image_token_id, video_token_id) if i is not None]
        )
    return recipe
