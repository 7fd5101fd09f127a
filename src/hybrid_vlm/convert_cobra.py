"""Cobra (Prismatic-style) checkpoints -> HybridVLM: DINOv2 + SigLIP fused along channels, a Mamba LM.

A Cobra run folder holds `config.json` (`{"model": {"vision_backbone_id", "llm_backbone_id", "arch_specifier",
...}}`) and `checkpoints/latest-checkpoint.pt` with `{"model": {"projector": ..., "llm_backbone": ...}}`: only the
trained parts. The vision encoders were frozen and come from their own checkpoints, so the converter takes them as
two extra transformers-format folders (DINOv2-with-registers and SigLIP; `vision_towers=(dino, siglip)`) and reads
their tensors under the names `vision_backbone.dino.*` / `vision_backbone.siglip.*`. Without them the conversion
fails: a model with random vision encoders is never written silently.

Names: the LM is mamba_ssm's `MambaLMHeadModel` (`llm.backbone.embedding`, `llm.backbone.layers.{i}.mixer.*`,
`llm.backbone.norm_f`, `llm.lm_head`), which transformers' Mamba calls `embeddings`, `layers.{i}.mixer.*`, `norm_f`;
the mixer's own names (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`, `out_proj`) are the same in both.
The projector is Prismatic's `fused-gelu-mlp` (`projector.{0,2,4}`) or `gelu-mlp` (`projector.{0,2}`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .configuration_hybrid_vlm import HybridVLMConfig
from .tokenization_utils import render_content_macro

# Prismatic vision backbone ids HybridVLM can rebuild: (DINOv2 input side, SigLIP input side).
_DINOSIGLIP = {"dinosiglip-vit-so-384px": 384, "dinosiglip-vit-so-224px": 224}
_PROJECTORS = {"fused-gelu-mlp": ("mlp3x_gelu", 3), "gelu-mlp": ("mlp2x_gelu", 2)}

# Zephyr's chat format with GPT-NeoX's end-of-text token, as Cobra's prompt builder writes it; images go where their
# content blocks are (put them first to reproduce Prismatic's "patches right after BOS" order).
COBRA_CHAT_TEMPLATE = (
    "{#- Cobra (Zephyr chat format). -#}\n"
    + render_content_macro()
    + r"""{%- for message in messages -%}
    {%- if message['role'] in ['user', 'system'] -%}
        {{- '<|' + message['role'] + '|>\n' + render_content(message['content']) + '<|endoftext|>\n' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- '<|assistant|>\n' -}}
        {%- generation -%}
            {{- render_content(message['content']) + '<|endoftext|>' -}}
        {%- endgeneration -%}
        {{- '\n' -}}
    {%- else -%}
        {{- raise_exception('Unsupported role: ' ~ message['role']) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\n' -}}
{%- endif -%}
"""
)


def _tower_config(folder: Path, model_types: tuple[str, ...], what: str) -> dict[str, Any]:
    """The vision config of a transformers-format encoder folder (the vision part of a full CLIP/SigLIP config)."""
    from .convert import ConversionError

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json; --vision-towers takes transformers-format {what} folders.")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") in ("siglip", "clip") and isinstance(raw.get("vision_config"), dict):
        raw = {"model_type": f"{raw['model_type']}_vision_model", **raw["vision_config"]}
    if raw.get("model_type") not in model_types:
        raise ConversionError(f"{folder} holds a {raw.get('model_type')!r} model, not {what} ({model_types}).")
    keep = {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
    return keep


def read_cobra_config(folder: Path) -> dict[str, Any]:
    """The `model` section of a Prismatic/Cobra run's config.json."""
    from .convert import ConversionError

    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} has no config.json; a Cobra run folder has one with a 'model' section.")
    raw = json.loads(path.read_text(encoding="utf-8"))
    model = raw.get("model", raw)
    if "llm_backbone_id" not in model or "vision_backbone_id" not in model:
        raise ConversionError(
            f"{path} is not a Cobra/Prismatic config (no model.llm_backbone_id / model.vision_backbone_id)."
        )
    return model


def _mamba_text_config(entries: dict[str, Any], prefix: str) -> dict[str, Any]:
    """transformers' MambaConfig from the mamba_ssm weights' shapes."""
    from .convert import ConversionError

    def shape(name: str) -> tuple[int, ...]:
        if name not in entries:
            raise ConversionError(f"the Cobra checkpoint lacks {name!r}; it is not a mamba_ssm Mamba LM.")
        return entries[name].shape

    vocab, hidden = shape(f"{prefix}embedding.weight")
    layers = 1 + max(int(m.group(1)) for n in entries if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", n)))
    first = f"{prefix}layers.0.mixer."
    inner, state = shape(first + "A_log")
    dt_rank = shape(first + "dt_proj.weight")[1]
    return {
        "model_type": "mamba",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "state_size": state,
        "expand": inner // hidden,
        "intermediate_size": inner,
        "conv_kernel": shape(first + "conv1d.weight")[-1],
        "time_step_rank": dt_rank,
        "use_bias": f"{first}in_proj.bias" in entries,
        "use_conv_bias": f"{first}conv1d.bias" in entries,
        "layer_norm_epsilon": 1e-5,
        "residual_in_fp32": True,
        "pad_token_id": 1,  # GPT-NeoX's <|padding|>
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def cobra_rules(num_projector_layers: int, pad: Any) -> list[Any]:
    from .convert import Rule, _common_drop_rules

    lm = "model.language_model."
    rules = _common_drop_rules() + [
        Rule.rename("DINOv2 encoder (transformers names; an outer 'dinov2.' removed)",
                    r"^vision_backbone\.dino\.(?:dinov2\.)?(.+)$", r"model.vision_tower.encoders.0.\1"),
        Rule.drop("SigLIP text tower and contrastive head (not part of a VLM)",
                  r"^vision_backbone\.siglip\.(?:text_model\..*|logit_scale|logit_bias)$"),
        Rule.rename("SigLIP vision encoder (transformers names; 'vision_model.' removed)",
                    r"^vision_backbone\.siglip\.(?:vision_model\.)?(.+)$", r"model.vision_tower.encoders.1.\1"),
        Rule.drop("DINOv2 classification/pooling head (not used: HybridVLM reads hidden states)",
                  r"^vision_backbone\.dino\.(?:classifier|pooler)\..*$"),
        Rule.rename("mamba_ssm embedding -> embeddings", r"^model\.llm_backbone\.llm\.backbone\.embedding\.weight$",
                    lm + "embeddings.weight", pad),
        Rule.rename("Mamba layer (same names)", r"^model\.llm_backbone\.llm\.backbone\.layers\.(\d+)\.(.+)$",
                    lm + r"layers.\1.\2"),
        Rule.rename("final norm", r"^model\.llm_backbone\.llm\.backbone\.norm_f\.weight$", lm + "norm_f.weight"),
        Rule.rename("LM head", r"^model\.llm_backbone\.llm\.lm_head\.weight$", "lm_head.weight", pad),
    ]
    for index in range(num_projector_layers):
        rules.append(Rule.rename(f"projector.{2 * index} -> linear_{index + 1}",
                                 rf"^model\.projector\.{2 * index}\.(weight|bias)$",
                                 rf"model.multi_modal_projector.linear_{index + 1}.\1"))
    return rules


def cobra_recipe(kind: str, folder: Path, reader: Any, options: Any) -> Any:
    """The conversion recipe for a Cobra run folder (see the module docstring)."""
    from .convert import (
        ConversionError,
        _add_placeholder_tokens,
        _generation_config,
        _has_tokenizer,
        _load_tokenizer,
        _pad_rows,
        _Recipe,
    )

    raw = read_cobra_config(folder)
    backbone = raw["vision_backbone_id"]
    if backbone not in _DINOSIGLIP:
        raise NotImplementedError(
            f"vision backbone {backbone!r} is not supported; HybridVLM rebuilds {sorted(_DINOSIGLIP)}."
        )
    arch = raw.get("arch_specifier", "fused-gelu-mlp")
    if arch not in _PROJECTORS:
        raise NotImplementedError(f"projector {arch!r} is not supported; use one of {sorted(_PROJECTORS)}.")
    projector_type, projector_layers = _PROJECTORS[arch]
    towers = getattr(options, "vision_towers", None)
    if not towers or len(towers) != 2:
        raise ConversionError(
            "Cobra checkpoints do not contain the (frozen) vision encoders. Pass vision_towers=(DINOV2_DIR, "
            "SIGLIP_DIR) (CLI: --vision-towers DINOV2_DIR SIGLIP_DIR): transformers-format folders of DINOv2 ViT-L/14 "
            "with registers and SigLIP so400m/14 at the run's resolution."
        )
    reader.add_source(Path(towers[0]), "vision_backbone.dino.")
    reader.add_source(Path(towers[1]), "vision_backbone.siglip.")
    entries = reader.tensors()
    notes: list[str] = []
    if any(name.startswith("model.vision_backbone.") for name in entries):
        raise NotImplementedError(
            "this Cobra checkpoint fine-tuned its vision backbone (timm names under model.vision_backbone.*); mapping "
            "timm's ViT names is not supported yet."
        )
    text = _mamba_text_config(entries, "model.llm_backbone.llm.backbone.")
    dino = _tower_config(towers[0], ("dinov2_with_registers", "dinov2"), "DINOv2")
    siglip = _tower_config(towers[1], ("siglip_vision_model",), "SigLIP")
    side, patch = int(siglip["image_size"]), int(siglip.get("patch_size", 14))
    if side // patch != _DINOSIGLIP[backbone] // 14:
        raise ConversionError(
            f"the run used {backbone!r} but the SigLIP folder is a {side} px / {patch} px-patch encoder "
            f"({side // patch}x{side // patch} patches); pass the SigLIP the run was trained with."
        )
    grid_side = (side // patch) * patch
    siglip["image_size"] = grid_side  # same position-embedding grid, pixels aligned to whole patches
    if grid_side != side:
        notes.append(f"images are fed at {grid_side} px ({side // patch}x{side // patch} patches): Cobra's {side} px "
                     f"input gives the same grid; its patch convolution never sees the last {side - grid_side} px.")
    tokenizer = _load_tokenizer(folder) if _has_tokenizer(folder) else None
    image_id = video_id = None
    vocab = text["vocab_size"]
    if tokenizer is not None:
        image_id, video_id = _add_placeholder_tokens(tokenizer, notes)
        vocab = max(vocab, len(tokenizer))
    else:
        notes.append("no tokenizer in the source folder (Cobra uses GPT-NeoX's): no processor was written; copy the "
                     "tokenizer files into the source folder to get one.")
    extra_rows = vocab - text["vocab_size"]
    text["vocab_size"] = vocab
    tie = "model.llm_backbone.llm.lm_head.weight" not in entries
    config = HybridVLMConfig(
        vision_config=[dino, siglip],
        vision_fusion="channel",
        text_config=text,
        projector_type=projector_type,
        vision_feature_layer=-2,
        image_token_id=image_id,
        video_token_id=video_id,
        tie_word_embeddings=tie,
    )
    pad = _pad_rows(extra_rows) if extra_rows else None
    if extra_rows:
        notes.append(f"added {extra_rows} zero row(s) to the embeddings for the new placeholder tokens.")
    recipe = _Recipe(config, cobra_rules(projector_layers, pad), notes=notes, description="Cobra (h-zhao1997/cobra)")
    if tokenizer is not None:
        from .image_processing_hybrid_vlm import HybridVLMImageProcessor

        recipe.tokenizer = tokenizer
        recipe.image_processor = HybridVLMImageProcessor.from_vision_config(config.vision_configs)
        recipe.chat_template = COBRA_CHAT_TEMPLATE
        recipe.generation_config = _generation_config(folder, config.text_config, [image_id, video_id])
    return recipe
