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

from ..precision import warn_if_fp16_with_ssm
from .collator import OVERFLOW_POLICIES, VideoSFTCollator, apply_overflow_policy, chat_as_blocks
from .fsdp import fsdp_wrap_classes
from .lora import lora_config, lora_target_modules, qlora_config, qlora_skip_modules
from .losses import causal_lm_loss, topk_distillation_loss
from .stages import TRAINING_STAGES, count_parameters, freeze_for_stage

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
