"""Convert released checkpoints into native HybridVLM folders (`hybrid-vlm convert SRC DST --from KIND`).

Why a converter and not a loader hook: the papers' checkpoints use names from vendored 2024 code (LongLLaVA's Jamba),
declare a model type that stock transformers loads *silently wrong* (Vamba), or come from transformers'
own LLaVA classes whose layout changed between releases. Converting once into our layout gives a folder that loads
with the Auto classes on both transformers lines, and lets us check every tensor on the way.

How it works, in four steps, so that nothing is ever half-written or silently lost:

1. **List** the source tensors (names, shapes, dtypes) from the safetensors headers or a memory-mapped torch file,
   without reading their data.
2. **Plan**: every source name goes through an ordered list of named rules; a rule either renames it (optionally
   with a shape-only transform) or drops it *with a reason* (buffers such as ``position_ids``). A name no rule
   covers is a leftover: the conversion fails and lists it unless ``allow_unused=[regex]`` names it.
3. **Check** the plan against the target model built on the meta device: every HybridVLM weight must be produced
   exactly once with the right shape (so a wrong config fails here, before any byte is written).
4. **Stream**: tensors are read one at a time, transformed, cast and written into size-limited safetensors shards in
   a temporary folder next to ``dst_dir``, which is renamed into place only when config, processor, generation
   config and model card are complete.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .compat import decode_special_floats, revert_weight_conversion
from .configuration_hybrid_vlm import VISION_MODEL_TYPES, HybridVLMConfig
from .ssm import SSM_FP32_PARAMETERS
from .tokenization_utils import CHATML_TURNS, LONGLLAVA_CHAT_TEMPLATE, render_content_macro

__all__ = [
    "KINDS",
    "CheckpointReader",
    "ConversionError",
    "ConversionReport",
    "Rule",
    "UnconvertedVambaCheckpointError",
    "add_convert_subcommand",
    "check_unconverted_vamba",
    "convert",
    "convert_vamba_language_state_dict",
    "detect_unconverted_vamba",
    "map_vamba_language_keys",
    "plan_mapping",
    "run_convert",
    "vamba_language_rules",
]

KINDS = ("llava", "llava-next", "llava-onevision", "longllava", "vamba", "cobra")
DEFAULT_MAX_SHARD_SIZE = "5GB"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Vamba (Qwen2-VL ChatML with Qwen's default system prompt): an image block becomes one <|image_pad|>, a video block
# one <|video_pad|>; the processor's 'qwen2vl' layout expands each into <|vision_start|>, one pad per visual token,
# <|vision_end|>. Without the pads this is the reference's prompt exactly (its visual tokens are not in the text).
VAMBA_IMAGE_TOKEN = "<|image_pad|>"
VAMBA_VIDEO_TOKEN = "<|video_pad|>"
VAMBA_CHAT_TEMPLATE = (
    "{#- Qwen2-VL ChatML (Vamba); the processor writes <|vision_start|>, the pads and <|vision_end|>. -#}\n"
    + render_content_macro(image=VAMBA_IMAGE_TOKEN, video=VAMBA_VIDEO_TOKEN)
    + r"""{%- if messages and messages[0]['role'] != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
{%- endif -%}
"""
    + CHATML_TURNS
)
# Frames Vamba's chat script samples from a video file (its "middle" rule, `vamba_middle` here).
VAMBA_NUM_FRAMES = 128


class ConversionError(ValueError):
    """The source cannot be converted as asked. Raised before anything is written to the destination."""


class UnconvertedVambaCheckpointError(ValueError):
    """A Vamba checkpoint is about to be loaded as plain Qwen2-VL, which would silently drop its new layers."""


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class ConversionReport:
    """What a conversion did, tensor by tensor; also summarised in the model card."""

    kind: str
    source: str
    destination: str
    mapped: dict[str, str] = field(default_factory=dict)  # source name -> HybridVLM name
    dropped: dict[str, str] = field(default_factory=dict)  # source name -> rule (reason) that dropped it
    rule_counts: dict[str, int] = field(default_factory=dict)  # rule name -> tensors it handled
    missing: list[str] = field(default_factory=list)  # HybridVLM weights the source lacked (empty on success)
    tied: list[str] = field(default_factory=list)  # weights recreated by tying (e.g. lm_head.weight)
    notes: list[str] = field(default_factory=list)
    num_tensors: int = 0
    total_bytes: int = 0
    shards: list[str] = field(default_factory=list)
    dtype: str | None = None

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"converted {self.kind} checkpoint {self.source} -> {self.destination}",
            f"  {len(self.mapped)} tensors mapped ({self.total_bytes / 1e9:.3f} GB in {len(self.shards)} file(s), "
            f"dtype {self.dtype}), {len(self.dropped)} dropped by name",
        ]
        for source, reason in list(self.dropped.items())[:10]:
            lines.append(f"    dropped {source}: {reason}")
        if len(self.dropped) > 10:
            lines.append(f"    ... and {len(self.dropped) - 10} more")
        lines += [f"  tied: {name}" for name in self.tied]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------------- source


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
# Files in checkpoint folders that are not model weights (trainer state, optimizer, ...).
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|scaler|trainer_state|rng_state.*)\.(bin|pt|pth)$")
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class SourceTensor:
    """One source tensor as listed from a file header: nothing of its data is read yet."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str


class CheckpointReader:
    """Lists and reads the tensors of a checkpoint folder one at a time.

    safetensors shards are read with ``safe_open`` (each ``get_tensor`` reads one tensor); ``.bin``/``.pt`` files
    are opened with ``torch.load(mmap=True, weights_only=True)``, so their tensors stay on disk until touched.
    Nested dicts in torch files (``{"model": {"projector": {...}}}``) are flattened with dots.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.files = _weight_files(self.folder)
        self.notes: list[str] = []
        self._safetensors: dict[str, Any] = {}
        self._torch: dict[str, dict[str, torch.Tensor]] = {}
        self._entries: dict[str, SourceTensor] | None = None
        self._extra: list[tuple[Path, str]] = []  # (folder, name prefix) of additional checkpoints
        self._original: dict[str, str] = {}  # listed name -> name inside its file (extra sources are prefixed)
        self._paths: dict[str, Path] = {}  # SourceTensor.file -> the file's path

    def add_source(self, folder: Path, prefix: str) -> None:
        """Also list the tensors of another checkpoint folder, under `prefix` + their names (e.g. vision encoders
        that a run kept frozen and did not save)."""
        self._extra.append((Path(folder), prefix))
        self._entries = None

    def tensors(self) -> dict[str, SourceTensor]:
        """Name -> (shape, dtype, file) of every tensor, in file order."""
        if self._entries is not None:
            return self._entries
        entries: dict[str, SourceTensor] = {}
        sources = [(path, "", path.name) for path in self.files]
        sources += [(path, prefix, str(path)) for folder, prefix in self._extra for path in _weight_files(folder)]
        for path, prefix, key in sources:
            for inner, shape, dtype in self._list(path, key):
                name = prefix + inner
                if name in entries:
                    raise ConversionError(
                        f"tensor {name!r} appears in both {entries[name].file} and {path.name}; the checkpoint is "
                        "inconsistent."
                    )
                entries[name] = SourceTensor(name, shape, dtype, key)
                self._original[name] = inner
                self._paths[key] = path
        if not entries:
            raise ConversionError(f"{self.folder} holds weight files but no tensors in them.")
        self._entries = entries
        return entries

    def _list(self, path: Path, key: str) -> Iterable[tuple[str, tuple[int, ...], torch.dtype]]:
        if path.suffix == ".safetensors":
            handle = self._safetensors.setdefault(key, safe_open(str(path), framework="pt"))
            for name in handle.keys():
                view = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise ConversionError(f"{path.name}: tensor {name!r} has unsupported dtype {view.get_dtype()}.")
                yield name, tuple(view.get_shape()), dtype
        else:
            for name, tensor in self._torch_state(path, key).items():
                yield name, tuple(tensor.shape), tensor.dtype

    def _torch_state(self, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
        key = key or path.name
        if key not in self._torch:
            try:
                loaded = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:
                if "mmap" not in str(err).lower() and "zip" not in str(err).lower():
                    raise
                # Files in torch's legacy (non-zip) format cannot be memory-mapped: they are read whole.
                self.notes.append(f"{path.name} is in torch's legacy format and was read into memory whole.")
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            flat: dict[str, torch.Tensor] = {}
            skipped = _flatten_tensors(loaded, "", flat)
            if skipped:
                self.notes.append(f"{path.name}: ignored {skipped} non-tensor entries (metadata, counters).")
            self._torch[key] = flat
        return self._torch[key]

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor."""
        entry = self.tensors()[name]
        inner = self._original.get(name, name)
        if entry.file.endswith(".safetensors"):
            return self._safetensors[entry.file].get_tensor(inner)
        # A copy, so the written shard never shares storage with the memory map (safetensors refuses shared storage).
        return self._torch_state(self._paths[entry.file], entry.file)[inner].clone()

    def close(self) -> None:
        self._safetensors.clear()
        self._torch.clear()


def _flatten_tensors(value: Any, prefix: str, out: dict[str, torch.Tensor]) -> int:
    """Collect tensors of nested dicts under dotted names; returns how many non-tensor leaves were skipped."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value
        return 0
    if isinstance(value, Mapping):
        return sum(_flatten_tensors(v, f"{prefix}.{k}" if prefix else str(k), out) for k, v in value.items())
    return 1


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: an index's shards, else all safetensors, else torch files."""
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder; pass the checkpoint's local directory.")
    for index_name in (INDEX_FILE, "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ConversionError(f"{index_name} lists shards that are not in {folder}: {absent}.")
            if files:
                return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    files = sorted(p for p in folder.iterdir() if p.suffix in _TORCH_SUFFIXES and not _NOT_WEIGHTS.match(p.name))
    if files:
        return files
    latest = folder / "checkpoints" / "latest-checkpoint.pt"  # a Prismatic/Cobra run folder
    if latest.is_file():
        return [latest]
    raise ConversionError(f"no weights in {folder}: expected *.safetensors or a torch .bin/.pt file.")


# ---------------------------------------------------------------------------------------------------- rules


Target = str | Callable[[re.Match[str]], str | None] | None


@dataclass(frozen=True)
class Rule:
    """One named mapping rule: a regex over source names and what happens to a match.

    ``target`` is a ``re`` replacement template, a function of the match returning the new name (None: the rule
    does not apply after all), or None to drop the tensor; dropping always needs a reason, which is the rule's
    ``name``. ``transform`` changes a tensor's layout only (reshape, row padding): it must be exact.
    """

    name: str
    pattern: re.Pattern[str]
    target: Target
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def rename(
        cls, name: str, pattern: str, target: str | Callable[[re.Match[str]], str | None],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Rule:
        return cls(name, re.compile(pattern), target, transform)

    @classmethod
    def drop(cls, reason: str, pattern: str) -> Rule:
        return cls(reason, re.compile(pattern), None)

    def apply(self, name: str) -> tuple[bool, str | None]:
        """(matched, new name or None for a drop)."""
        match = self.pattern.search(name)
        if match is None:
            return False, None
        if self.target is None:
            return True, None
        new = self.target(match) if callable(self.target) else match.expand(self.target)
        if new is None:
            return False, None
        return True, new


@dataclass
class MappingPlan:
    """Where every source tensor goes: renamed (with its rule), dropped (with the reason) or left over."""

    mapped: dict[str, tuple[str, Rule]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def plan_mapping(
    names: Iterable[str], rules: Sequence[Rule], allow_unused: Sequence[str] = (),
    known_targets: Container[str] | None = None,
) -> MappingPlan:
    """Run every name through the rules (first match wins). With `known_targets`, a rename to a name the target
    model does not have does not count as a match (an unknown tensor inside a renamed prefix is a leftover, not a
    silent extra). Leftovers matching ``allow_unused`` are dropped and recorded as such; the others stay leftovers
    for the caller to refuse."""
    allowed = [re.compile(p) for p in allow_unused]
    plan = MappingPlan()
    for name in names:
        for rule in rules:
            matched, new = rule.apply(name)
            if not matched or (new is not None and known_targets is not None and new not in known_targets):
                continue
            if new is None:
                plan.dropped[name] = rule.name
            else:
                plan.mapped[name] = (new, rule)
            break
        else:
            pattern = next((p.pattern for p in allowed if p.search(name)), None)
            if pattern is None:
                plan.leftovers.append(name)
            else:
                plan.dropped[name] = f"allowed by allow_unused {pattern!r}"
    return plan


def _strip_vision_model(match: re.Match[str]) -> str:
    return "model.vision_tower." + match.group(1)


def _common_drop_rules() -> list[Rule]:
    """Buffers some checkpoints carry that every model recomputes from its config."""
    return [
        Rule.drop("position_ids buffer of the vision embeddings (rebuilt from the config on load)",
                  r"(^|\.)vision_tower\..*embeddings\.position_ids$"),
        Rule.drop("rotary inv_freq buffer (recomputed from the config on load)", r"\.rotary_emb\.inv_freq$"),
    ]


def _pad_rows(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Append zero rows (new placeholder tokens: their embeddings are replaced by visual features, and generation
    suppresses them, so no trained value is needed)."""

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor.new_zeros((rows, *tensor.shape[1:]))], dim=0)

    return pad


def _to_scalar(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() != 1:
        raise ConversionError(f"expected a one-element tensor, got shape {tuple(tensor.shape)}.")
    return tensor.reshape(())


# ---------------------------------------------------------------------------------------------------- recipes


@dataclass
class _Recipe:
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


@dataclass
class _Options:
    vision_config: Any = None
    vision_towers: Sequence[Any] | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} not found; is {path.parent} a saved checkpoint folder?") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} must hold a JSON object.")
    return data


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def _load_tokenizer(folder: Path, exact: bool = False) -> Any:
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


def _source_image_processor_dict(folder: Path) -> dict[str, Any] | None:
    """The source's saved image processor settings: 4.x's preprocessor_config.json or 5.x's nested entry."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        return _read_json(path)
    path = folder / "processor_config.json"
    if path.is_file():
        nested = _read_json(path).get("image_processor")
        if isinstance(nested, dict):
            return nested
    return None


def _source_chat_template(folder: Path, tokenizer: Any) -> str | None:
    """The source's chat template, wherever either transformers line saved it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            template = _read_json(path).get("chat_template")
            if isinstance(template, str):
                return template
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return template if isinstance(template, str) else None


def _image_processor_from_source(
    folder: Path, vision_config: Any, notes: list[str], **overrides: Any
) -> Any:
    """HybridVLMImageProcessor with the source's resize/crop/normalisation settings (the encoder's defaults when
    the source saved none)."""
    from .image_processing_hybrid_vlm import HybridVLMImageProcessor

    saved = _source_image_processor_dict(folder)
    if saved is None:
        notes.append("the source has no saved image processor; using the vision encoder's standard preprocessing.")
        return HybridVLMImageProcessor.from_vision_config(vision_config, **overrides)
    params = {k: saved[k] for k in HybridVLMImageProcessor._param_names if k in saved and k not in overrides}
    return HybridVLMImageProcessor(**params, **overrides)


def _generation_config(folder: Path, text_config: Any, placeholder_ids: Sequence[int], eos_token_id: Any = None) -> Any:
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


def _has_name(entries: Mapping[str, SourceTensor], pattern: str) -> bool:
    compiled = re.compile(pattern)
    return any(compiled.search(name) for name in entries)


def _llava_rules(text_config: Any, newline: bool) -> list[Rule]:
    """transformers LLaVA layouts of every release -> ours.

    Legacy (both lines save this): ``vision_tower[.vision_model].*``, ``multi_modal_projector.*``,
    ``language_model.<base>.*``, ``language_model.lm_head.*``, ``image_newline``. In-memory 4.52+/5.x names:
    ``model.vision_tower[.vision_model].*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
    ``lm_head.*``, ``model.image_newline``.
    """
    base = re.escape(_base_model_prefix(text_config))
    rules = _common_drop_rules() + [
        Rule.rename("vision tower (4.x CLIP/SigLIP wrapper removed)", r"^(?:model\.)?vision_tower\.vision_model\.(.+)$",
                    _strip_vision_model),
        Rule.rename("vision tower", r"^(?:model\.)?vision_tower\.(.+)$", r"model.vision_tower.\1"),
        Rule.rename("projector", r"^(?:model\.)?multi_modal_projector\.(.+)$", r"model.multi_modal_projector.\1"),
        Rule.rename("language model (legacy layout)", rf"^language_model\.{base}\.(.+)$", r"model.language_model.\1"),
        Rule.rename("language model", r"^model\.language_model\.(.+)$", r"model.language_model.\1"),
        Rule.rename("LM head", r"^(?:language_model\.)?lm_head\.(.+)$", r"lm_head.\1"),
    ]
    if newline:
        rules.append(Rule.rename("AnyRes image newline", r"^(?:model\.)?image_newline$", "model.image_newline"))
    return rules


def _base_model_prefix(text_config: Any) -> str:
    """Where a *ForCausalLM keeps its base model (`model` for Llama/Qwen2/Jamba, `backbone` for Mamba, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)].base_model_prefix
    except KeyError:
        raise ConversionError(
            f"the source's language model '{text_config.model_type}' is not a causal LM this transformers version "
            "knows."
        ) from None


def _tie_setting(
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


def _find_name(entries: Mapping[str, SourceTensor], candidates: Sequence[str]) -> str:
    return next((c for c in candidates if c in entries), candidates[0])


# The model_type each kind's config.json declares.
_MODEL_TYPES = {"llava": "llava", "llava-next": "llava_next", "llava-onevision": "llava_onevision",
                "longllava": "llava_jamba", "vamba": "qwen2_vl"}


def _check_model_type(folder: Path, kind: str) -> dict[str, Any]:
    """The source's config.json, after checking it is the kind asked for (naming the right kind otherwise)."""
    raw = _read_json(folder / "config.json")
    model_type = raw.get("model_type")
    if model_type != _MODEL_TYPES[kind]:
        hint = {v: k for k, v in _MODEL_TYPES.items()}.get(model_type)
        raise ConversionError(
            f"{folder} holds a {model_type!r} checkpoint, not {_MODEL_TYPES[kind]!r}"
            + (f"; convert it with --from {hint}." if hint else ".")
        )
    return raw


def _llava_recipe(kind: str, folder: Path, reader: CheckpointReader, options: _Options) -> _Recipe:
    from transformers import AutoConfig

    _check_model_type(folder, kind)
    source = AutoConfig.from_pretrained(str(folder))
    model_type = source.model_type
    vision, text = source.vision_config, source.text_config
    notes: list[str] = []
    video_token_id = None
    onevision: dict[str, Any] = {}
    if kind == "llava-onevision":
        aspect = str(getattr(source, "vision_aspect_ratio", "anyres_max_9") or "")
        match = re.fullmatch(r"anyres_max_(\d+)", aspect)
        if match is None and aspect != "anyres":
            raise NotImplementedError(f"vision_aspect_ratio={aspect!r} is not supported ('anyres_max_N' or 'anyres').")
        video_token_id = getattr(source, "video_token_id", None)
        if video_token_id is None:
            video_token_id = getattr(source, "video_token_index", None)
        # its packing: tile map capped at N views' tokens; videos 2x2-pooled per frame, one newline per video
        onevision.update(anyres_max_feature_tiles=int(match.group(1)) if match else None, video_pool_stride=2,
                         video_newline=True, video_token_id=video_token_id)
    if vision.model_type not in VISION_MODEL_TYPES:
        raise NotImplementedError(
            f"the source's vision tower is '{vision.model_type}', which HybridVLM does not support "
            f"(supported: {list(VISION_MODEL_TYPES)})."
        )
    strategy = source.vision_feature_select_strategy
    if vision.model_type == "siglip_vision_model" and strategy == "default":
        raise NotImplementedError(
            "this LLaVA uses a SigLIP tower with vision_feature_select_strategy='default', which in transformers "
            "drops SigLIP's first *patch* token (SigLIP has no CLS token); HybridVLM drops only real prefix tokens."
        )
    entries = reader.tensors()
    newline = kind in ("llava-next", "llava-onevision")
    head = _find_name(entries, ["language_model.lm_head.weight", "lm_head.weight"])
    base = _base_model_prefix(text)
    embed_names = [f"language_model.{base}.embed_tokens.weight", "model.language_model.embed_tokens.weight"]
    tie = _tie_setting(entries, reader, text, head, _find_name(entries, embed_names), notes)
    text_dict = text.to_dict()
    text_dict["tie_word_embeddings"] = tie
    image_token_id = getattr(source, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(source, "image_token_index", None)
    extra: dict[str, Any] = {}
    if newline:
        # the pinpoints let the model take transformers' processor output (image_sizes alone) as transformers does
        extra.update(image_newline=True, anyres_unpad=True, anyres_merge="spatial",
                     image_grid_pinpoints=[list(p) for p in source.image_grid_pinpoints])
    extra.update(onevision)
    config = HybridVLMConfig(
        vision_config=vision.to_dict(),
        text_config=text_dict,
        projector_hidden_act=source.projector_hidden_act,
        multimodal_projector_bias=getattr(source, "multimodal_projector_bias", True),
        vision_feature_layer=source.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_id=image_token_id,
        tie_word_embeddings=tie,
        **extra,
    )
    recipe = _Recipe(config, _llava_rules(text, newline), notes=notes,
                     description=f"transformers {type(source).__name__.replace('Config', '')} ({model_type})")
    if _has_tokenizer(folder):
        recipe.tokenizer = _load_tokenizer(folder)
        processor_overrides: dict[str, Any] = {}
        if newline:
            pinpoints = source.image_grid_pinpoints
            saved = _source_image_processor_dict(folder) or {}
            if saved.get("image_grid_pinpoints") not in (None, pinpoints):
                notes.append("the source's image processor lists other image_grid_pinpoints than its model config; "
                             "the model config's (which decide the model's packing) are used.")
            processor_overrides["image_grid_pinpoints"] = pinpoints
        recipe.image_processor = _image_processor_from_source(folder, vision, notes, **processor_overrides)
        recipe.chat_template = _source_chat_template(folder, recipe.tokenizer)
        if recipe.chat_template is None:
            notes.append("the source has no chat template; the converted processor has none either.")
        recipe.generation_config = _generation_config(
            folder, text, [i for i in (image_token_id, video_token_id) if i is not None]
        )
    return recipe


# -- LongLLaVA


# LongLLaVA config fields that belong to LLaVA's training scripts, not to the Jamba language model.
_JAMBA_RENAMES = {"n_ctx": "max_position_embeddings"}


def _jamba_text_config(raw: Mapping[str, Any]) -> Any:
    """transformers' JambaConfig from a llava_jamba config: the Jamba fields, LLaVA's mm_* fields left out."""
    from transformers import JambaConfig

    known = set(JambaConfig().to_dict())
    values = {}
    for key, value in raw.items():
        key = _JAMBA_RENAMES.get(key, key)
        if key in known and key not in ("model_type", "architectures", "auto_map", "transformers_version"):
            values[key] = value
    return JambaConfig(**values)


_KNOWN_CLIP_TOWERS = {"clip-vit-large-patch14-336": 336, "clip-vit-large-patch14": 224}


def _clip_config_from_weights(entries: Mapping[str, SourceTensor], prefix: str, tower_name: str) -> dict[str, Any]:
    """A CLIP vision config read off the tower's weights; heads and activation come from the tower's name when it is
    a known OpenAI CLIP, else heads assume CLIP's 64-wide heads."""
    from .presets import CLIP_VIT_L_336

    def shape(suffix: str) -> tuple[int, ...]:
        key = prefix + suffix
        if key not in entries:
            raise ConversionError(f"the vision tower weights lack {key!r}; pass vision_config= explicitly.")
        return entries[key].shape

    hidden, _, patch, _ = shape("embeddings.patch_embedding.weight")
    positions = shape("embeddings.position_embedding.weight")[0]
    layers = len({m.group(1) for n in entries if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", n))})
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"the vision tower has {positions} positions, not a CLS token plus a square grid.")
    inferred = {
        "model_type": "clip_vision_model", "hidden_size": hidden,
        "intermediate_size": shape("encoder.layers.0.mlp.fc1.weight")[0], "num_hidden_layers": layers,
        "image_size": grid * patch, "patch_size": patch,
    }
    base_name = tower_name.rstrip("/").split("/")[-1]
    if base_name in _KNOWN_CLIP_TOWERS:
        known = {**CLIP_VIT_L_336, "image_size": _KNOWN_CLIP_TOWERS[base_name]}
        different = {k: (v, known[k]) for k, v in inferred.items() if known.get(k) != v}
        if different:
            raise ConversionError(f"the vision tower is named {tower_name!r} but its weights differ: {different}.")
        return known
    if hidden % 64:
        raise ConversionError(
            f"cannot tell the head count of the vision tower {tower_name!r} (width {hidden}); pass vision_config= "
            "(a CLIP vision config dict or the tower's folder)."
        )
    return {**inferred, "num_attention_heads": hidden // 64}


def _vision_config_from_option(value: Any) -> dict[str, Any]:
    from transformers import PretrainedConfig

    if isinstance(value, PretrainedConfig):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    if path.is_dir():
        path = path / "config.json"
    data = _read_json(path)
    if data.get("model_type") in ("clip", "siglip") and isinstance(data.get("vision_config"), dict):
        data = {**data["vision_config"], "model_type": f"{data['model_type']}_vision_model"}
    return data


def _longllava_vision_config(raw: Mapping[str, Any], entries: Mapping[str, SourceTensor], option: Any, prefix: str,
                             notes: list[str]) -> dict[str, Any]:
    tower = str(raw.get("mm_vision_tower") or raw.get("vision_tower") or "")
    if option is not None:
        return _vision_config_from_option(option)
    if tower and Path(tower, "config.json").is_file():
        notes.append(f"vision config read from the tower folder {tower}.")
        return _vision_config_from_option(tower)
    if "siglip" in tower.lower():
        raise ConversionError(f"the vision tower {tower!r} is SigLIP; pass vision_config= (its config or folder).")
    config = _clip_config_from_weights(entries, prefix, tower)
    notes.append(f"vision config of {tower or 'the vision tower'} derived from its weights and name.")
    return config


def _longllava_recipe(kind: str, folder: Path, reader: CheckpointReader, options: _Options) -> _Recipe:
    raw = _check_model_type(folder, kind)
    notes: list[str] = []
    if raw.get("mm_use_im_start_end"):
        raise NotImplementedError("mm_use_im_start_end=True (LLaVA's <im_start>/<im_end> tokens) is not supported.")
    projector = raw.get("mm_projector_type", "linear")
    if projector not in ("mlp2x_gelu", "mlp3x_gelu"):
        raise NotImplementedError(
            f"projector {projector!r} is not supported; HybridVLM has LLaVA's 'mlp2x_gelu' and 'mlp3x_gelu'."
        )
    if not raw.get("mamba_inner_layernorms", True):
        raise NotImplementedError(
            "mamba_inner_layernorms=False: transformers' Jamba always normalises dt/B/C, so such a checkpoint "
            "would compute something else there."
        )
    text = _jamba_text_config(raw)
    entries = reader.tensors()
    vision_prefix = "model.vision_tower.vision_tower.vision_model."
    vision = _longllava_vision_config(raw, entries, options.vision_config, vision_prefix, notes)
    select = raw.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if select not in strategies:
        raise NotImplementedError(f"mm_vision_select_feature={select!r} is not supported (patch or cls_patch).")
    pooling = raw.get("resamplePooling")
    pooled_grid = None
    if pooling:
        if pooling != "2d":
            raise NotImplementedError(
                f"resamplePooling={pooling!r} (1-D linear pooling to 144 tokens) is not supported; '2d' is."
            )
        grid = vision["image_size"] // vision["patch_size"]
        if grid != 24:
            raise ConversionError(
                f"LongLLaVA's 2-D pooling is hard-wired to a 24x24 patch grid; this tower has {grid}x{grid}."
            )
        pooled_grid = 12
    merge = str(raw.get("mm_patch_merge_type", "flat"))
    newline = "unpad" in merge
    anyres = raw.get("image_aspect_ratio") == "anyres"
    if newline and not _has_name(entries, r"^model\.image_newline$"):
        raise ConversionError(f"mm_patch_merge_type={merge!r} needs model.image_newline, which the source lacks.")
    layout = {"anyres_merge": "spatial" if merge.startswith("spatial") else "flat", "image_newline": newline,
              "anyres_unpad": newline}

    tokenizer = _load_tokenizer(folder, exact=True) if _has_tokenizer(folder) else None
    vocab_size = text.vocab_size
    image_id = video_id = None
    if tokenizer is not None:
        image_id, video_id = _add_placeholder_tokens(tokenizer, notes)
        vocab_size = max(vocab_size, len(tokenizer))
    extra_rows = vocab_size - text.vocab_size
    text.vocab_size = vocab_size
    text_dict = text.to_dict()
    tie = "lm_head.weight" not in entries
    if tie and not raw.get("tie_word_embeddings", False):
        raise ConversionError("the source has no lm_head.weight and its config does not tie it to the embeddings.")
    text_dict["tie_word_embeddings"] = tie
    config = HybridVLMConfig(
        vision_config=vision,
        text_config=text_dict,
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategies[select],
        image_token_id=image_id,
        video_token_id=video_id,
        vision_pooled_grid=pooled_grid,
        tie_word_embeddings=tie,
        # LLaVA's mlp3x_gelu: vision -> LM width, then LM -> LM twice (the intermediate width is the LM's)
        projector_type=projector,
        projector_intermediate_size=text.hidden_size if projector == "mlp3x_gelu" else None,
        **layout,
    )
    rules = _longllava_rules(config.text_config, extra_rows)
    if extra_rows:
        notes.append(f"added {extra_rows} zero row(s) to the embeddings and LM head for the new placeholder tokens.")
    recipe = _Recipe(config, rules, notes=notes, description="LongLLaVA (llava_jamba, FreedomIntelligence/LongLLaVA)")
    if tokenizer is not None:
        recipe.tokenizer = tokenizer
        recipe.image_processor = _longllava_image_processor(raw, vision, anyres, notes)
        # LongLLaVA's chat code reads a video file at one frame a second, at most 128 frames (spread evenly over the
        # video when it is longer); frames passed in memory are used as given.
        recipe.video_sampling = {"sampling": "fps", "fps": 1.0, "max_frames": 128}
        recipe.chat_template = LONGLLAVA_CHAT_TEMPLATE
        if layout["anyres_merge"] == "flat":
            # LongLLaVA's own prompts: <img>...</img> around images, <vid>/<t> for videos, written as plain text;
            # videos exactly as its chat code writes them (the 'longllava-chat' layout, docs/converting.md).
            recipe.image_layout = "longllava"
            recipe.video_layout = "longllava-chat"
            recipe.layout_markers = "text"
            notes.append("prompts use the 'longllava' image layout and the 'longllava-chat' video layout with "
                         "plain-text markers, as LongLLaVA's chat code writes them (<img>, </img>, <vid>, <t>, </vid> "
                         "are ordinary text there; its video prompt ends in '<img><image></img</vid>').")
        else:
            recipe.video_layout = "plain"
            notes.append(f"mm_patch_merge_type={merge!r} stitches tiles spatially, which the 'longllava' layout "
                         "(global view + whole tiles per row) cannot describe: images and videos use the llava layout, "
                         "without <img>/<vid> markers.")
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        eos = eos if isinstance(eos, int) and eos != tokenizer.unk_token_id else None
        recipe.generation_config = _generation_config(folder, config.text_config, [image_id, video_id], eos)
    return recipe


def _longllava_image_processor(raw: Mapping[str, Any], vision: Mapping[str, Any], anyres: bool, notes: list[str]
                               ) -> Any:
    """The tower's own preprocessing (its folder's preprocessor_config.json, as the reference loads it; else the
    encoder's standard one), with LongLLaVA's `image_aspect_ratio`: "pad" pads to a square with the mean colour."""
    from .image_processing_hybrid_vlm import HybridVLMImageProcessor

    overrides: dict[str, Any] = {}
    if anyres:
        pinpoints = raw.get("image_grid_pinpoints")
        overrides["image_grid_pinpoints"] = ast.literal_eval(pinpoints) if isinstance(pinpoints, str) else pinpoints
    elif raw.get("image_aspect_ratio", "pad") == "pad":  # absent: the reference's `process_images` pads too
        overrides["image_aspect_ratio"] = "pad"
        notes.append("image_aspect_ratio='pad': images are padded to a centred square with the mean colour before "
                     "resizing, as LongLLaVA's expand2square does.")
    tower = Path(str(raw.get("mm_vision_tower") or raw.get("vision_tower") or ""))
    if tower.parts and _source_image_processor_dict(tower) is not None:
        notes.append(f"image preprocessing read from the tower folder {tower}.")
        return _image_processor_from_source(tower, vision, notes, **overrides)
    return HybridVLMImageProcessor.from_vision_config(vision, **overrides)


def _add_placeholder_tokens(tokenizer: Any, notes: list[str]) -> tuple[int, int]:
    """LongLLaVA spliced images in by id (-200) and never had an <image> token: add <image>/<video> specials."""
    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        notes.append(f"added placeholder token(s) {missing} to the tokenizer.")
    return tokenizer.convert_tokens_to_ids("<image>"), tokenizer.convert_tokens_to_ids("<video>")


def _longllava_rules(text_config: Any, extra_rows: int) -> list[Rule]:
    """LongLLaVA (vendored AI21 Jamba + LLaVA) names -> ours.

    The vendored Jamba gives every layer a `moe` block; a dense layer's is a single expert without router
    (`moe.experts.0.*`), which transformers' Jamba calls `feed_forward.*`.
    """
    experts = _layers_num_experts(text_config)

    def feed_forward(match: re.Match[str]) -> str | None:
        layer, expert, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        if layer >= len(experts):
            return None
        if experts[layer] > 1:
            return f"model.language_model.layers.{layer}.feed_forward.experts.{expert}.{rest}"
        if expert != 0:
            return None  # a dense layer has exactly one expert: anything else is a leftover to report
        return f"model.language_model.layers.{layer}.feed_forward.{rest}"

    pad = _pad_rows(extra_rows) if extra_rows else None
    lm = r"model.language_model.layers.\1"
    return _common_drop_rules() + [
        Rule.rename("vision tower (LLaVA's CLIPVisionTower wrapper removed)",
                    r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
        Rule.rename("projector mm_projector.0 -> linear_1", r"^model\.mm_projector\.0\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_1.\1"),
        Rule.rename("projector mm_projector.2 -> linear_2", r"^model\.mm_projector\.2\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_2.\1"),
        Rule.rename("projector mm_projector.4 -> linear_3 (mlp3x_gelu)", r"^model\.mm_projector\.4\.(weight|bias)$",
                    r"model.multi_modal_projector.linear_3.\1"),
        Rule.rename("AnyRes image newline", r"^model\.image_newline$", "model.image_newline"),
        Rule.rename("embeddings", r"^model\.embed_tokens\.weight$", "model.language_model.embed_tokens.weight", pad),
        Rule.rename("final norm", r"^model\.final_layernorm\.weight$", "model.language_model.final_layernorm.weight"),
        Rule.rename("moe.experts.{j} -> feed_forward[.experts.{j}]",
                    r"^model\.layers\.(\d+)\.moe\.experts\.(\d+)\.(.+)$", feed_forward),
        Rule.rename("moe.router -> feed_forward.router", r"^model\.layers\.(\d+)\.moe\.router\.weight$",
                    lm + ".feed_forward.router.weight"),
        Rule.rename("pre_moe_layernorm -> pre_ff_layernorm", r"^model\.layers\.(\d+)\.pre_moe_layernorm\.weight$",
                    lm + ".pre_ff_layernorm.weight"),
        Rule.rename("mamba.B_layernorm -> mamba.b_layernorm", r"^model\.layers\.(\d+)\.mamba\.B_layernorm\.weight$",
                    lm + ".mamba.b_layernorm.weight"),
        Rule.rename("mamba.C_layernorm -> mamba.c_layernorm", r"^model\.layers\.(\d+)\.mamba\.C_layernorm\.weight$",
                    lm + ".mamba.c_layernorm.weight"),
        Rule.rename("Jamba layer (same name)",
                    r"^model\.layers\.(\d+)\.((?:self_attn|mamba)\.[^.]+(?:\.weight|\.bias)?|input_layernorm\.weight)$",
                    lm + r".\2"),
        Rule.rename("LM head", r"^lm_head\.weight$", "lm_head.weight", pad),
    ]


def _layers_num_experts(text_config: Any) -> list[int]:
    """Experts per layer the way transformers' Jamba lays them out (1 = a dense MLP)."""
    period, offset = text_config.expert_layer_period, text_config.expert_layer_offset
    return [
        text_config.num_experts if i % period == offset else 1 for i in range(text_config.num_hidden_layers)
    ]


# -- Vamba


_VAMBA_KEYS = re.compile(r"(^|\.)layers\.\d+\.(cross_attn\.|alpha$|vision_mixer\.)")
_VAMBA_VISION = re.compile(r"^(?:model\.)?visual\.")
_QWEN2_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def vamba_language_rules() -> list[Rule]:
    """Vamba's language side (a `qwen2_vl` checkpoint's `model.*` + `lm_head`) -> HybridVLM's Vamba decoder.

    Layer weights keep their names under ``model.language_model.``; Vamba's ``alpha`` (stored as shape [1]) becomes
    the scalar HybridVLM keeps. The vision side (``visual.*``) is left to the full converter (`_vamba_rules`).
    """
    return [
        Rule.drop("rotary inv_freq buffer (recomputed from the config on load)", r"\.rotary_emb\.inv_freq$"),
        Rule.rename("mixing weight alpha ([1] -> scalar)", r"^model\.(?:language_model\.)?layers\.(\d+)\.alpha$",
                    r"model.language_model.layers.\1.alpha", _to_scalar),
        Rule.rename("language model (newer qwen2_vl layout)", r"^model\.language_model\.(.+)$",
                    r"model.language_model.\1"),
        Rule.rename("language model", r"^model\.(?!visual\.)(.+)$", r"model.language_model.\1"),
        Rule.rename("LM head", r"^lm_head\.weight$", "lm_head.weight"),
    ]


def _vamba_language_plan(names: Iterable[str], target_names: Container[str] | None) -> MappingPlan:
    names = [n for n in names if not _VAMBA_VISION.search(n)]
    plan = plan_mapping(names, vamba_language_rules(), known_targets=target_names)
    if plan.leftovers:
        raise ConversionError(f"Vamba language side: no rule (or no target weight) for {plan.leftovers[:10]}.")
    return plan


def map_vamba_language_keys(names: Iterable[str], target_names: Container[str] | None = None) -> dict[str, str]:
    """Source name -> HybridVLM name for Vamba's language side; vision (``visual.*``) names are left out, any other
    unmatched name raises (it would be a trained weight lost). With `target_names` (a HybridVLM Vamba model's
    state-dict keys) a name that has no counterpart there raises too."""
    plan = _vamba_language_plan(names, target_names)
    return {source: target for source, (target, _) in plan.mapped.items()}


def convert_vamba_language_state_dict(
    state: Mapping[str, torch.Tensor], target_names: Container[str] | None = None
) -> dict[str, torch.Tensor]:
    """Vamba's language-side tensors under HybridVLM's names (``visual.*`` skipped, buffers dropped).

    Load the result into a HybridVLM with ``decoder_type="vamba"`` and a matching Qwen2 ``text_config`` with
    ``load_state_dict(..., strict=False)``; the vision tower stays to be provided.
    """
    plan = _vamba_language_plan(state, target_names)
    out = {}
    for source, (target, rule) in plan.mapped.items():
        tensor = state[source]
        out[target] = rule.transform(tensor) if rule.transform is not None else tensor
    return out


def _weight_names(folder: Path) -> list[str]:
    for index_name in (INDEX_FILE, "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return list(json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {})
    names: list[str] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names.extend(handle.keys())
    return names


def detect_unconverted_vamba(folder_or_config: Any) -> bool:
    """True for a Vamba checkpoint in its released form: model_type qwen2_vl plus `cross_attn`/`alpha`/
    `vision_mixer` weights (a folder, its config.json as a dict, or a loaded config whose `_name_or_path` is a
    local folder). Stock transformers loads such a folder as Qwen2-VL and silently drops those weights."""
    from transformers import PretrainedConfig

    folder: Path | None = None
    if isinstance(folder_or_config, (str, os.PathLike)):
        folder = Path(folder_or_config)
        if not folder.exists():
            raise FileNotFoundError(f"detect_unconverted_vamba: no such folder: {folder}")
        if not (folder / "config.json").is_file():
            raise ValueError(f"detect_unconverted_vamba: {folder} holds no config.json: not a checkpoint folder.")
        config = _read_json(folder / "config.json")
    elif isinstance(folder_or_config, PretrainedConfig):
        config = folder_or_config.to_dict()
        name = getattr(folder_or_config, "_name_or_path", "") or ""
        folder = Path(name) if name and Path(name).is_dir() else None
    elif isinstance(folder_or_config, Mapping):
        config = dict(folder_or_config)
    else:
        raise TypeError(f"expected a folder, a config dict or a PretrainedConfig, got {type(folder_or_config)}.")
    if config.get("model_type") not in _QWEN2_VL_TYPES:
        return False
    if any("vamba" in str(a).lower() for a in config.get("architectures") or []):
        return True
    if folder is None:
        return False
    return any(_VAMBA_KEYS.search(name) for name in _weight_names(folder))


def vamba_conversion_message(folder: Any) -> str:
    """What to tell someone about to load an unconverted Vamba checkpoint."""
    return (
        f"{folder} is a Vamba checkpoint (model_type qwen2_vl with per-layer cross_attn/alpha/vision_mixer weights). "
        "Stock transformers loads it as Qwen2-VL and silently drops those weights, so its outputs would be wrong. "
        "Convert it to HybridVLM instead: `hybrid-vlm convert SRC DST --from vamba` (or "
        "hybrid_vlm.convert.convert(SRC, DST, 'vamba'))."
    )


def check_unconverted_vamba(folder_or_config: Any) -> None:
    """Raise `UnconvertedVambaCheckpointError` with the advice above when `detect_unconverted_vamba` says so."""
    if detect_unconverted_vamba(folder_or_config):
        where = getattr(folder_or_config, "_name_or_path", None) or folder_or_config
        raise UnconvertedVambaCheckpointError(vamba_conversion_message(where))


def _vamba_rules() -> list[Rule]:
    """Vamba's names -> ours: the ViT + merger under ``visual.`` become the Qwen2-VL vision tower (same names below
    it), the language side as in `vamba_language_rules`."""
    return [
        Rule.drop("rotary inv_freq buffer of the vision tower (recomputed from the config on load)",
                  r"^(?:model\.)?visual\.rotary_pos_emb\.inv_freq$"),
        Rule.rename("Qwen2-VL vision tower + merger", r"^(?:model\.)?visual\.(.+)$", r"model.vision_tower.\1"),
        *vamba_language_rules(),
    ]


def _first(entries: Mapping[str, SourceTensor], pattern: str) -> SourceTensor | None:
    compiled = re.compile(pattern)
    return next((entry for name, entry in sorted(entries.items()) if compiled.search(name)), None)


def _vamba_options(raw: Mapping[str, Any], entries: Mapping[str, SourceTensor], hidden: int, notes: list[str]
                   ) -> dict[str, Any]:
    """VambaOptions from Vamba's config flags and its Mamba-2 weights' shapes (the shapes decide; the config's
    `vision_mamba_mixer_config` gives what shapes cannot: the group count and the chunk size)."""
    mixer = raw.get("vision_mamba_mixer_config") or {}
    layer = r"^model\.(?:language_model\.)?layers\.\d+\."
    layer_norm = bool(raw.get("cross_attn_use_layer_norm", False))
    options: dict[str, Any] = {
        "mix": "alpha" if _has_name(entries, layer + r"alpha$") else "sum",
        # The reference replaces the visual stream by its input-normed states when this flag is set.
        "cross_attention_kv_norm": layer_norm,
        "visual_stream_norm": layer_norm,
        # Every text token sees all visual tokens of its sample; text positions count text tokens only; the visual
        # pre-norm is mamba-ssm's RMSNorm with its default eps.
        "cross_attention_visibility": "all",
        "text_positions": "text",
        "ssm_norm_eps": 1e-5,
    }
    a_log = _first(entries, layer + r"vision_mixer\.mixer\.A_log$")
    if a_log is None:
        options["visual_mixer"] = "none"
        return options
    if len(a_log.shape) != 1:
        raise NotImplementedError("this Vamba checkpoint's visual SSM is not Mamba-2 (A_log is not per head).")
    if mixer.get("d_ssm") is not None or mixer.get("D_has_hdim") or mixer.get("norm_before_gate") or not mixer.get(
        "rmsnorm", True
    ):
        raise NotImplementedError(
            "this Vamba checkpoint's Mamba-2 uses d_ssm / D_has_hdim / norm_before_gate / no gated norm; HybridVLM's "
            "Mamba-2 is mamba-ssm's default block (Vamba's released setting)."
        )
    unsupported = {
        "norm_type": (mixer.get("norm_type", "rmsnorm"), "rmsnorm"),
        "dt_limit": (list(decode_special_floats(mixer.get("dt_limit", [0.0, math.inf]))), [0.0, math.inf]),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(
                f"this Vamba checkpoint's vision_mamba_mixer_config has {name}={value!r}; HybridVLM's visual Mamba-2 "
                f"block computes {name}={supported!r} only (Vamba's released setting)."
            )
    options["ssm_bias"] = _has_name(entries, layer + r"vision_mixer\.mixer\.in_proj\.bias$")
    options["ssm_conv_bias"] = _has_name(entries, layer + r"vision_mixer\.mixer\.conv1d\.bias$")
    norm = _first(entries, layer + r"vision_mixer\.mixer\.norm\.weight$")
    conv = _first(entries, layer + r"vision_mixer\.mixer\.conv1d\.weight$")
    if norm is None or conv is None:
        raise ConversionError("the Vamba checkpoint's vision_mixer lacks mixer.norm.weight or mixer.conv1d.weight.")
    heads, inner, conv_dim, d_conv = a_log.shape[0], norm.shape[0], conv.shape[0], conv.shape[-1]
    groups = int(mixer.get("ngroups", 1))
    d_state, rest = divmod(conv_dim - inner, 2 * groups)
    if rest or inner % heads or inner % hidden:
        raise ConversionError(
            f"the Vamba Mamba-2 shapes do not fit together (d_inner {inner}, heads {heads}, conv channels {conv_dim}, "
            f"groups {groups}, hidden {hidden})."
        )
    options.update(visual_mixer="mamba2", ssm_d_state=d_state, ssm_d_conv=d_conv, ssm_expand=inner // hidden,
                   ssm_head_dim=inner // heads, ssm_n_groups=groups, ssm_chunk_size=int(mixer.get("chunk_size", 256)))
    if mixer.get("hidden_dim") not in (None, hidden):
        notes.append(f"vision_mamba_mixer_config.hidden_dim {mixer.get('hidden_dim')} is not the LM width {hidden}.")
    return options


def _cobra_recipe(kind: str, folder: Path, reader: CheckpointReader, options: _Options) -> _Recipe:
    from .convert_cobra import cobra_recipe  # its own module: it needs the rules and helpers defined here

    return cobra_recipe(kind, folder, reader, options)


def _vamba_recipe(kind: str, folder: Path, reader: CheckpointReader, options: _Options) -> _Recipe:
    from .builders import qwen2vl_vamba_config
    from .qwen2vl_vision import qwen2_text_config, qwen2vl_vision_config

    raw = _check_model_type(folder, kind)
    entries = reader.tensors()
    if not any(_VAMBA_KEYS.search(name) for name in entries):
        raise ConversionError(
            f"{folder} is a plain Qwen2-VL checkpoint (no cross_attn/alpha/vision_mixer weights), not Vamba. Build a "
            "Vamba model from it with hybrid_vlm.build_vamba(folder), or load it with transformers."
        )
    notes: list[str] = []
    if not isinstance(raw.get("vision_config"), Mapping):
        raise ConversionError(f"{folder}/config.json has no vision_config for the Qwen2-VL vision tower.")
    vision = qwen2vl_vision_config({**raw["vision_config"], "model_type": "qwen2_vl_vision"})
    merger = _first(entries, r"^(?:model\.)?visual\.merger\.mlp\.2\.weight$")
    if merger is not None and merger.shape[0] != vision.hidden_size:
        notes.append(f"vision_config.hidden_size {vision.hidden_size} corrected to the merger's output width "
                     f"{merger.shape[0]} (the weights decide).")
        vision.hidden_size = merger.shape[0]
    text = qwen2_text_config(raw)
    vamba_options = _vamba_options(raw, entries, text["hidden_size"], notes)
    # The reference leaves cross-attention queries/keys unrotated unless this flag is set; with it, queries are
    # rotated at their text positions and keys by M-RoPE at each visual token's (t, h, w) in its grid.
    vamba_options["cross_attention_rope"] = bool(raw.get("cross_attn_use_position_embeddings", False))
    if vamba_options["cross_attention_rope"]:
        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        if isinstance(raw.get("text_config"), Mapping):
            rope = raw["text_config"].get("rope_scaling") or raw["text_config"].get("rope_parameters") or rope
        section = rope.get("mrope_section") if isinstance(rope, Mapping) else None
        if not section:
            raise ConversionError(
                f"{folder}/config.json sets cross_attn_use_position_embeddings=true but its rope_scaling has no "
                "mrope_section, which the reference's M-RoPE on the cross-attention keys needs."
            )
        vamba_options.update(cross_attention_key_positions="grid", mrope_section=[int(v) for v in section])
    tie = "lm_head.weight" not in entries
    if tie and not raw.get("tie_word_embeddings", False):
        raise ConversionError("the source has no lm_head.weight and its config does not tie it to the embeddings.")
    config = qwen2vl_vamba_config(
        {**text, "model_type": "qwen2_vl", "vision_config": vision.to_dict(), "tie_word_embeddings": tie},
        vamba_options,
        image_token_id=raw.get("image_token_id", 151655), video_token_id=raw.get("video_token_id", 151656),
    )
    recipe = _Recipe(config, _vamba_rules(), notes=notes, description="Vamba (TIGER-AI-Lab/Vamba, qwen2_vl)")
    if vamba_options["mix"] == "sum":  # use_alpha_balancing=false: no alpha to load; ours is kept but unused
        recipe.filled = {f"model.language_model.layers.{i}.alpha": torch.tensor(0.5)
                         for i in range(int(text["num_hidden_layers"]))}
        notes.append("the source has no alpha (use_alpha_balancing=false): mix='sum' (SA + CA, as the reference); "
                     "the unused alpha weights are written as 0.5.")
    if _has_tokenizer(folder):
        _vamba_processor_parts(folder, recipe, vision)
    return recipe


def _vamba_processor_parts(folder: Path, recipe: _Recipe, vision: Any) -> None:
    """Tokenizer, processors, chat template and generation config that reproduce the reference's chat code.

    Prompt: Qwen2-VL ChatML with the default system prompt; each image/video becomes ``<|vision_start|>``, one
    ``<|image_pad|>``/``<|video_pad|>`` per visual token, ``<|vision_end|>`` (the reference has no pads: its visual
    tokens are not in the text; the model splits them out, so the text stream is the reference's). Pixels: Qwen2-VL's
    `smart_resize` with the source's min/max pixels, bicubic, its mean/std. Frames of a video file: Vamba's chat
    sampling (`vamba_middle`), an even count (two frames per temporal patch).
    """
    from .image_processing_hybrid_vlm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HybridVLMImageProcessor
    from .video_processing_hybrid_vlm import HybridVLMVideoProcessor

    config = recipe.config
    tokenizer = _load_tokenizer(folder)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (VAMBA_IMAGE_TOKEN, VAMBA_VIDEO_TOKEN)}
    for token, token_id in ids.items():
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ConversionError(
                f"the tokenizer in {folder} has no {token!r} token; Vamba's prompts need Qwen2-VL's special tokens "
                "(<|vision_start|>, <|vision_end|>, <|image_pad|>, <|video_pad|>)."
            )
    if config.image_token_id != ids[VAMBA_IMAGE_TOKEN] or config.video_token_id != ids[VAMBA_VIDEO_TOKEN]:
        recipe.notes.append(
            f"image/video token ids set to the tokenizer's {VAMBA_IMAGE_TOKEN} / {VAMBA_VIDEO_TOKEN} ids "
            f"{ids[VAMBA_IMAGE_TOKEN]} / {ids[VAMBA_VIDEO_TOKEN]} (config.json said {config.image_token_id} / "
            f"{config.video_token_id})."
        )
        config.image_token_id, config.video_token_id = ids[VAMBA_IMAGE_TOKEN], ids[VAMBA_VIDEO_TOKEN]
    saved = _source_image_processor_dict(folder) or {}
    patch = int(saved.get("patch_size", getattr(vision, "patch_size", 14)))
    merge = int(saved.get("merge_size", getattr(vision, "spatial_merge_size", 2)))
    if patch * merge != int(vision.patch_size) * int(vision.spatial_merge_size):
        raise ConversionError(
            f"preprocessor_config.json says patch {patch} x merge {merge}, but the vision tower has patch "
            f"{vision.patch_size} x merge {vision.spatial_merge_size}."
        )
    size = saved.get("size") if isinstance(saved.get("size"), dict) else {}
    min_pixels = saved.get("min_pixels", size.get("min_pixels", size.get("shortest_edge", 56 * 56)))
    max_pixels = saved.get("max_pixels", size.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)))
    if "min_pixels" not in saved:
        recipe.notes.append(f"the source saved no min/max pixels; using {min_pixels} / {max_pixels}.")
    frame_params: dict[str, Any] = dict(
        do_resize=True,
        size={"min_pixels": int(min_pixels), "max_pixels": int(max_pixels), "factor": patch * merge},
        resample=saved.get("resample", 3),  # bicubic
        do_center_crop=False,
        do_rescale=saved.get("do_rescale", True),
        rescale_factor=saved.get("rescale_factor", 1 / 255),
        do_normalize=saved.get("do_normalize", True),
        image_mean=saved.get("image_mean", OPENAI_CLIP_MEAN),
        image_std=saved.get("image_std", OPENAI_CLIP_STD),
        do_convert_rgb=saved.get("do_convert_rgb", True),
    )
    recipe.tokenizer = tokenizer
    recipe.image_processor = HybridVLMImageProcessor(**frame_params, anyres=False)
    recipe.processor_kwargs = {
        "image_token": VAMBA_IMAGE_TOKEN,
        "video_token": VAMBA_VIDEO_TOKEN,
        "video_processor": HybridVLMVideoProcessor(
            **frame_params,
            sampling="vamba_middle",
            num_frames=VAMBA_NUM_FRAMES,
            temporal_patch_size=int(saved.get("temporal_patch_size", vision.temporal_patch_size)),
        ),
    }
    recipe.image_layout = recipe.video_layout = "qwen2vl"
    recipe.layout_markers = "special"
    recipe.chat_template = VAMBA_CHAT_TEMPLATE
    # The reference generates with nothing suppressed (a generated pad is an ordinary token to it and to us).
    recipe.generation_config = _generation_config(folder, config.text_config, [])


_RECIPES: dict[str, Callable[[str, Path, CheckpointReader, _Options], _Recipe]] = {
    "llava": _llava_recipe,
    "llava-next": _llava_recipe,
    "llava-onevision": _llava_recipe,
    "longllava": _longllava_recipe,
    "cobra": _cobra_recipe,
    "vamba": _vamba_recipe,
}


# ---------------------------------------------------------------------------------------------------- checking


def _expected_weights(config: HybridVLMConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the target's weights as saved on disk, from the model built on the meta device.

    transformers 5 keeps some weights fused in memory (MoE experts) but saves them per expert, as 4.x does; the
    on-disk names are what both lines load, so those are what the converter writes.
    """
    from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    with torch.device("meta"):
        model = HybridVLMForConditionalGeneration(config)
    state = revert_weight_conversion(model, model.state_dict())
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _output_shape(rule: Rule, entry: SourceTensor) -> tuple[int, ...]:
    if rule.transform is None:
        return entry.shape
    return tuple(rule.transform(torch.empty(entry.shape, dtype=entry.dtype, device="meta")).shape)


def _check_plan(
    plan: MappingPlan, entries: Mapping[str, SourceTensor], expected: Mapping[str, tuple[int, ...]],
    optional: set[str],
) -> list[str]:
    """Every target weight produced exactly once, with the target's shape; returns the missing (optional) names."""
    problems: list[str] = []
    produced: dict[str, str] = {}
    for source, (target, rule) in plan.mapped.items():
        if target in produced:
            problems.append(f"{source!r} and {produced[target]!r} both map to {target!r}")
            continue
        produced[target] = source
        if target not in expected:
            problems.append(f"{source!r} maps to {target!r}, which the HybridVLM model does not have")
            continue
        shape = _output_shape(rule, entries[source])
        if shape != expected[target]:
            problems.append(f"{source!r} has shape {list(shape)} but {target!r} needs {list(expected[target])}")
    missing = [name for name in expected if name not in produced]
    required = [name for name in missing if name not in optional]
    if required:
        problems.append(f"{len(required)} HybridVLM weights have no source tensor: {required[:10]}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConversionError(f"the source does not map onto the HybridVLM model:\n  {shown}{more}")
    return missing


# ---------------------------------------------------------------------------------------------------- writing


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB"."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(value), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot read the size {value!r}; use bytes or e.g. '5GB', '500MB'.")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    power = " KMGT".index(unit) if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write one safetensors shard (the `format: pt` metadata transformers expects)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


class _ShardWriter:
    """Collects tensors into shards of at most `max_bytes` (a single larger tensor gets a shard of its own)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self._flush()
        self.current[name] = tensor.contiguous()
        self.current_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        name = f".shard-{len(self.shards):05d}.safetensors"
        _save_shard(self.current, self.folder / name)
        self.shards.append((name, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> list[str]:
        """Give the shards their final names and write the index (none for a single file)."""
        if self.current or not self.shards:
            self._flush()
        count = len(self.shards)
        if count == 1:
            os.replace(self.folder / self.shards[0][0], self.folder / SINGLE_FILE)
            return [SINGLE_FILE]
        weight_map: dict[str, str] = {}
        names = []
        for index, (temporary, tensors) in enumerate(self.shards, start=1):
            final = f"model-{index:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / temporary, self.folder / final)
            weight_map.update(dict.fromkeys(tensors, final))
            names.append(final)
        index_data = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n", encoding="utf-8")
        return names


def _cast(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast floating tensors to `dtype`; fp32 SSM parameters (A_log, D, dt_bias) stay fp32."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    if name.rsplit(".", 1)[-1] in SSM_FP32_PARAMETERS and tensor.dtype == torch.float32:
        return tensor
    return tensor.to(dtype)


def _progress(total: int, enabled: bool, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tensor", desc=description, disable=not enabled)


def _model_card(report: ConversionReport, recipe: _Recipe) -> str:
    config = recipe.config
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(report.rule_counts.items()))
    dropped = "\n".join(f"- `{source}`: {reason}" for source, reason in report.dropped.items()) or "- none"
    notes = "\n".join(f"- {note}" for note in report.notes) or "- none"
    return f"""---
library_name: transformers
tags:
- hybrid_vlm
- image-text-to-text
---

# HybridVLM conversion of `{Path(report.source).name}`

Converted from a {recipe.description} checkpoint with `hybrid-vlm convert --from {report.kind}`
(`hybrid_vlm.convert`). Load it with the package installed:

```python
import hybrid_vlm  # registers the Auto classes
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{Path(report.destination).name}")
processor = AutoProcessor.from_pretrained("{Path(report.destination).name}")
```

- vision tower: `{config.vision_config.model_type}`, language model: `{config.text_config.model_type}`,
  decoder: `{config.decoder_type}`, dtype: `{report.dtype}`
- {len(report.mapped)} tensors ({report.total_bytes / 1e9:.3f} GB) mapped, every one bit-exact at its new name
  (only dtype casts and the layout changes listed below), {len(report.dropped)} dropped by a named rule.

## Mapping rules

| rule | tensors |
|---|---|
{rows}

## Dropped tensors

{dropped}

## Notes

{notes}
"""


def _move_into_place(temporary: Path, destination: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing destination is only replaced with `overwrite`, and is
    kept until the new one is in place."""
    if destination.exists() or destination.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{destination} exists; pass overwrite=True (--overwrite) to replace it.")
        backup = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
        os.replace(destination, backup / "old")
        os.replace(temporary, destination)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(temporary, destination)


def _as_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}.")
    return names[str(dtype)]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------------- convert


def convert(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    kind: str,
    *,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_unused: Sequence[str] = (),
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    vision_config: Any = None,
    vision_towers: Sequence[Any] | None = None,
) -> ConversionReport:
    """Convert the checkpoint folder `src_dir` of the given `kind` into a HybridVLM folder `dst_dir`.

    Args:
        kind: one of `KINDS`: "llava", "llava-next" (transformers checkpoints of either line, any LM),
            "longllava" (FreedomIntelligence's llava_jamba), "vamba" (TIGER-AI-Lab's qwen2_vl + cross-attention and
            Mamba-2 layers, with Qwen2-VL's vision tower), "cobra" (a Prismatic run folder; needs `vision_towers`);
            "llava-onevision" (anyres_max_N cap and pooled videos become config fields).
        dtype: cast floating weights (fp32 SSM parameters stay fp32); None keeps the source's.
        overwrite: replace an existing `dst_dir` (only once the new folder is complete).
        progress: show a tqdm progress bar.
        allow_unused: regexes of source tensors that may be dropped although no rule covers them; they are listed
            in the report. Without them, any uncovered tensor fails the conversion.
        max_shard_size: largest safetensors shard ("5GB", bytes, ...).
        vision_config: LongLLaVA: the CLIP tower's config (dict, config or folder) when it cannot be derived from
            `mm_vision_tower` and the weights.
        vision_towers: Cobra: (DINOv2 folder, SigLIP folder) in transformers format; Cobra runs do not save their
            frozen vision encoders.

    Returns:
        a `ConversionReport`; the folder holds config.json, safetensors weights (+ index), the processor (when the
        source has a tokenizer), generation_config.json and a README.md model card.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {list(KINDS)}.")
    source, destination = Path(src_dir).resolve(), Path(dst_dir).resolve()
    if not source.is_dir():
        raise ConversionError(f"{source} is not a folder; pass the checkpoint's local directory.")
    if destination == source or source in destination.parents:
        raise ConversionError("the destination must be outside the source folder.")
    if (destination.exists() or destination.is_symlink()) and not overwrite:
        raise FileExistsError(f"{destination} exists; pass overwrite=True (--overwrite) to replace it.")
    target_dtype = _as_dtype(dtype)
    max_bytes = parse_size(max_shard_size)
    reader = CheckpointReader(source)
    try:
        entries = reader.tensors()
        options = _Options(vision_config=vision_config, vision_towers=vision_towers)
        recipe = _RECIPES[kind](kind, source, reader, options)
        entries = reader.tensors()  # a recipe may add sources (Cobra's vision encoders)
        config = recipe.config
        expected = _expected_weights(config)
        plan = plan_mapping(entries, recipe.rules, allow_unused, known_targets=expected)
        if plan.leftovers:
            shown = ", ".join(plan.leftovers[:20]) + (" ..." if len(plan.leftovers) > 20 else "")
            raise ConversionError(
                f"{len(plan.leftovers)} source tensor(s) match no rule (or no weight of the HybridVLM model) and would "
                f"be lost: {shown}. If they are truly not part of the model, pass allow_unused=[regex] "
                "(CLI: --allow-unused REGEX) to drop them."
            )
        tied_head = {"lm_head.weight"} if config.tie_word_embeddings else set()
        missing = _check_plan(plan, entries, expected, tied_head | set(recipe.filled))
        first_float = next((e.dtype for e in entries.values() if e.dtype.is_floating_point), torch.float32)
        out_dtype = target_dtype or first_float
        report = ConversionReport(
            kind=kind, source=str(source), destination=str(destination), dropped=dict(plan.dropped),
            tied=[name for name in missing if name in tied_head], notes=reader.notes + recipe.notes,
            dtype=_dtype_name(out_dtype),
        )
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.converting-"))
        try:
            _write(temporary, reader, plan, recipe, report, target_dtype, max_bytes, progress)
            config.dtype = out_dtype
            config.architectures = ["HybridVLMForConditionalGeneration"]
            config.save_pretrained(str(temporary))
            _write_processor(temporary, recipe, report)
            if recipe.generation_config is not None:
                recipe.generation_config.save_pretrained(str(temporary))
            (temporary / "README.md").write_text(_model_card(report, recipe), encoding="utf-8")
            _move_into_place(temporary, destination, overwrite)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    finally:
        reader.close()
    return report


def _write(
    folder: Path, reader: CheckpointReader, plan: MappingPlan, recipe: _Recipe, report: ConversionReport,
    dtype: torch.dtype | None, max_bytes: int, progress: bool,
) -> None:
    writer = _ShardWriter(folder, max_bytes)
    with _progress(len(plan.mapped), progress, f"converting {report.kind}") as bar:
        for source, (target, rule) in plan.mapped.items():
            tensor = reader.load(source)
            if rule.transform is not None:
                tensor = rule.transform(tensor)
            writer.add(target, _cast(target, tensor, dtype))
            report.mapped[source] = target
            report.rule_counts[rule.name] = report.rule_counts.get(rule.name, 0) + 1
            bar.update(1)
    for name, tensor in recipe.filled.items():
        writer.add(name, _cast(name, tensor, dtype))
        report.rule_counts["filled: not in the source"] = report.rule_counts.get("filled: not in the source", 0) + 1
    report.shards = writer.finish()
    report.num_tensors = len(report.mapped)
    report.total_bytes = writer.total_bytes
    for reason in report.dropped.values():
        report.rule_counts[f"dropped: {reason}"] = report.rule_counts.get(f"dropped: {reason}", 0) + 1


def _write_processor(folder: Path, recipe: _Recipe, report: ConversionReport) -> None:
    if recipe.tokenizer is None:
        report.notes.append("the source has no tokenizer: only the model was written (add a processor with "
                            "HybridVLMProcessor.from_model_config and save it into the folder).")
        return
    from .processing_hybrid_vlm import HybridVLMProcessor
    from .video_processing_hybrid_vlm import HybridVLMVideoProcessor

    layout = {"video_layout": recipe.video_layout, "layout_markers": recipe.layout_markers}
    if recipe.image_layout is not None:
        layout["image_layout"] = recipe.image_layout
    video_processor = None
    if recipe.video_sampling and recipe.image_processor is not None:
        video_processor = HybridVLMVideoProcessor.from_image_processor(recipe.image_processor, **recipe.video_sampling)
    layout.update(recipe.processor_kwargs)
    video_processor = layout.pop("video_processor", video_processor)
    processor = HybridVLMProcessor.from_model_config(
        recipe.config, recipe.tokenizer, image_processor=recipe.image_processor, video_processor=video_processor,
        chat_template=recipe.chat_template, **layout,
    )
    processor.save_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------------- CLI


def add_convert_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add `convert SRC DST --from KIND` to the `hybrid-vlm` command's subparsers."""
    parser = subparsers.add_parser(
        "convert", help=f"convert a checkpoint folder ({', '.join(KINDS)}) into a HybridVLM folder",
        description="Convert a local checkpoint folder into a native HybridVLM folder (see docs/converting.md).",
    )
    parser.add_argument("src", help="the source checkpoint folder")
    parser.add_argument("dst", help="the HybridVLM folder to write (must not exist unless --overwrite)")
    parser.add_argument("--from", dest="kind", required=True, choices=KINDS, help="what the source is")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="cast floating weights (default: keep the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST once the new folder is complete")
    parser.add_argument("--allow-unused", action="append", default=[], metavar="REGEX",
                        help="source tensors matching REGEX may be dropped (listed in the report); repeatable")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest weight file (default 5GB)")
    parser.add_argument("--vision-config", default=None,
                        help="LongLLaVA: the vision tower's config.json or folder, if it cannot be derived")
    parser.add_argument("--vision-towers", nargs=2, default=None, metavar=("DINOV2_DIR", "SIGLIP_DIR"),
                        help="Cobra: transformers-format folders of its two (frozen, unsaved) vision encoders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    """Run the `convert` subcommand; 0 on success, 1 when the source cannot be converted, 2 when unsupported."""
    try:
        report = convert(
            args.src, args.dst, args.kind, dtype=args.dtype, overwrite=args.overwrite,
            progress=not args.no_progress, allow_unused=args.allow_unused, max_shard_size=args.max_shard_size,
            vision_config=args.vision_config, vision_towers=args.vision_towers,
        )
    except NotImplementedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConversionError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
