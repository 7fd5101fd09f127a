"""Model cards for saved HybridVLM folders, so a folder uploaded to the Hub is found, tagged and usable as is.

`HybridVLMPreTrainedModel.save_pretrained` calls `write_model_card`; a README.md that the user wrote is never replaced
unless `overwrite=True`. The card's YAML front matter carries what the Hub indexes: `library_name: transformers`,
`pipeline_tag: image-text-to-text`, `base_model` (when known) and `tags`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .model_types import language_model_type
from .remote_code import write_text_atomic

__all__ = [
    "CARD_MARKER",
    "guess_base_model",
    "model_card_metadata",
    "model_card_text",
    "write_model_card",
]

# First line of the body of a card we generated: such a README.md may be regenerated; any other is the user's.
CARD_MARKER = "<!-- hybrid_vlm model card: written by save_pretrained. Delete this line to keep your edits. -->"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def guess_base_model(model: Any) -> str | None:
    """The Hub id the model was loaded from (`config._name_or_path`), when it is one and not a local folder."""
    config = getattr(model, "config", model)
    name = str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    if not name or not _HUB_ID.match(name) or os.path.exists(name):
        return None
    return name


def model_card_metadata(model: Any, base_model: str | None = None, remote_code: bool = False) -> dict[str, Any]:
    """The card's front matter as a dict: library, pipeline tag, base model (given or guessed) and tags."""
    config = model.config
    text_type = getattr(config.text_config, "model_type", None)
    vision_type = getattr(config.vision_config, "model_type", None)
    tags = ["hybrid_vlm", "image-text-to-text", "vision-language"]
    decoder = getattr(config, "decoder_type", None)
    if decoder and decoder not in ("llava", "default"):
        tags.append(str(decoder))
    tags += [t for t in (text_type, vision_type) if t]
    if language_model_type(text_type).scan is not None or decoder == "vamba":  # Mamba layers in the LM or beside it
        tags.append("ssm")
    if remote_code:
        tags.append("custom_code")
    metadata: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "image-text-to-text"}
    base_model = base_model or guess_base_model(model)
    if base_model:
        metadata["base_model"] = base_model
    metadata["tags"] = list(dict.fromkeys(tags))
    return metadata


def _yaml(metadata: dict[str, Any]) -> str:
    """Front matter; the values here are plain identifiers, but quote anything YAML could misread."""

    def scalar(value: Any) -> str:
        text = str(value)
        return text if re.fullmatch(r"[A-Za-z0-9_][\w./-]*", text) else '"' + text.replace('"', '\\"') + '"'

    lines = []
    for key, value in metadata.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines += [f"- {scalar(item)}" for item in value]
        else:
            lines.append(f"{key}: {scalar(value)}")
    return "\n".join(lines)


def model_card_text(model: Any, base_model: str | None = None, remote_code: bool = False, title: str = "") -> str:
    """The whole README.md: front matter, what the model is, and how to load and prompt it."""
    metadata = model_card_metadata(model, base_model=base_model, remote_code=remote_code)
    config = model.config
    text_config, vision_config = config.text_config, config.vision_config
    parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    trust = ", trust_remote_code=True" if remote_code else ""
    load_note = (
        "The modelling code is in this folder: `trust_remote_code=True` loads it without installing `hybrid_vlm`."
        if remote_code
        else "Needs `pip install hybrid_vlm` (importing it registers the model with transformers' Auto classes)."
    )
    import_line = "" if remote_code else "import hybrid_vlm  # registers the Auto classes\n"
    rows = [
        ("architecture", f"`{type(model).__name__}` (decoder type `{getattr(config, 'decoder_type', 'llava')}`)"),
        (
            "language model",
            f"`{getattr(text_config, 'model_type', '?')}`, {getattr(text_config, 'num_hidden_layers', '?')} layers, "
            f"hidden size {getattr(text_config, 'hidden_size', '?')}",
        ),
        ("vision tower", f"`{getattr(vision_config, 'model_type', '?')}`"),
        ("projector", f"`{getattr(config, 'projector_type', '?')}`"),
    ]
    if parameters is not None:
        rows.append(("parameters", f"{parameters:,}"))
    if metadata.get("base_model"):
        rows.append(("base model", f"[{metadata['base_model']}](https://huggingface.co/{metadata['base_model']})"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    title = title or "HybridVLM model"
    return f"""---
{_yaml(metadata)}
---
{CARD_MARKER}

# {title}

A hybrid Mamba/Transformer vision-language model in the `hybrid_vlm` format: a native transformers model
(`AutoModelForImageTextToText`, `AutoProcessor`). {load_note}

| | |
|---|---|
{table}

## Use

```python
{import_line}from transformers import pipeline

pipe = pipeline("image-text-to-text", model="REPO_OR_FOLDER"{trust})
messages = [{{"role": "user", "content": [{{"type": "image", "image": "photo.jpg"}},
                                          {{"type": "text", "text": "What is in the picture?"}}]}}]
print(pipe(text=messages, max_new_tokens=64))
```

or with the Auto classes:

```python
{import_line}from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("REPO_OR_FOLDER"{trust})
processor = AutoProcessor.from_pretrained("REPO_OR_FOLDER"{trust})
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Train SSM layers in bf16 or fp32, not fp16 (the scan overflows fp16).

## Training

Describe the data and the training recipe here.
"""


def write_model_card(
    save_directory: str | os.PathLike,
    model: Any,
    base_model: str | None = None,
    remote_code: bool = False,
    overwrite: bool = False,
    title: str = "",
) -> bool:
    """Write `README.md` (a model card) into a saved model folder; return whether it was written.

    An existing README.md is replaced only when it is a card this function wrote (it still has `CARD_MARKER`) or
    `overwrite=True`: a README the user wrote is never lost. The write is atomic.
    """
    path = Path(save_directory) / "README.md"
    if path.exists() and not overwrite:
        try:
            ours = CARD_MARKER in path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            return False
    text = model_card_text(model, base_model=base_model, remote_code=remote_code, title=title or Path(path).parent.name)
    write_text_atomic(path, text)
    return True
