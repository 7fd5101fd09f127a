"""LoRA and QLoRA configs that adapt only weights every kernel path calls as modules.

`"all-linear"` would put adapters on weights the Mamba kernels read directly (`out_proj`, `conv1d`, ...), where they
silently do nothing; `lora_config` scopes LoRA to the language model (optionally the projector), never the vision
tower or `lm_head`. `qlora_config` keeps SSM mixers, the vision tower, the projector and `lm_head` unquantised.
peft and bitsandbytes are imported only by the functions that need them (`pip install hybrid_vlm[train]`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from ..ssm import is_ssm_mixer
from .model_parts import find_name, is_moe_block, required_part, unwrap

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

# Inside an SSM mixer, the only Linear layers that every kernel path (CUDA kernels and the PyTorch fallbacks, on
# transformers 4.57 and 5.x) calls as modules. Everything else in a mixer is read as a raw tensor by some path:
# `conv1d` (causal_conv1d), `out_proj` (Mamba-1/Mamba-2 fused training kernels), `x_proj` and `dt_proj` (Mamba-1's
# mamba_inner_fn; Jamba reads `dt_proj.weight` on transformers 5). An adapter there would never be applied.
_SSM_SAFE_LINEARS_DEFAULT = frozenset({"in_proj"})
_SSM_SAFE_LINEARS = {"JambaMambaMixer": frozenset({"in_proj", "x_proj"})}


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
        if name and is_moe_block(module):
            skipped_roots.append(name)
            continue
        if is_ssm_mixer(module):
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
    base = unwrap(model)
    language_model, lm_name = required_part(base, "language_model")
    names = _linear_names(language_model, lm_name)
    if include_projector:
        projector, projector_name = required_part(base, "multi_modal_projector")
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
    all_names = [name for name, _ in unwrap(model).named_modules()]
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
        return unwrap(model_or_config)
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
        skip.append(required_part(model, attribute)[1])
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lm_head_name = find_name(model, lm_head)
    if lm_head_name:
        skip.append(lm_head_name)
    language_model, lm_name = required_part(model, "language_model")
    for name, module in language_model.named_modules():
        if is_ssm_mixer(module):
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
