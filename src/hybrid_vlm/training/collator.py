"""Fine-tuning helpers: PEFT/QLoRA configs with safe defaults, a collator for video chats, the papers' training stages.

TRL's `SFTTrainer` trains these models unmodified on TRL's vision format (a `messages` column with image blocks and an
`images` column); nothing here is needed for that. What this module adds:

* `lora_config` / `lora_target_modules`: LoRA scoped to the language model (optionally the projector), never the vision
  tower or `lm_head`, and only on SSM projections that every kernel path calls as a module. `"all-linear"` would put
  adapters on weights the Mamba kernels read directly (`out_proj`, `conv1d`, ...), where they silently do nothing.
* `qlora_config` / `qlora_skip_modules`: a bitsandbytes 4-bit config that keeps SSM mixers, the vision tower, the
  projector and `lm_head` unquantised.
* `VideoSFTCollator`: TRL has no video column; this collator takes chats whose content blocks carry videos (and/or
  images), applies the chat template through the processor, and never cuts visual tokens when a sample is too long.
* `freeze_for_stage`: projector-only alignment, projector+LM with the vision tower frozen, full, and Vamba's stage 1
  (new layers only).
* `warn_if_fp16_with_ssm`: fp16 overflows the SSM scan; the model's forward calls it while training (warns once).

peft, trl and bitsandbytes are imported only by the functions that need them (`pip install hybrid_vlm[train]`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.utils import logging

# (lives in its own module so the model's forward can call it without importing this one: see precision.py)
from .precision import warn_if_fp16_with_ssm

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

logger = logging.get_logger(__name__)

__all__ = [
    "OVERFLOW_POLICIES",
    "TRAINING_STAGES",
    "VideoSFTCollator",
    "apply_overflow_policy",
    "causal_lm_loss",
    "chat_as_blocks",
    "count_parameters",
    "topk_distillation_loss",
    "freeze_for_stage",
    "fsdp_wrap_classes",
    "lora_config",
    "lora_target_modules",
    "qlora_config",
    "qlora_skip_modules",
    "warn_if_fp16_with_ssm",
]

# Inside an SSM mixer, the only Linear layers that every kernel path (CUDA kernels and the PyTorch fallbacks, on
# transformers 4.57 and 5.x) calls as modules. Everything else in a mixer is read as a raw tensor by some path:
# `conv1d` (causal_conv1d), `out_proj` (Mamba-1/Mamba-2 fused training kernels), `x_proj` and `dt_proj` (Mamba-1's
# mamba_inner_fn; Jamba reads `dt_proj.weight` on transformers 5). An adapter there would never be applied.
_SSM_SAFE_LINEARS_DEFAULT = frozenset({"in_proj"})
_SSM_SAFE_LINEARS = {"JambaMambaMixer": frozenset({"in_proj", "x_proj"})}
# Vamba's layers added to each decoder layer (names fixed by its checkpoint layout): trained alone in its stage 1.
_NEW_LAYER_PATTERN = re.compile(r"(^|\.)(cross_attn|vision_mixer)\.|(^|\.)alpha$")

TRAINING_STAGES: dict[str, str] = {
    "projector": "only the projector trains (LLaVA/LongLLaVA/MMJamba stage 1: modality alignment)",
    "projector+lm": "projector and language model (with lm_head) train; vision tower frozen (instruction tuning)",
    "full": "everything trains",
    "new-layers": "only layers added to a pretrained LM train (Vamba stage 1: cross-attention, alpha, vision mixer)",
}
OVERFLOW_POLICIES = ("error", "drop", "truncate")


# ---------------------------------------------------------------------------------------------------- model parts


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_peft_model(model: nn.Module) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def _find_name(root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in root.named_modules():
        if module is target:
            return name
    return None


def _part(model: nn.Module, attribute: str) -> nn.Module | None:
    """`model.<attribute>` or `model.model.<attribute>` (the ForConditionalGeneration wrapper keeps parts inside)."""
    for owner in (model, getattr(model, "model", None)):
        part = getattr(owner, attribute, None) if owner is not None else None
        if isinstance(part, nn.Module):
            return part
    return None


def _required_part(model: nn.Module, attribute: str) -> tuple[nn.Module, str]:
    part = _part(model, attribute)
    name = _find_name(model, part)
    if part is None or name is None:
        raise ValueError(
            f"{type(model).__name__} has no `{attribute}`; these helpers expect a HybridVLM model "
            "(model.vision_tower, model.multi_modal_projector, model.language_model, lm_head)."
        )
    return part, name


def _is_ssm_mixer(module: nn.Module) -> bool:
    """SSM mixers of transformers' Mamba/Mamba-2/Jamba/Bamba/... (and ours) own `A_log` and a `conv1d`."""
    return "A_log" in dict(module.named_parameters(recurse=False)) and isinstance(
        getattr(module, "conv1d", None), nn.Module
    )


