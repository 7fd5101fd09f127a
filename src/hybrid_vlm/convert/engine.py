"""Convert released checkpoints into native HybridVLM folders (`hybrid-vlm convert SRC DST --from KIND`).

Why a converter and not a loader hook: the papers' checkpoints use names from vendored 2024 code (LongLLaVA's Jamba),
declare a model type that stock transformers loads *silently wrong* (Vamba), or come from transformers'
own LLaVA classes whose layout changed between releases. Converting once into our layout gives a folder that loads
with the Auto classes on both transformers lines, and lets us check every tensor on the way.

How it works, in four steps, so that nothing is ever half-written or silently lost:

1. **List** the source tensors (names, shapes, dtypes) from the safetensors headers or a memory-mapped torch file,
   without reading their data (`reader`).
2. **Plan**: every source name goes through the kind's ordered list of named rules (its recipe, `sources/`); a rule
   either renames it (optionally with a shape-only transform) or drops it *with a reason* (buffers such as
   ``position_ids``). A name no rule covers is a leftover: the conversion fails and lists it unless
   ``allow_unused=[regex]`` names it (`rules`).
3. **Check** the plan against the target model built on the meta device: every HybridVLM weight must be produced
   exactly once with the right shape (so a wrong config fails here, before any byte is written).
4. **Stream**: tensors are read one at a time, transformed, cast and written into size-limited safetensors shards in
   a temporary folder next to ``dst_dir``, which is renamed into place only when config, processor, generation
   config and model card are complete (`writer`, `report`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..compat import revert_weight_conversion
from ..configuration_hybrid_vlm import HybridVLMConfig
from ..modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from ..processing_hybrid_vlm import HybridVLMProcessor
from ..video_processing_hybrid_vlm import HybridVLMVideoProcessor
from .common import Recipe, read_json
from .errors import ConversionError
from .options import DEFAULT_MAX_SHARD_SIZE, ConvertOptions
from .reader import CheckpointReader, SourceTensor
from .report import ConversionReport, conversion_model_card
from .rules import MappingPlan, Rule, plan_mapping
from .sources import KINDS, SOURCE_KINDS, kind_for_model_type, recipe_builder
from .writer import ShardWriter, cast_weight, move_into_place, parse_size

__all__ = ["check_plan", "convert", "expected_weights"]


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
        kind: what the source is, one of `KINDS` ("llava", "llava-next", "llava-onevision", "longllava", "vamba",
            "cobra"; `hybrid_vlm.convert.sources.SOURCE_KINDS` describes each).
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
        options = ConvertOptions(vision_config=vision_config, vision_towers=vision_towers)
        _check_model_type(source, kind)
        recipe = recipe_builder(kind)(kind, source, reader, options)
        entries = reader.tensors()  # a recipe may add sources (Cobra's vision encoders)
        config = recipe.config
        expected = expected_weights(config)
        plan = plan_mapping(entries, recipe.rules, allow_unused, known_targets=expected)
        if plan.leftovers:
            shown = ", ".join(plan.leftovers[:20]) + (" ..." if len(plan.leftovers) > 20 else "")
            raise ConversionError(
                f"{len(plan.leftovers)} source tensor(s) match no rule (or no weight of the HybridVLM model) and would "
                f"be lost: {shown}. If they are truly not part of the model, pass allow_unused=[regex] "
                "(CLI: --allow-unused REGEX) to drop them."
            )
        tied_head = {"lm_head.weight"} if config.tie_word_embeddings else set()
        missing = check_plan(plan, entries, expected, tied_head | set(recipe.filled))
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
            card = conversion_model_card(report, recipe.config, recipe.description)
            (temporary / "README.md").write_text(card, encoding="utf-8")
            move_into_place(temporary, destination, overwrite)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    finally:
        reader.close()
    return report


def _check_model_type(folder: Path, kind: str) -> None:
    """The source's config.json declares the model type of `kind` (else the error names the kind it needs)."""
    expected = SOURCE_KINDS[kind].model_type
    if expected is None:
        return
    model_type = read_json(folder / "config.json").get("model_type")
    if model_type != expected:
        hint = kind_for_model_type(model_type)
        raise ConversionError(
            f"{folder} holds a {model_type!r} checkpoint, not {expected!r}"
            + (f"; convert it with --from {hint}." if hint else ".")
        )


def expected_weights(config: HybridVLMConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the target's weights as saved on disk, from the model built on the meta device.

    transformers 5 keeps some weights fused in memory (MoE experts) but saves them per expert, as 4.x does; the
    on-disk names are what both lines load, so those are what the converter writes.
    """
    with torch.device("meta"):
        model = HybridVLMForConditionalGeneration(config)
    state = revert_weight_conversion(model, model.state_dict())
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _output_shape(rule: Rule, entry: SourceTensor) -> tuple[int, ...]:
    if rule.transform is None:
        return entry.shape
    return tuple(rule.transform(torch.empty(entry.shape, dtype=entry.dtype, device="meta")).shape)


def check_plan(
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


def _write(
    folder: Path, reader: CheckpointReader, plan: MappingPlan, recipe: Recipe, report: ConversionReport,
    dtype: torch.dtype | None, max_bytes: int, progress: bool,
) -> None:
    writer = ShardWriter(folder, max_bytes)
    with _progress(len(plan.mapped), progress, f"converting {report.kind}") as bar:
        for source, (target, rule) in plan.mapped.items():
            tensor = reader.load(source)
            if rule.transform is not None:
                tensor = rule.transform(tensor)
            writer.add(target, cast_weight(target, tensor, dtype))
            report.mapped[source] = target
            report.rule_counts[rule.name] = report.rule_counts.get(rule.name, 0) + 1
            bar.update(1)
    for name, tensor in recipe.filled.items():
        writer.add(name, cast_weight(name, tensor, dtype))
        report.rule_counts["filled: not in the source"] = report.rule_counts.get("filled: not in the source", 0) + 1
    report.shards = writer.finish()
    report.num_tensors = len(report.mapped)
    report.total_bytes = writer.total_bytes
    for reason in report.dropped.values():
        report.rule_counts[f"dropped: {reason}"] = report.rule_counts.get(f"dropped: {reason}", 0) + 1


def _write_processor(folder: Path, recipe: Recipe, report: ConversionReport) -> None:
    if recipe.tokenizer is None:
        report.notes.append("the source has no tokenizer: only the model was written (add a processor with "
                            "HybridVLMProcessor.from_model_config and save it into the folder).")
        return
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


def _progress(total: int, enabled: bool, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tensor", desc=description, disable=not enabled)


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
