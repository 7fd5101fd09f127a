"""What every source kind's recipe is made of: the `Recipe` it hands to the engine, and the helpers kinds share
(reading the source's config, tokenizer, image processor, chat template and generation config; tying; new
placeholder tokens)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..chat_templates import IMAGE_TOKEN, VIDEO_TOKEN
from ..configuration_hybrid_vlm import HybridVLMConfig
from ..image_processing_hybrid_vlm import HybridVLMImageProcessor
from .errors import ConversionError
from .options import ConvertOptions
from .reader import CheckpointReader, SourceTensor
from .rules import Rule

__all__ = [
    "Recipe",
    "RecipeBuilder",
    "add_placeholder_tokens",
    "base_model_prefix",
    "find_name",
    "first_match",
    "has_name",
    "has_tokenizer",
    "image_processor_from_source",
    "load_tokenizer",
    "read_json",
    "source_chat_template",
    "source_generation_config",
    "source_image_processor_dict",
    "tie_setting",
]


@dataclass
class Recipe:
    """Everything kind-specific: the target config, the rules and the processor pieces."""

    config: HybridVLMConfig
    rules: list[Rule]
    tokenizer: Any = None
    image_processor: Any = None
    video_sampling: dict[str, Any] = field(default_factory=dict)  # the video processor's sampling settings
    chat_template: str | None = None
    video_layout: str = "plain"
    image_layout: str | None = None  # None: the processor's default ("llava")
    layout_markers: str = "special"
    processor_kwargs: dict[str, Any] = field(default_factory=dict)  # image_token, video_token, video_processor ...
    filled: dict[str, torch.Tensor] = field(default_factory=dict)  # target weights the source has no tensor for
    generation_config: Any = None
    notes: list[str] = field(default_factory=list)
    description: str = ""


# Every kind's module has one: `build_recipe(kind, folder, reader, options)`.
RecipeBuilder = Callable[[str, Path, CheckpointReader, ConvertOptions], Recipe]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the source folder (a missing or malformed file is a ConversionError naming it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} not found; is {path.parent} a saved checkpoint folder?") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object.")
    return data


def has_tokenizer(folder: Path) -> bool:
    """Whether the source folder holds tokenizer files (without them only the model is written)."""
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def load_tokenizer(folder: Path, exact: bool = False) -> Any:
    """The source's tokenizer. `exact=True` loads `tokenizer.json` as it is, in the generic fast class: a model class
    such as 5.x's LlamaTokenizer rebuilds normalizer and pre-tokenizer from its config flags (and 4.57's from
    `tokenizer.model`, which needs sentencepiece), which can tokenize differently from the file the reference used."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json too and warns about unknown model types
    try:
        if exact and (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - any loader failure gets the same advice
        raise ConversionError(
            f"could not load the tokenizer in {folder} ({type(err).__name__}: {err}). Fix or remove the tokenizer "
            "files and convert again (without a tokenizer only the model is written)."
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)


def source_image_processor_dict(folder: Path) -> dict[str, Any] | None:
    """The source's saved image processor settings: 4.x's preprocessor_config.json or 5.x's nested entry."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        return read_json(path)
    path = folder / "processor_config.json"
    if path.is_file():
        nested = read_json(path).get("image_processor")
        if isinstance(nested, dict):
            return nested
    return None


def source_chat_template(folder: Path, tokenizer: Any) -> str | None:
    """The source's chat template, wherever either transformers line saved it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            template = read_json(path).get("chat_template")
            if isinstance(template, str):
                return template
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return template if isinstance(template, str) else None


def image_processor_from_source(
    folder: Path, vision_config: Any, notes: list[str], **overrides: Any
) -> Any:
    """HybridVLMImageProcessor with the source's resize/crop/normalisation settings (the encoder's defaults when
    the source saved none)."""
    saved = source_image_processor_dict(folder)
    if saved is None:
        notes.append("the source has no saved image processor; using the vision encoder's standard preprocessing.")
        return HybridVLMImageProcessor.from_vision_config(vision_config, **overrides)
    params = {k: saved[k] for k in HybridVLMImageProcessor._param_names if k in saved and k not in overrides}
    return HybridVLMImageProcessor(**params, **overrides)


def source_generation_config(
    folder: Path, text_config: Any, placeholder_ids: Sequence[int], eos_token_id: Any = None
) -> Any:
    """The source's generation config (or one from the LM config), never emitting a visual placeholder."""
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        config = GenerationConfig.from_pretrained(str(folder))
    else:
        config = GenerationConfig(
            bos_token_id=getattr(text_config, "bos_token_id", None),
            eos_token_id=getattr(text_config, "eos_token_id", None),
            pad_token_id=getattr(text_config, "pad_token_id", None),
        )
    if eos_token_id is not None:
        config.eos_token_id = eos_token_id
    suppressed = list(config.suppress_tokens or [])
    config.suppress_tokens = suppressed + [i for i in placeholder_ids if i is not None and i not in suppressed] or None
    return config


def has_name(entries: Mapping[str, SourceTensor], pattern: str) -> bool:
    """Whether any source tensor's name matches the regex `pattern`."""
    compiled = re.compile(pattern)
    return any(compiled.search(name) for name in entries)


def first_match(entries: Mapping[str, SourceTensor], pattern: str) -> SourceTensor | None:
    """The first source tensor (by name) whose name matches the regex `pattern`, or None."""
    compiled = re.compile(pattern)
    return next((entry for name, entry in sorted(entries.items()) if compiled.search(name)), None)


def find_name(entries: Mapping[str, SourceTensor], candidates: Sequence[str]) -> str:
    """The first of `candidates` the source has (the first candidate when it has none)."""
    return next((c for c in candidates if c in entries), candidates[0])


def base_model_prefix(text_config: Any) -> str:
    """Where a *ForCausalLM keeps its base model (`model` for Llama/Qwen2/Jamba, `backbone` for Mamba, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)].base_model_prefix
    except KeyError:
        raise ConversionError(
            f"the source's language model '{text_config.model_type}' is not a causal LM this transformers version "
            "knows."
        ) from None


def tie_setting(
    entries: Mapping[str, SourceTensor], reader: CheckpointReader, text_config: Any, head: str, embed: str,
    notes: list[str],
) -> bool:
    """Whether the converted model ties its LM head to the embeddings.

    No head in the source: it was tied. A head that equals the embeddings under a tying flag: keep tying. A head
    that differs: untie (the numbers must stay the source's), with a note.
    """
    if head not in entries:
        if not getattr(text_config, "tie_word_embeddings", False):
            raise ConversionError(
                f"the source has no LM head ({head}) and its config does not tie it to the embeddings; the "
                "checkpoint is incomplete."
            )
        return True
    if not getattr(text_config, "tie_word_embeddings", False) or embed not in entries:
        return False
    if torch.equal(reader.load(head), reader.load(embed)):
        return True
    notes.append("the source's config asks to tie the LM head but its stored head differs from the embeddings; "
                 "the converted model keeps the stored head untied so that its outputs match.")
    return False


def add_placeholder_tokens(tokenizer: Any, notes: list[str]) -> tuple[int, int]:
    """Add the <image>/<video> placeholders as special tokens where the source's tokenizer lacks them (LongLLaVA
    spliced images in by id -200, Cobra's GPT-NeoX tokenizer has none); returns their ids."""
    missing = [t for t in (IMAGE_TOKEN, VIDEO_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        notes.append(f"added placeholder token(s) {missing} to the tokenizer.")
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