def _is_moe_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "experts", None), nn.Module)


def _linear_names(root: nn.Module, prefix: str) -> list[str]:
    """Full names (under `prefix`) of the Linear layers in `root` LoRA can act on.

    Skipped: Linears inside SSM mixers other than the ones every kernel path calls as modules, and whole MoE blocks
    (router + experts). transformers 5 stores experts as fused 3-D parameters, 4.x as separate Linears; leaving them
    out on both keeps one adapter layout that loads on both lines.
    """
    skipped_roots: list[str] = []
    names = []
    for name, module in root.named_modules():
        if any(name == skip or name.startswith(skip + ".") for skip in skipped_roots):
            continue
        if name and _is_moe_block(module):
            skipped_roots.append(name)
            continue
        if _is_ssm_mixer(module):
            safe = _SSM_SAFE_LINEARS.get(type(module).__name__, _SSM_SAFE_LINEARS_DEFAULT)
            for child_name, child in module.named_children():
                if child_name in safe and isinstance(child, nn.Linear):
                    names.append(f"{name}.{child_name}")
            skipped_roots.append(name)
            continue
        if isinstance(module, nn.Linear):
            names.append(name)
    return [f"{prefix}.{name}" if prefix else name for name in names]


def lora_target_modules(model: nn.Module, include_projector: bool = False) -> list[str]:
    """Full module names LoRA should wrap: the language model's safe Linears (and the projector's, if asked).

    Never the vision tower, never `lm_head` (TRL's fused LM head reads `lm_head.weight` directly), never SSM weights
    that kernels read as tensors (`out_proj`, `conv1d`, `x_proj`/`dt_proj` where relevant), never MoE routers/experts.
    """
    base = _unwrap(model)
    language_model, lm_name = _required_part(base, "language_model")
    names = _linear_names(language_model, lm_name)
    if include_projector:
        projector, projector_name = _required_part(base, "multi_modal_projector")
        names += _linear_names(projector, projector_name)
    if not names:
        raise ValueError(f"No Linear layer in {type(base).__name__}'s language model can take a LoRA adapter.")
    return names


