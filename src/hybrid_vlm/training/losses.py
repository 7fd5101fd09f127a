"""Losses for SFTTrainer's `compute_loss_func` and Vamba's stage-1 distillation term."""

from __future__ import annotations

from typing import Any

import torch


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
