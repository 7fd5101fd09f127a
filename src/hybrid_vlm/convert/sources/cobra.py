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

import torch

from ...chat_templates import cobra_chat_template
from ...configuration_hybrid_vlm import HybridVLMConfig
from ...image_processing_hybrid_vlm import HybridVLMImageProcessor
from ..common import Recipe, add_placeholder_tokens, has_tokenizer, load_tokenizer, source_generation_config
from ..errors import ConversionError
from ..options import ConvertOptions
from ..reader import CheckpointReader
from ..rules import Rule, common_drop_rules, pad_rows

__all__ = ["build_recipe", "cobra_image_processor", "cobra_image_side", "cobra_rules", "read_cobra_config"]

# Prismatic/Cobra fused vision backbones: "dinosiglip-vit-so-<side>px" (Cobra-3B: 384), DINOv2 + SigLIP at that side.
_DINOSIGLIP_ID = re.compile(r"^dinosiglip-vit-so-(\d+)px$")
_PROJECTORS = {"fused-gelu-mlp": ("mlp3x_gelu", 3), "gelu-mlp": ("mlp2x_gelu", 2)}
# Prismatic's timm data configs: DINOv2 ImageNet mean/std, SigLIP 0.5/0.5; both bicubic.
_DINO_MEAN, _DINO_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_SIGLIP_MEAN, _SIGLIP_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def cobra_image_side(backbone: str) -> int:
    """The input side of a fused DINOv2 + SigLIP backbone id ("dinosiglip-vit-so-384px" -> 384)."""
    match = _DINOSIGLIP_ID.match(backbone)
    if match is None:
        raise NotImplementedError(
            f"vision backbone {backbone!r} is not supported; HybridVLM rebuilds Cobra's fused DINOv2 + SigLIP "
            "backbones ('dinosiglip-vit-so-<side>px', e.g. 'dinosiglip-vit-so-384px')."
        )
    return int(match.group(1))


def cobra_image_processor(side: int, resize_strategy: str) -> Any:
    """Cobra's image transform for both encoders: one geometry, each encoder's own mean/std (channels 0-2, 3-5)."""
    common = dict(resample="bicubic", image_mean=[_DINO_MEAN, _SIGLIP_MEAN], image_std=[_DINO_STD, _SIGLIP_STD])
    if resize_strategy == "resize-naive":  # Cobra's default: squash to side x side
        return HybridVLMImageProcessor(size={"height": side, "width": side}, do_center_crop=False, **common)
    if resize_strategy == "resize-crop":  # shortest edge to side, center crop
        return HybridVLMImageProcessor(size={"shortest_edge": side}, do_center_crop=True,
                                       crop_size={"height": side, "width": side}, **common)
    raise ConversionError(
        f"image_resize_strategy {resize_strategy!r} is not supported; Cobra's runs use 'resize-naive' (also "
        "supported: 'resize-crop'). 'letterbox' pads each encoder's copy with its own mean colour, which the image "
        "processor does not do."
    )


def _tower_config(folder: Path, model_types: tuple[str, ...], what: str) -> dict[str, Any]:
    """The vision config of a transformers-format encoder folder (the vision part of a full CLIP/SigLIP config)."""
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


def cobra_rules(num_projector_layers: int, pad: Any, tie_head: bool = False) -> list[Rule]:
    lm = "model.language_model."
    rules = common_drop_rules() + [
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
        Rule.drop("LM head tied to the embedding (the same tensor under a second name)",
                  r"^model\.llm_backbone\.llm\.lm_head\.weight$") if tie_head else
        Rule.rename("LM head", r"^model\.llm_backbone\.llm\.lm_head\.weight$", "lm_head.weight", pad),
    ]
    for index in range(num_projector_layers):  # the module's own `projector` Sequential: `projector.projector.0`
        rules.append(Rule.rename(f"projector.{2 * index} -> linear_{index + 1}",
                                 rf"^model\.projector\.(?:projector\.)?{2 * index}\.(weight|bias)$",
                                 rf"model.multi_modal_projector.linear_{index + 1}.\1"))
    return rules


def build_recipe(kind: str, folder: Path, reader: CheckpointReader, options: ConvertOptions) -> Recipe:
    """The conversion recipe for a Cobra run folder (see the module docstring)."""
    raw = read_cobra_config(folder)
    backbone = raw["vision_backbone_id"]
    run_side = cobra_image_side(backbone)
    arch = raw.get("arch_specifier", "fused-gelu-mlp")
    arch = arch.removeprefix("no-align+")  # Cobra-3B's "no-align+fused-gelu-mlp": trained without an align stage
    if arch not in _PROJECTORS:
        raise NotImplementedError(f"projector {arch!r} is not supported; use one of {sorted(_PROJECTORS)}.")
    projector_type, projector_layers = _PROJECTORS[arch]
    towers = options.vision_towers
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
    if side // patch != run_side // patch:
        raise ConversionError(
            f"the run used {backbone!r} but the SigLIP folder is a {side} px / {patch} px-patch encoder "
            f"({side // patch}x{side // patch} patches); pass the SigLIP the run was trained with."
        )
    if run_side % patch:
        notes.append(f"images are fed at {run_side} px as in Cobra; both encoders' patch convolutions see only the "
                     f"first {run_side // patch * patch} px of each side ({run_side // patch}x{run_side // patch} "
                     "patches), as in the reference.")
    # Cobra ran its towers through timm 0.9.10, whose ViT uses exact (erf) GELU, SigLIP included; transformers'
    # SigLIP configs say gelu_pytorch_tanh. The model answers like Cobra with Cobra's activation.
    if siglip.get("hidden_act") != "gelu":
        notes.append(f"SigLIP hidden_act {siglip.get('hidden_act')!r} -> 'gelu': Cobra's timm SigLIP uses exact GELU.")
        siglip["hidden_act"] = "gelu"
    tokenizer = load_tokenizer(folder) if has_tokenizer(folder) else None
    image_id = video_id = None
    vocab = text["vocab_size"]
    if tokenizer is not None:
        image_id, video_id = add_placeholder_tokens(tokenizer, notes)
        vocab = max(vocab, len(tokenizer))
    else:
        notes.append("no tokenizer in the source folder (Cobra uses GPT-NeoX's): no processor was written; copy the "
                     "tokenizer files into the source folder to get one.")
    extra_rows = vocab - text["vocab_size"]
    text["vocab_size"] = vocab
    head, embedding = "model.llm_backbone.llm.lm_head.weight", "model.llm_backbone.llm.backbone.embedding.weight"
    # mamba_ssm ties the LM head to the embedding; the checkpoint holds both names for the one tensor.
    tie = head not in entries or torch.equal(reader.load(head), reader.load(embedding))
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
    pad = pad_rows(extra_rows) if extra_rows else None
    if extra_rows:
        notes.append(f"added {extra_rows} zero row(s) to the embeddings for the new placeholder tokens.")
    rules = cobra_rules(projector_layers, pad, tie_head=tie)
    recipe = Recipe(config, rules, notes=notes, description="Cobra (h-zhao1997/cobra)")
    if tokenizer is not None:
        recipe.tokenizer = tokenizer
        recipe.image_processor = cobra_image_processor(run_side, raw.get("image_resize_strategy", "resize-naive"))
        recipe.chat_template = cobra_chat_template(raw["llm_backbone_id"])
        recipe.generation_config = source_generation_config(folder, config.text_config, [image_id, video_id])
    return recipe