def _compact_pattern(names: Sequence[str], all_names: Iterable[str]) -> str:
    """One regex that full-matches exactly `names`: layer indices folded to `\\d+` when that stays exact."""
    escaped = [re.escape(name) for name in names]
    folded = sorted(set(re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", name) for name in escaped))
    pattern = "|".join(folded)
    compiled = re.compile(pattern)
    if {name for name in all_names if compiled.fullmatch(name)} == set(names):
        return pattern
    return "|".join(sorted(escaped))


def lora_config(
    model: nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    include_projector: bool = False,
    **kwargs: Any,
) -> LoraConfig:
    """A `peft.LoraConfig` whose `target_modules` is an explicit regex computed from `model`.

    See `lora_target_modules` for what is targeted and why. Other keywords go to `LoraConfig` (`task_type` defaults to
    `"CAUSAL_LM"`, `bias` to `"none"`). To train the projector fully rather than with an adapter, pass
    `modules_to_save=["multi_modal_projector"]`.
    """
    from peft import LoraConfig

    for key in ("target_modules", "lora_alpha", "lora_dropout"):
        if key in kwargs:
            raise TypeError(
                f"lora_config() sets `{key}` itself (use alpha=/dropout=, or build peft.LoraConfig directly to choose "
                "your own target modules)."
            )
    names = lora_target_modules(model, include_projector=include_projector)
    all_names = [name for name, _ in _unwrap(model).named_modules()]
    kwargs.setdefault("task_type", "CAUSAL_LM")
    kwargs.setdefault("bias", "none")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=_compact_pattern(names, all_names),
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------- QLoRA


def _model_for_names(model_or_config: Any) -> nn.Module:
    """A model to read module names from; a config is instantiated on the meta device (no memory)."""
    if isinstance(model_or_config, nn.Module):
        return _unwrap(model_or_config)
    from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    with torch.device("meta"):
        return HybridVLMForConditionalGeneration(model_or_config)


def qlora_skip_modules(model_or_config: Any) -> list[str]:
    """Full module names bitsandbytes must leave unquantised: vision tower, projector, `lm_head`, every SSM mixer.

    SSM mixers stay in full precision because their kernels read `conv1d`/`out_proj`/`dt_proj` weights as tensors
    (a 4-bit weight there breaks or silently skips dequantisation) and their scan is precision-sensitive.
    The names work with both transformers lines' matching rules (4.57: `name + "."` substring or equality; 5.x:
    match from the start up to a module boundary).
    """
    model = _model_for_names(model_or_config)
    skip = []
    for attribute in ("vision_tower", "multi_modal_projector"):
        skip.append(_required_part(model, attribute)[1])
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lm_head_name = _find_name(model, lm_head)
    if lm_head_name:
        skip.append(lm_head_name)
    language_model, lm_name = _required_part(model, "language_model")
    for name, module in language_model.named_modules():
        if _is_ssm_mixer(module):
            skip.append(f"{lm_name}.{name}")
    return skip


def qlora_config(
    model_or_config: Any,
    compute_dtype: torch.dtype = torch.bfloat16,
    quant_type: str = "nf4",
    double_quant: bool = True,
    **kwargs: Any,
) -> BitsAndBytesConfig:
    """A 4-bit `BitsAndBytesConfig` for QLoRA that keeps the SSM mixers, vision tower, projector and `lm_head`
    unquantised (`llm_int8_skip_modules`; see `qlora_skip_modules`).

    Pass a model or a `HybridVLMConfig` (read on the meta device, so it can be built before loading). Use it as
    `from_pretrained(path, quantization_config=qlora_config(config))`, then `peft.prepare_model_for_kbit_training` and
    `lora_config(model)`. With an SSM-only language model (Mamba, Mamba-2) nearly nothing is left to quantise.
    """
    from transformers import BitsAndBytesConfig

    skip = qlora_skip_modules(model_or_config)
    if "llm_int8_skip_modules" in kwargs:
        skip = list(dict.fromkeys([*skip, *kwargs.pop("llm_int8_skip_modules")]))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        llm_int8_skip_modules=skip,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------- stages


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) parameters count once."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def _parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by role: vision tower, language model (with lm_head), new layers, and the rest (the connector)."""
    vision, _ = _required_part(model, "vision_tower")
    language_model, lm_name = _required_part(model, "language_model")
    vision_ids = {id(p) for p in vision.parameters()}
    lm_ids = {id(p) for p in language_model.parameters()}
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is not None:
        lm_ids |= {id(p) for p in lm_head.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"vision": [], "lm": [], "new": [], "connector": []}
    for name, parameter in model.named_parameters():
        if id(parameter) in vision_ids:
            groups["vision"].append(parameter)
        elif id(parameter) in lm_ids:
            relative = name[len(lm_name) + 1 :] if name.startswith(lm_name + ".") else name
            groups["new" if _NEW_LAYER_PATTERN.search(relative) else "lm"].append(parameter)
        else:
            groups["connector"].append(parameter)
    return groups


_STAGE_GROUPS = {
    "projector": ("connector",),
    "projector+lm": ("connector", "lm", "new"),
    "full": ("vision", "connector", "lm", "new"),
    "new-layers": ("new",),
}


def freeze_for_stage(model: nn.Module, stage: str) -> int:
    """Set `requires_grad` for one of the papers' training stages; return the number of trainable parameters.

    Stages: see `TRAINING_STAGES`. Parameters outside the vision tower and the language model (the projector and
    any other multimodal connector weights) count as the projector. For LoRA, use `lora_config` instead: stages
    decide which *base* weights train, which is not what an adapter model wants.
    """
    if stage not in _STAGE_GROUPS:
        raise ValueError(f"Unknown training stage {stage!r}; use one of: " + ", ".join(TRAINING_STAGES) + ".")
    if _is_peft_model(model):
        raise ValueError(
            "freeze_for_stage() got a PEFT model: stages select base weights to train. Call it on the base model "
            "before get_peft_model, or choose adapter targets with lora_config(model, include_projector=...)."
        )
    groups = _parameter_groups(model)
    if stage == "new-layers" and not groups["new"]:
        raise ValueError(
            "Stage 'new-layers' trains layers added to a pretrained LM (Vamba's cross_attn, alpha and vision_mixer); "
            f"{type(model).__name__} has none. Use 'projector' for projector-only alignment."
        )
    active = set(_STAGE_GROUPS[stage])
    for group, parameters in groups.items():
        for parameter in parameters:
            parameter.requires_grad_(group in active)
    trainable, total = count_parameters(model)
    logger.info(f"freeze_for_stage({stage!r}): {trainable:,} of {total:,} parameters trainable.")
    return trainable


# ---------------------------------------------------------------------------------------------------- sharding


def fsdp_wrap_classes(model: nn.Module) -> list[str]:
    """Layer class names to wrap with FSDP (`fsdp_transformer_layer_cls_to_wrap`) or to keep whole on one device.

    The model's collected `_no_split_modules` (vision tower + language model), limited to classes that really occur in
    it: transformers 5 lists, e.g., CLIP's text embeddings for a vision-only tower (accelerate then refuses the
    name), and on transformers 4.x the attribute of the outer model is empty (accelerate would wrap nothing).
    """
    base = _unwrap(model)
    names: set[str] = set()
    present: set[str] = set()
    for module in base.modules():  # every sub-model's own list (the same on both transformers lines)
        names.update(getattr(module, "_no_split_modules", None) or [])
        present.add(type(module).__name__)
    found = sorted(names & present)
    if not found:
        raise ValueError(f"{type(base).__name__} declares no layer class to wrap (_no_split_modules is empty).")
    return found


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """`SFTTrainer(compute_loss_func=causal_lm_loss)`: the next-token loss from the logits of the model's own forward.

    Needed under FSDP2. TRL's default loss (its fused LM head) reads `lm_head.weight` directly, and accelerate puts
    `lm_head` in an FSDP unit of its own when the base model has no final norm as a direct child (true of every
    LLaVA-style model); that unit is then never gathered by a forward, TRL gathers it with `full_tensor()`, and each
    rank updates its shard with its own local gradient instead of the average over ranks. Through the model's
    forward, `lm_head` runs as a module and FSDP reduces its gradient like every other one.
    """
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)


