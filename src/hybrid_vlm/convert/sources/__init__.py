"""The source kinds `convert` knows (`hybrid-vlm convert --from KIND`): ONE table, read by the engine and the CLI.

Each kind's recipe (target config, mapping rules, processor pieces) is `build_recipe` in its module here; a module may
serve several kinds (transformers' LLaVA, LLaVA-NeXT and LLaVA-OneVision share one). The table names the module
rather than importing it, so reading the table (the CLI's parser, `hybrid-vlm --help`) loads no torch; the engine
imports a kind's module when it converts one.

Adding a converter kind: a module here with `build_recipe(kind, folder, reader, options) -> Recipe` (see
`hybrid_vlm.convert.common`), and one row below.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotation only: the recipes' module imports torch
    from ..common import RecipeBuilder

__all__ = ["KINDS", "SOURCE_KINDS", "SourceKind", "kind_for_model_type", "recipe_builder"]


@dataclass(frozen=True)
class SourceKind:
    """One `--from` choice."""

    name: str
    module: str  # the module of this package whose `build_recipe` converts it
    model_type: str | None  # what its config.json declares (None: not a transformers config, e.g. a Cobra run)
    description: str


SOURCE_KINDS: dict[str, SourceKind] = {
    kind.name: kind
    for kind in (
        SourceKind("llava", "llava", "llava", "transformers LLaVA checkpoints of either line, any LM"),
        SourceKind("llava-next", "llava", "llava_next", "transformers LLaVA-NeXT checkpoints (AnyRes)"),
        SourceKind("llava-onevision", "llava", "llava_onevision",
                   "transformers LLaVA-OneVision checkpoints (anyres_max_N and pooled videos become config fields)"),
        SourceKind("longllava", "longllava", "llava_jamba", "FreedomIntelligence's LongLLaVA (llava_jamba)"),
        SourceKind("vamba", "vamba", "qwen2_vl",
                   "TIGER-AI-Lab's Vamba (qwen2_vl with cross-attention and Mamba-2 layers, Qwen2-VL's vision tower)"),
        SourceKind("cobra", "cobra", None, "a Cobra (Prismatic) run folder; needs its two frozen vision encoders"),
    )
}
KINDS = tuple(SOURCE_KINDS)


def kind_for_model_type(model_type: Any) -> str | None:
    """The kind whose checkpoints declare `model_type` (to tell someone which `--from` their folder needs)."""
    return next((kind.name for kind in SOURCE_KINDS.values() if kind.model_type == model_type), None)


def recipe_builder(kind: str) -> RecipeBuilder:
    """The `build_recipe` function of `kind` (its module is imported here, on first use)."""
    return import_module(f"{__name__}.{SOURCE_KINDS[kind].module}").build_recipe
