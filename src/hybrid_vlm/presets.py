"""Named configurations: tiny random models for tests and demos, and the papers' full-size shapes.

Tiny presets build in well under two seconds on a CPU with the tokenizer shipped in the package. Full-size presets
are for inspecting shapes and parameter counts: build them on the meta device (`device="meta"`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from .configuration_hybrid_vlm import HybridVLMConfig

# CLIP ViT-L/14 at 336 px: the vision tower of LLaVA-1.5/1.6, LongLLaVA and MMJamba.
CLIP_VIT_L_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
# Jamba-v0.1 (AI21): 32 layers, attention:Mamba 1:7, MoE (16 experts, top-2) every other layer, 52B parameters.
JAMBA_V01 = {
    "model_type": "jamba",
    "vocab_size": 65536,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "attn_layer_period": 8,
    "attn_layer_offset": 4,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 16,
    "num_experts_per_tok": 2,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# A small CLIP-style tower: 28x28 crops of 14 px patches -> 4 patch tokens (+ CLS).
TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 32,
}
# DINOv2 ViT-L/14 with 4 registers and SigLIP ViT-SO400M/14: MambaVLM's and Cobra's encoder pair (Prismatic's
# "dinosiglip-vit-so-384px"). Both checkpoints see a 384 px picture as a 27x27 patch grid (their patch convolution
# drops the last 6 pixels); we feed 378 px (27 x 14) so the pixels and the grid line up exactly. 27x27 is also the
# position-embedding grid of both checkpoints, so the parameter counts are the checkpoints'.
DINOV2_L_REG_378 = {
    "model_type": "dinov2_with_registers",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "mlp_ratio": 4,
    "num_register_tokens": 4,
    "image_size": 378,
    "patch_size": 14,
}
SIGLIP_SO400M_378 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 378,
    "patch_size": 14,
}
# Mamba-2.8B (state-spaces/mamba-2.8b-slimpj; Cobra's Mamba-2.8B-Zephyr has the same shape): 64 Mamba-1 layers.
MAMBA_2_8B = {
    "model_type": "mamba",
    "vocab_size": 50280,
    "hidden_size": 2560,
    "num_hidden_layers": 64,
    "state_size": 16,
    "expand": 2,
    "conv_kernel": 4,
    "time_step_rank": 160,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
# Tiny versions of the pair: different widths (as 1024 vs 1152), same 4x4 patch grid.
TINY_DINOV2 = {
    "model_type": "dinov2_with_registers",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 2,
    "num_register_tokens": 2,
    "image_size": 56,
    "patch_size": 14,
}
TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 14,
}
_TINY_WIDTH = {"hidden_size": 64, "num_hidden_layers": 8}
# Jamba pattern at tiny scale: 8 layers, one attention layer (index 4) per 7 Mamba layers, MoE every other layer.
TINY_JAMBA = {
    "model_type": "jamba",
    **_TINY_WIDTH,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "attn_layer_period": 8,
    "attn_layer_offset": 4,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "mamba_d_state": 8,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 8,
}
TINY_MAMBA2 = {
    "model_type": "mamba2",
    **_TINY_WIDTH,
    "num_heads": 8,
    "head_dim": 16,
    "expand": 2,
    "state_size": 16,
    "n_groups": 1,
    "conv_kernel": 4,
    "chunk_size": 16,
}
TINY_MAMBA = {
    "model_type": "mamba",
    **_TINY_WIDTH,
    "state_size": 8,
    "expand": 2,
    "conv_kernel": 4,
    "time_step_rank": 8,
}
TINY_MAMBA_PROJECTOR = {"projector_ssm": {"mixer": "mamba2", "d_state": 8, "head_dim": 16, "chunk_size": 16}}
TINY_QWEN2 = {
    "model_type": "qwen2",
    **_TINY_WIDTH,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY_VAMBA_OPTIONS = {"ssm_d_state": 16, "ssm_head_dim": 16, "ssm_chunk_size": 16}
# Qwen2-VL's vision tower at tiny scale: 14 px patches, 2x2 merge to the tiny LM width (64).
TINY_QWEN2VL_VISION = {
    "model_type": "qwen2_vl_vision",
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 4,
    "mlp_ratio": 2,
    "hidden_size": _TINY_WIDTH["hidden_size"],
}
# Qwen2-VL-7B (Vamba's base): the ViT (32 blocks, 1280 wide, 16 heads) + merger to the LM width, and its Qwen2 LM.
QWEN2VL_7B_VISION = {
    "model_type": "qwen2_vl_vision",
    "depth": 32,
    "embed_dim": 1280,
    "num_heads": 16,
    "mlp_ratio": 4,
    "hidden_size": 3584,
    "hidden_act": "quick_gelu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2VL_7B_TEXT = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
# Qwen2-VL's tower ends in its merger (already LM-wide): no projector, one feature layer.
QWEN2VL_TOWER_OPTIONS = {"projector_type": "identity", "vision_feature_layer": -1}
# The baseline: a plain transformer of the same width and depth as the tiny Jamba.
TINY_LLAMA = {
    "model_type": "llama",
    **_TINY_WIDTH,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@dataclass(frozen=True)
class Preset:
    """A named configuration; `tiny` ones come with the embedded tokenizer and a ready processor."""

    description: str
    vision_config: dict[str, Any] | list[dict[str, Any]]  # a list: several encoders side by side
    text_config: dict[str, Any]
    tiny: bool
    options: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "jamba-llava-tiny": Preset(
        "LongLLaVA/MMJamba-shaped: CLIP tower, mlp2x_gelu, Jamba LM (attention:Mamba 1:7, MoE every other layer)",
        TINY_CLIP,
        TINY_JAMBA,
        tiny=True,
    ),
    "mamba2-llava-tiny": Preset("LLaVA with a Mamba-2 language model", TINY_CLIP, TINY_MAMBA2, tiny=True),
    "llava-tiny": Preset(
        "Pure-transformer LLaVA baseline, same width and depth as jamba-llava-tiny", TINY_CLIP, TINY_LLAMA, tiny=True
    ),
    "vamba-tiny": Preset(
        "Vamba: CLIP tower, Qwen2 LM whose text sees vision only through per-layer cross-attention, Mamba-2 on "
        "the visual stream",
        TINY_CLIP,
        TINY_QWEN2,
        tiny=True,
        options={"decoder_type": "vamba", "vamba_options": TINY_VAMBA_OPTIONS},
    ),
    "mambavlm-tiny": Preset(
        "MambaVLM: DINOv2 + SigLIP fused along the sequence (2N visual tokens), Mamba cross-stitch projector, Mamba LM",
        [TINY_DINOV2, TINY_SIGLIP],
        TINY_MAMBA,
        tiny=True,
        options={"vision_fusion": "sequence", "projector_type": "mamba", **TINY_MAMBA_PROJECTOR},
    ),
    "cobra-tiny": Preset(
        "Cobra: DINOv2 + SigLIP fused along channels (N tokens), fused 3-layer GELU MLP, Mamba LM",
        [TINY_DINOV2, TINY_SIGLIP],
        TINY_MAMBA,
        tiny=True,
        options={"vision_fusion": "channel", "projector_type": "mlp3x_gelu"},
    ),
    "mambavlm-2.8b": Preset(
        "MambaVLM-2.8B: DINOv2-L/14-reg + SigLIP-SO400M/14 (27x27 each, 1458 visual tokens), Mamba projector, "
        "Mamba-2.8B",
        [DINOV2_L_REG_378, SIGLIP_SO400M_378],
        MAMBA_2_8B,
        tiny=False,
        options={"vision_fusion": "sequence", "projector_type": "mamba", "tie_word_embeddings": True},
    ),
    "cobra-3b": Preset(
        "Cobra-3B: DINOv2-L/14-reg + SigLIP-SO400M/14 on channels (729 visual tokens of width 2176), fused MLP, "
        "Mamba-2.8B-Zephyr",
        [DINOV2_L_REG_378, SIGLIP_SO400M_378],
        MAMBA_2_8B,
        tiny=False,
        options={"vision_fusion": "channel", "projector_type": "mlp3x_gelu", "tie_word_embeddings": True},
    ),
    "vamba-qwen2vl-tiny": Preset(
        "Vamba on Qwen2-VL's vision tower + merger (the paper's base, at tiny scale), Qwen2 LM, Mamba-2 visual stream",
        TINY_QWEN2VL_VISION,
        TINY_QWEN2,
        tiny=True,
        options={"decoder_type": "vamba", "vamba_options": TINY_VAMBA_OPTIONS, **QWEN2VL_TOWER_OPTIONS},
    ),
    "vamba-10b": Preset(
        "Vamba-Qwen2-VL-7B shape: Qwen2-VL-7B (ViT + merger, Qwen2-7B LM) plus per-layer cross-attention and Mamba-2",
        QWEN2VL_7B_VISION,
        QWEN2VL_7B_TEXT,
        tiny=False,
        options={
            "decoder_type": "vamba", "image_token_id": 151655, "video_token_id": 151656, **QWEN2VL_TOWER_OPTIONS,
        },
    ),
    "longllava-a13b": Preset(
        "LongLLaVA-A13B: CLIP ViT-L/14-336 + Jamba-v0.1 (52B total, 13B active)", CLIP_VIT_L_336, JAMBA_V01, tiny=False
    ),
    "longllava-9b": Preset(
        "LongLLaVA-9B: CLIP ViT-L/14-336 + Jamba with only expert 0 kept in each MoE layer",
        CLIP_VIT_L_336,
        {**JAMBA_V01, "num_experts": 1, "num_experts_per_tok": 1},
        tiny=False,
    ),
    "mmjamba-52b": Preset(
        "MMJamba: CLIP ViT-L/14-336 + Jamba-v0.1 (its AnyRes, at most 4 tiles, is a processor setting: max_tiles=4)",
        CLIP_VIT_L_336,
        JAMBA_V01,
        tiny=False,
    ),
}


def list_presets() -> dict[str, str]:
    """Preset names and what each one is."""
    return {name: preset.description for name, preset in PRESETS.items()}


def _get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown preset '{name}'. Available presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


def preset_config(name: str, **overrides: Any) -> HybridVLMConfig:
    """The `HybridVLMConfig` of a preset. `text_config=`/`vision_config=` dicts update the sub-configs' fields;
    other keywords set top-level config fields."""
    preset = _get_preset(name)
    vision = copy.deepcopy(preset.vision_config)
    text = copy.deepcopy(preset.text_config)
    encoders = vision if isinstance(vision, list) else [vision]
    updates = overrides.pop("vision_config", None)
    if isinstance(updates, list):  # one dict of changes per encoder
        if len(updates) != len(encoders):
            raise ValueError(f"Preset '{name}' has {len(encoders)} vision encoders; got {len(updates)} override dicts.")
    else:  # one dict for the only encoder (or for every encoder)
        updates = [updates] * len(encoders)
    targets = [*(("vision_config", e) for e in encoders), ("text_config", text)]
    for (key, target), update in zip(targets, [*updates, overrides.pop("text_config", None)]):
        if update is not None:
            if not isinstance(update, dict):
                raise TypeError(f"{key} override must be a dict of fields to change, got {type(update).__name__}.")
            if "model_type" in update and update["model_type"] != target["model_type"]:
                target.clear()
            target.update(update)
    options = {**preset.options, **overrides}
    if preset.tiny:
        from .tiny_tokenizer import load_tiny_tokenizer

        tokenizer = load_tiny_tokenizer()
        text.setdefault("vocab_size", len(tokenizer))
        text.setdefault("pad_token_id", tokenizer.pad_token_id)
        text.setdefault("bos_token_id", tokenizer.bos_token_id)
        text.setdefault("eos_token_id", tokenizer.eos_token_id)
        options.setdefault("image_token_id", tokenizer.convert_tokens_to_ids("<image>"))
        options.setdefault("video_token_id", tokenizer.convert_tokens_to_ids("<video>"))
    return HybridVLMConfig(vision_config=vision, text_config=text, **options)


def from_preset(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = 0,
    **overrides: Any,
) -> tuple[Any, Any]:
    """Build `(model, processor)` for a preset with random weights.

    Tiny presets return a processor around the embedded tokenizer. Full-size presets must be built with
    `device="meta"` (no memory is allocated; use it to read shapes and `model.num_parameters()`), and return no
    processor: their tokenizer comes with real checkpoints.
    """
    from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    preset = _get_preset(name)
    config = preset_config(name, **overrides)
    device = torch.device(device) if device is not None else None
    if not preset.tiny and (device is None or device.type != "meta"):
        raise ValueError(
            f"Preset '{name}' is full size; building it with random weights would allocate the whole model. "
            f"Pass device='meta' to inspect it, or load real weights with from_pretrained."
        )
    if seed is not None and (device is None or device.type != "meta"):
        torch.manual_seed(seed)
    if device is not None and device.type == "meta":
        with torch.device("meta"):
            model = HybridVLMForConditionalGeneration(config)
    else:
        model = HybridVLMForConditionalGeneration(config)
        if device is not None:
            model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    processor = None
    if preset.tiny:
        from .processing_hybrid_vlm import HybridVLMProcessor
        from .tiny_tokenizer import load_tiny_tokenizer

        processor = HybridVLMProcessor.from_model_config(config, load_tiny_tokenizer())
        model.generation_config = _tiny_generation_config(config, processor.tokenizer)
    return model, processor


def _tiny_generation_config(config: HybridVLMConfig, tokenizer: Any) -> GenerationConfig:
    """Greedy, short, stopping at the end of a chat turn, never emitting a visual placeholder (a generated
    placeholder would break the next turn's image count)."""
    text = config.text_config
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    placeholders = [i for i in (config.image_token_id, config.video_token_id) if i is not None]
    return GenerationConfig(
        max_new_tokens=20,
        do_sample=False,
        bos_token_id=text.bos_token_id,
        eos_token_id=[text.eos_token_id, end_of_turn],
        pad_token_id=text.pad_token_id,
        suppress_tokens=placeholders or None,
    )