# ---------------------------------------------------------------------------------------------------- overflow


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    k: int = 100,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vamba's optional stage-1 distillation term: KL(teacher || student) on the teacher's top-k vocabulary entries.

    Both distributions are renormalised over the teacher's k largest logits at each position (Vamba,
    arXiv:2503.11579 §3.3; the paper found weight 0 best, but the term is needed to ablate it). Add `weight * loss`
    to the LM loss.

    Args:
        student_logits, teacher_logits: (batch, seq, vocab) logits at the same positions.
        k: number of teacher logits kept per position.
        mask: optional (batch, seq) with 1 where the term counts (e.g. text positions with labels).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}."
        )
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"k must be in 1..{teacher_logits.shape[-1]} (the vocabulary size), got {k}.")
    top_teacher, indices = teacher_logits.float().topk(k, dim=-1)
    top_student = student_logits.float().gather(-1, indices)
    teacher_log_probs = torch.log_softmax(top_teacher, dim=-1)
    student_log_probs = torch.log_softmax(top_student, dim=-1)
    per_position = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1.0)


def apply_overflow_policy(
    total_tokens: Sequence[int],
    visual_tokens: Sequence[int],
    max_length: int | None,
    overflow: str = "error",
    visual_end: Sequence[int] | None = None,
    descriptions: Sequence[str] | None = None,
) -> list[int]:
    """Indices of the samples to keep under `max_length`, never cutting visual tokens.

    Args:
        total_tokens: tokens per sample (text + visual), untruncated.
        visual_tokens: image/video placeholder tokens per sample.
        max_length: the limit; None keeps everything.
        overflow: `"error"`: a ValueError naming the first sample that does not fit, with its numbers;
            `"drop"`: leave such samples out (the caller logs the count); `"truncate"`: keep a sample when cutting it
            to `max_length` removes only text after its last visual token (needs `visual_end`), else error.
        visual_end: per sample, the position just after its last visual token (0 when it has none).
        descriptions: short labels for error messages (e.g. the start of the prompt).
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}.")
    if len(total_tokens) != len(visual_tokens):
        raise ValueError("total_tokens and visual_tokens must have one entry per sample.")
    if overflow == "truncate" and visual_end is None:
        raise ValueError("overflow='truncate' needs visual_end (where each sample's last visual token ends).")
    if max_length is None:
        return list(range(len(total_tokens)))
    keep = []
    for index, (total, visual) in enumerate(zip(total_tokens, visual_tokens)):
        total, visual = int(total), int(visual)
        if total <= max_length:
            keep.append(index)
            continue
        if overflow == "drop":
            continue
        if overflow == "truncate" and visual_end is not None and int(visual_end[index]) <= max_length:
            keep.append(index)
            continue
        what = f" ({descriptions[index]})" if descriptions is not None else ""
        cut = "cutting it would remove visual tokens" if overflow == "truncate" else "visual tokens are never cut"
        raise ValueError(
            f"Sample {index} of this batch{what} needs {total} tokens ({total - visual} text + {visual} visual) but "
            f"max_length={max_length}; {cut}. Raise max_length to at least {total}, use fewer/smaller images or "
            "frames, or pass overflow='drop' to skip such samples."
        )
    return keep


# ---------------------------------------------------------------------------------------------------- collator

_IMAGE_PAYLOAD_KEYS = ("image", "url", "path", "base64")
_VIDEO_PAYLOAD_KEYS = ("video", "url", "path")
# Per-token outputs of a processor (sliced when truncating); everything else is per image/video.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "assistant_masks", "mm_token_type_ids", "token_type_ids")


def _media(example: dict[str, Any], kind: str) -> list[Any]:
    """An example's images or videos: the plural column (a list), else the singular one (one item; for a video that
    item may itself be a list of frames)."""
    plural = example.get(f"{kind}s")
    if plural is not None:
        return list(plural) if isinstance(plural, (list, tuple)) else [plural]
    single = example.get(kind)
    return [] if single is None else [single]


def _flush_right(output: dict[str, Any]) -> dict[str, Any]:
    """Move left padding to the right in every per-token tensor (each row keeps its tokens, in order)."""
    mask = torch.as_tensor(output["attention_mask"])
    pads = (mask == 0).sum(-1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    if not bool(pads.any()) or not bool(torch.equal(mask.bool(), positions >= pads)):
        return output  # nothing to move, or not left-padded (already right-padded): leave as is
    index = (positions + pads) % mask.shape[1]
    for key in _PER_TOKEN_KEYS:
        if output.get(key) is not None:
            value = torch.as_tensor(output[key])
            if value.shape == mask.shape:
                output[key] = value.gather(1, index)
    return output


def _bare_blocks(messages: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The `{"type": kind}` blocks that carry no media of their own, in order (filled from the media columns)."""
    keys = _VIDEO_PAYLOAD_KEYS if kind == "video" else _IMAGE_PAYLOAD_KEYS
    return [
        block
        for message in messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == kind and not any(k in block for k in keys)
    ]


