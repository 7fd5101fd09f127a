"""Converters from released checkpoints to native HybridVLM folders, and `build_vamba`.

Layout (each module one step or one source kind):

- `engine`: `convert()`, the four steps (list, plan, check, stream) over a kind's recipe;
- `reader` (list and read source tensors), `rules` (named rename/drop rules and the plan), `writer` (shards, index,
  atomic move), `report` (what was done, the model card), `errors`, `options`;
- `common`: the `Recipe` a kind hands to the engine and the helpers kinds share;
- `sources`: the table of kinds (`--from KIND`), one module per kind (`llava`, `longllava`, `vamba`, `cobra`);
- `build`: `build_vamba`, a Vamba model initialised from a LLaVA-style or Qwen2-VL model;
- `cli`: the `hybrid-vlm convert` subcommand.

The names below are imported on first use, so that `import hybrid_vlm.convert.cli` (the command line's parser) loads
no torch.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# public name -> the module of this package that defines it
_EXPORTS = {
    "CheckpointReader": ".reader",
    "ConversionError": ".errors",
    "ConversionReport": ".report",
    "ConvertOptions": ".options",
    "DEFAULT_MAX_SHARD_SIZE": ".options",
    "KINDS": ".sources",
    "MappingPlan": ".rules",
    "Recipe": ".common",
    "Rule": ".rules",
    "SOURCE_KINDS": ".sources",
    "SourceTensor": ".reader",
    "UnconvertedVambaCheckpointError": ".sources.vamba",
    "add_convert_subcommand": ".cli",
    "build_vamba": ".build",
    "check_unconverted_vamba": ".sources.vamba",
    "convert": ".engine",
    "convert_vamba_language_state_dict": ".sources.vamba",
    "detect_unconverted_vamba": ".sources.vamba",
    "map_vamba_language_keys": ".sources.vamba",
    "parse_size": ".writer",
    "plan_mapping": ".rules",
    "run_convert": ".cli",
    "vamba_language_rules": ".sources.vamba",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
