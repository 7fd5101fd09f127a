"""Build a model of one family from a trained model of another: `build_vamba` turns a LLaVA-style VLM or Qwen2-VL
into Vamba.

Vamba's ablation (arXiv:2503.11579, Table 2) shows the initialisation is what matters: every pretrained weight is
carried over unchanged, the cross-attention of each layer starts as a copy of that layer's self-attention, the
visual SSM blocks start as mamba-ssm initialises them, and the mixing weight `alpha` starts at 0.5.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageTextToText

from ..configuration_hybrid_vlm import HybridVLMConfig
from ..modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from ..registration import register_auto_classes
from ..vamba import init_vamba_weights, is_added_weight
from .sources.vamba import check_unconverted_vamba, qwen2vl_vamba_config

__all__ = ["build_vamba"]


def _load_source(source: Any) -> nn.Module:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isdir(source):
            raise ValueError(f"build_vamba: {source!r} is not a local folder; pass a loaded model or a folder path.")
        check_unconverted_vamba(source)  # a released Vamba folder would load as plain Qwen2-VL, its layers dropped
        register_auto_classes()  # a HybridVLM folder loads through the Auto classes
        return AutoModelForImageTextToText.from_pretrained(source)
    if not isinstance(source, nn.Module):
        raise TypeError(f"build_vamba: expected a model or a folder path, got {type(source).__name__}.")
    return source


def _vamba_config(source: nn.Module, vamba_options: dict[str, Any] | None) -> HybridVLMConfig:
    config = source.config
    if isinstance(config, HybridVLMConfig):
        if config.decoder_type != "interleaved":
            raise ValueError(f"build_vamba: the source already uses decoder_type={config.decoder_type!r}.")
        values = config.to_dict()
        for key in ("decoder_type", "vamba_options", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        return HybridVLMConfig(**values, decoder_type="vamba", vamba_options=vamba_options)
    if config.model_type == "llava":
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(config, "image_token_index", None)
        return HybridVLMConfig(
            vision_config=config.vision_config.to_dict(),
            text_config=config.text_config.to_dict(),
            decoder_type="vamba",
            vamba_options=vamba_options,
            projector_hidden_act=config.projector_hidden_act,
            multimodal_projector_bias=getattr(config, "multimodal_projector_bias", True),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            image_token_id=image_token_id,
        )
    if config.model_type == "qwen2_vl":
        return qwen2vl_vamba_config(config, vamba_options)
    if config.model_type == "qwen2_5_vl":
        raise ValueError(
            "build_vamba: Qwen2.5-VL's vision tower (window attention, RMSNorm, gated MLP) is not Qwen2-VL's, which is "
            "the one HybridVLM supports; start from a Qwen2-VL or a LLaVA-style model."
        )
    raise ValueError(
        f"build_vamba: cannot build Vamba from a '{config.model_type}' model; pass a HybridVLM with "
        "decoder_type='interleaved', a transformers LlavaForConditionalGeneration or Qwen2VLForConditionalGeneration."
    )


# Qwen2VLForConditionalGeneration's state dict (4.57 and 5.x: `model.visual`, `model.language_model`, `lm_head`; older
# saved layouts: `visual`, `model`) -> HybridVLM's names.
_QWEN2VL_RENAMES = (
    (re.compile(r"^(?:model\.)?visual\."), "model.vision_tower."),
    (re.compile(r"^model\.language_model\."), "model.language_model."),
    (re.compile(r"^model\.(?!vision_tower\.|language_model\.)"), "model.language_model."),
)


def _qwen2vl_state_dict(source: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in source.state_dict().items():
        for pattern, replacement in _QWEN2VL_RENAMES:
            new, count = pattern.subn(replacement, key, count=1)
            if count:
                key = new
                break
        state[key] = tensor
    return state


def _source_state_dict(source: nn.Module) -> dict[str, torch.Tensor]:
    """The source's weights under HybridVLM's names (transformers 4.x LLaVA nests CLIP/SigLIP in `vision_model`)."""
    if getattr(source.config, "model_type", None) == "qwen2_vl":
        return _qwen2vl_state_dict(source)
    state = {}
    for key, tensor in source.state_dict().items():
        if key.split(".")[0] in ("vision_tower", "multi_modal_projector", "language_model"):
            key = "model." + key  # transformers 4.x LLaVA checkpoints without the `model.` level
        state[key.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1)] = tensor
    return state


@torch.no_grad()
def build_vamba(source: Any, vamba_options: dict[str, Any] | None = None) -> HybridVLMForConditionalGeneration:
    """A Vamba-family HybridVLM initialised from a LLaVA-style VLM (a loaded model or a local folder).

    Args:
        source: a `HybridVLMForConditionalGeneration` with `decoder_type="interleaved"` and a transformer LM, a
            transformers `LlavaForConditionalGeneration`, or a transformers `Qwen2VLForConditionalGeneration` (the
            paper's own base: its vision tower and merger become the HybridVLM vision tower, bit for bit, with an
            identity projector; its LM becomes a plain Qwen2); or the folder of one.
        vamba_options: `hybrid_vlm.vamba.VambaOptions` fields (alpha_init, visual_mixer, cross_attention_init, SSM
            sizes, ...).

    Every source weight lands in the new model bit for bit; a source weight with no place, or a new weight other
    than Vamba's additions, raises instead of being dropped. Under DeepSpeed ZeRO-3 the Vamba initialisers gather
    partitioned parameters before copying; build outside FSDP wrapping (or inside `summon_full_params`).
    """
    source = _load_source(source)
    config = _vamba_config(source, vamba_options)
    dtype = next(source.parameters()).dtype
    model = HybridVLMForConditionalGeneration(config).to(dtype)
    state = _source_state_dict(source)
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not is_added_weight(k)]
    if unexpected or missing:
        raise ValueError(
            f"build_vamba: the source's weights do not map onto the Vamba model: {len(unexpected)} source weights have "
            f"no place (first: {unexpected[:3]}), {len(missing)} weights are missing (first: {missing[:3]})."
        )
    init_vamba_weights(model)
    model.generation_config = source.generation_config
    return model.to(next(source.parameters()).device).eval()