def chat_as_blocks(
    messages: Sequence[dict[str, Any]], num_images: int = 0, num_videos: int = 0
) -> list[dict[str, Any]]:
    """A copy of a chat in which every string `content` is a list of content blocks.

    TRL accepts both forms (`"content": "text"` and `"content": [{"type": "text", "text": ...}]`), even mixed in one
    chat, but a `datasets`/Arrow column cannot hold strings and lists side by side. TRL's rule for media carries
    over: when no message has a bare image/video block and the first user turn is a string, the example's
    `num_videos` video and `num_images` image blocks are prepended to that turn.
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(
                f"message {index} must be a {{'role': ..., 'content': ...}} dict, got {type(message).__name__}."
            )
        message = dict(message)
        if isinstance(message.get("content"), (list, tuple)):
            message["content"] = [dict(block) if isinstance(block, dict) else block for block in message["content"]]
        chat.append(message)
    first_user = next((m for m in chat if m.get("role") == "user"), None)
    if (
        first_user is not None
        and isinstance(first_user.get("content"), str)
        and not _bare_blocks(chat, "video")
        and not _bare_blocks(chat, "image")
    ):
        new_blocks = [{"type": "video"} for _ in range(num_videos)] + [{"type": "image"} for _ in range(num_images)]
        first_user["content"] = [*new_blocks, {"type": "text", "text": first_user["content"]}]
    for message in chat:
        if isinstance(message.get("content"), str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    return chat


class VideoSFTCollator:
    """Collate chat examples with video and/or image content blocks into model inputs with `labels`.

    TRL's `SFTTrainer` has no video column and its vision collator only fills image blocks; use this collator with
    `SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})` and
    `data_collator=VideoSFTCollator(processor, max_length=...)`.

    Each example has `messages` (role/content; content a string or a list of `{"type": "text"|"image"|"video", ...}`
    blocks). Blocks carry their media (`{"type": "video", "video": "clip.mp4"}`) or are bare and filled, in order,
    from the example's `videos` / `images` lists (TRL's convention; a string-content first user turn gets the
    blocks prepended). The processor's `apply_chat_template(..., tokenize=True, return_dict=True)` does the rest, so
    whatever media the processor supports, this collator supports.

    Labels: padding and visual placeholder tokens are -100; with `assistant_only_loss=True` so is everything outside
    the chat template's `{% generation %}` spans. Sequences longer than `max_length` follow `overflow` (see
    `apply_overflow_policy`); visual tokens are never cut.
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        overflow: str = "error",
        assistant_only_loss: bool = False,
        mask_visual_tokens: bool = True,
        pad_to_multiple_of: int | None = None,
        chat_template: str | None = None,
        messages_key: str = "messages",
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}.")
        if max_length is not None and (isinstance(max_length, bool) or int(max_length) < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not callable(getattr(processor, "apply_chat_template", None)):
            raise TypeError("VideoSFTCollator needs a processor with a tokenizer and apply_chat_template.")
        if tokenizer.pad_token_id is None:
            raise ValueError("The processor's tokenizer has no pad token; set tokenizer.pad_token first.")
        self.processor = processor
        self.max_length = max_length
        self.overflow = overflow
        self.assistant_only_loss = assistant_only_loss
        self.mask_visual_tokens = mask_visual_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.chat_template = chat_template
        self.messages_key = messages_key
        self.visual_token_ids = sorted(self._visual_token_ids(processor))
        self.num_dropped = 0

    @staticmethod
    def _visual_token_ids(processor: Any) -> set[int]:
        tokenizer = processor.tokenizer
        ids = set()
        for kind in ("image", "video"):
            token_id = getattr(processor, f"{kind}_token_id", None)
            if token_id is None:
                token = getattr(processor, f"{kind}_token", None) or getattr(tokenizer, f"{kind}_token", None)
                if token:
                    token_id = tokenizer.convert_tokens_to_ids(str(token))
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(int(token_id))
        return ids

    # -------------------------------------------------------------- examples -> conversations

    def _conversation(self, example: dict[str, Any], index: int) -> list[dict[str, Any]]:
        if self.messages_key not in example:
            raise KeyError(
                f"Example {index} has no {self.messages_key!r} column (got {sorted(example)}). VideoSFTCollator takes "
                "chat examples; with SFTTrainer also set SFTConfig(remove_unused_columns=False)."
            )
        media = {"video": _media(example, "video"), "image": _media(example, "image")}
        messages = []
        for message in example[self.messages_key]:
            message = {key: value for key, value in dict(message).items() if value is not None}
            content = message.get("content")
            if isinstance(content, (list, tuple)):
                # datasets/Arrow gives every block every key of the column's struct, mostly None: drop those.
                message["content"] = [
                    {k: v for k, v in dict(block).items() if v is not None} if isinstance(block, dict) else block
                    for block in content
                ]
            messages.append(message)

        messages = chat_as_blocks(messages, num_images=len(media["image"]), num_videos=len(media["video"]))
        blocks = {"video": _bare_blocks(messages, "video"), "image": _bare_blocks(messages, "image")}
        for kind, keys in (("video", _VIDEO_PAYLOAD_KEYS), ("image", _IMAGE_PAYLOAD_KEYS)):
            if len(blocks[kind]) != len(media[kind]):
                raise ValueError(
                    f"Example {index}: {len(blocks[kind])} {kind} block(s) without data but {len(media[kind])} "
                    f"{kind}(s) in its '{kind}s' column. Give one {kind} per bare {{'type': '{kind}'}} block, or put "
                    f"the {kind} in the block itself ({{'type': '{kind}', '{keys[0]}': ...}})."
                )
            for block, item in zip(blocks[kind], media[kind]):
                block[keys[0]] = item
        return messages

    @staticmethod
    def _describe(conversation: list[dict[str, Any]]) -> str:
        """The start of the first text of the conversation, to recognise a sample in an error message."""
        for message in conversation:
            for block in message.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                    text = " ".join(str(block["text"]).split())
                    return repr(text[:60] + ("..." if len(text) > 60 else ""))
        return "no text"

    # -------------------------------------------------------------- processing

    def _process(self, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "tokenize": True,
            "return_dict": True,
            "return_tensors": "pt",
            "padding": True,
            # Left here, flushed right below: transformers 4.57 computes assistant masks by bisecting token offsets,
            # which right padding's (0, 0) offsets unsort (wrong masks, IndexError with videos).
            "padding_side": "left",
            "add_special_tokens": False,  # the chat template already has every special token it wants
        }
        if self.pad_to_multiple_of is not None:
            kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        if self.assistant_only_loss:
            kwargs["return_assistant_tokens_mask"] = True
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        return _flush_right(dict(self.processor.apply_chat_template(conversations, **kwargs)))

    def _is_visual(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self.visual_token_ids, dtype=input_ids.dtype, device=input_ids.device)
        return torch.isin(input_ids, ids)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("VideoSFTCollator got an empty batch.")
        conversations = [self._conversation(example, i) for i, example in enumerate(examples)]
        output = self._process(conversations)
        input_ids, attention_mask = output["input_ids"], output["attention_mask"]

        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            visual = self._is_visual(input_ids) & attention_mask.bool()
            positions = torch.arange(1, input_ids.shape[1] + 1).expand_as(input_ids)
            keep = apply_overflow_policy(
                attention_mask.sum(-1).tolist(),
                visual.sum(-1).tolist(),
                self.max_length,
                self.overflow,
                visual_end=(positions * visual).amax(-1).tolist(),
                descriptions=[self._describe(c) for c in conversations],
            )
            if not keep:
                raise ValueError(
                    f"Every sample of this batch needs more than max_length={self.max_length} tokens (longest: "
                    f"{int(attention_mask.sum(-1).max())}); nothing is left to train on. Raise max_length."
                )
            if len(keep) < len(examples):
                dropped = len(examples) - len(keep)
                self.num_dropped += dropped
                logger.warning(
                    f"VideoSFTCollator: dropped {dropped} of {len(examples)} sample(s) of this batch that need more "
                    f"than max_length={self.max_length} tokens ({self.num_dropped} dropped so far)."
                )
                output = self._process([conversations[i] for i in keep])
            if output["input_ids"].shape[1] > self.max_length:  # overflow="truncate": only text after visuals goes
                for key in _PER_TOKEN_KEYS:
                    value = output.get(key)
                    if isinstance(value, torch.Tensor) and value.dim() >= 2:
                        output[key] = value[:, : self.max_length]
            input_ids, attention_mask = output["input_ids"], output["attention_mask"]

        labels = input_ids.clone()
        labels[attention_mask == 0] = -100
        if self.mask_visual_tokens and self.visual_token_ids:
            labels[self._is_visual(input_ids)] = -100
        if self.assistant_only_loss:
            assistant = output.pop("assistant_masks", None)
            if assistant is None:
                raise ValueError(
                    "assistant_only_loss=True but the processor returned no assistant_masks; the chat template needs "
                    "{% generation %} ... {% endgeneration %} around assistant turns."
                )
            assistant = torch.as_tensor(assistant)
            if not bool(assistant.any()):
                raise ValueError(
                    "assistant_only_loss=True but no token of this batch is marked as the assistant's; does the chat "
                    "template wrap assistant turns in {% generation %} ... {% endgeneration %}?"
                )
            labels[assistant == 0] = -100
        output["labels"] = labels
        return output
