"""Fine-tuning helpers: PEFT/QLoRA configs with safe defaults, a collator for video chats, the papers' training stages.

TRL's `SFTTrainer` trains these models unmodified on TRL's vision format (a `messages` column with image blocks and an
`images` column); nothing here is needed for that. What this package adds, one module each:

* `lora`: `lora_config` / `lora_target_modules`, LoRA scoped to the language model (optionally the projector), never
  the vision tower or `lm_head`, and only on SSM projections that every kernel path calls as a module;
  `qlora_config` / `qlora_skip_modules`, a bitsandbytes 4-bit config that keeps SSM mixers, the vision tower, the
  projector and `lm_head` unquantised.
* `collator`: `VideoSFTCollator`. TRL has no video column; this collator takes chats whose content blocks carry videos
  (and/or images), applies the chat template through the processor, and never cuts visual tokens when a sample is too
  long (`apply_overflow_policy`).
* `stages`: `freeze_for_stage`, projector-only alignment, projector+LM with the vision tower frozen, full, and Vamba's
  stage 1 (new layers only).
* `losses`: `causal_lm_loss` (SFTTrainer's `compute_loss_func` under FSDP2) and `topk_distillation_loss`.
* `fsdp`: `fsdp_wrap_classes`, the layer classes to shard.
* `cli`: `hybrid-vlm train`.
* `warn_if_fp16_with_ssm` (from `hybrid_vlm.precision`): fp16 overflows the SSM scan; the model's forward calls it
  while training (warns once).

peft, trl and bitsandbytes are imported only by the functions that need them (`pip install hybrid_vlm[train]`).
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first use (so importing one module of the package
# does not import the others).
_PUBLIC_NAMES: dict[str, str] = {
    "apply_overflow_policy": ".collator",
    "causal_lm_loss": ".losses",
    "chat_as_blocks": ".collator",
    "count_parameters": ".stages",
    "freeze_for_stage": ".stages",
    "fsdp_wrap_classes": ".fsdp",
    "lora_config": ".lora",
    "lora_target_modules": ".lora",
    "OVERFLOW_POLICIES": ".collator",
    "qlora_config": ".lora",
    "qlora_skip_modules": ".lora",
    "topk_distillation_loss": ".losses",
    "TRAINING_STAGES": ".stages",
    "VideoSFTCollator": ".collator",
    "warn_if_fp16_with_ssm": "..precision",
}

__all__ = sorted(_PUBLIC_NAMES)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES, globals())
