"""The model a command-line argument names: a preset, a saved folder, a LoRA adapter folder or a Hub id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor

from ..compat import auto_model_for_image_text_to_text
from ..presets import from_preset
from .model_args import resolve_model_source


def load_model(name: str, dtype: torch.dtype | None = None, allow_adapter: bool = True) -> tuple[Any, Any, str]:
    """`(model, processor, kind)` for a command-line model argument: a preset (random weights), a saved folder, a
    LoRA adapter folder (loaded onto its base) or a Hub id. The argument is checked locally first, so a typo fails at
    once with the options instead of waiting for the network."""
    kind, source = resolve_model_source(name)
    if kind == "preset":
        model, processor = from_preset(name)
        return model, processor, kind  # fp32 weights; `--bf16` training autocasts
    if kind == "adapter":
        if not allow_adapter:
            raise ValueError(
                f"{name!r} holds a LoRA adapter, not a model. Load it with PeftModel.from_pretrained and merge it "
                "(merge_and_unload + save_pretrained) to train on, or pass its base model."
            )
        return (*_load_adapter(name, source, dtype), kind)
    auto = auto_model_for_image_text_to_text()
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = auto.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as error:
        if kind != "hub":
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name!r} could not be loaded from the Hub ({first}). It is not a local folder nor a preset "
            "(`hybrid-vlm presets` lists them); set HF_HUB_OFFLINE=1 to fail at once without a network."
        ) from None
    return model, processor, kind


def _load_adapter(name: str, folder: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """A PEFT adapter folder on its base (a preset or a folder recorded in adapter_config.json)."""
    base = json.loads((Path(folder) / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    try:
        resolve_model_source(base)
    except ValueError as error:
        raise ValueError(
            f"The LoRA adapter {name!r} was trained on the base model {base!r}, which is missing here: {error}"
        ) from None
    from peft import PeftModel  # (an optional dependency: pip install hybrid_vlm[train])

    model, processor, _ = load_model(base, dtype, allow_adapter=False)
    if (Path(folder) / "processor_config.json").is_file() or (Path(folder) / "tokenizer_config.json").is_file():
        processor = AutoProcessor.from_pretrained(folder)
    return PeftModel.from_pretrained(model, folder), processor
