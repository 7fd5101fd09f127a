"""The convert/ package's layout: no import cycle, the flat modules never import it, one table of kinds that resolves,
a CLI parser that loads no torch, and one owner of the names of Vamba's added weights."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModel, Qwen2Config

from hybrid_vlm.convert import KINDS, SOURCE_KINDS
from hybrid_vlm.convert.sources import kind_for_model_type, recipe_builder
from hybrid_vlm.vamba import ADDED_WEIGHT_PATTERN, VambaLanguageModel, VambaOptions, is_added_weight

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hybrid_vlm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hybrid_vlm module `path` imports, at any depth of the file (function-local imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hybrid_vlm"):
                found.add(target)
                # `from . import x` / `from .sources import vamba`: x may be a module
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hybrid_vlm"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py") if "assets" not in path.parts}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_convert_modules_import_no_cycle():
    graph = _graph()
    convert_modules = {name for name in graph if name.startswith("hybrid_vlm.convert")}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name] & convert_modules):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(convert_modules):
        if name not in state:
            visit(name, [name])
    assert "hybrid_vlm.convert.sources.vamba" in convert_modules  # the walk saw the package


# Command-line and training modules: tooling that imports the converter, not part of the flat remote-code set.
_FLAT_TOOLING = {"cli", "train_cli", "training", "benchmark", "model_args"}


def test_flat_modules_never_import_the_convert_package():
    graph = _graph()
    flat = [name for name in graph if name.count(".") == 1 and name.rsplit(".", 1)[1] not in _FLAT_TOOLING]
    assert "hybrid_vlm.vamba" in flat and "hybrid_vlm.chat_templates" in flat
    offenders = {name: sorted(t for t in graph[name] if t.startswith("hybrid_vlm.convert")) for name in flat}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_every_kind_in_the_table_has_a_recipe_builder():
    assert KINDS == ("llava", "llava-next", "llava-onevision", "longllava", "vamba", "cobra")
    for kind in KINDS:
        builder = recipe_builder(kind)
        assert list(inspect.signature(builder).parameters) == ["kind", "folder", "reader", "options"], kind
        assert builder.__module__ == f"hybrid_vlm.convert.sources.{SOURCE_KINDS[kind].module}"
    assert kind_for_model_type("llava_jamba") == "longllava"
    assert kind_for_model_type("qwen2_vl") == "vamba"
    assert kind_for_model_type("mamba") is None


def test_the_convert_command_line_parser_loads_no_torch():
    """`hybrid-vlm --help` builds every subcommand's parser: convert's must not pull torch in."""
    script = f"""
import sys, types, argparse
package = types.ModuleType("hybrid_vlm")  # the package's __init__ imports the models; this checks convert/ alone
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["hybrid_vlm"] = package
from hybrid_vlm.convert.cli import add_convert_subcommand
parser = argparse.ArgumentParser()
add_convert_subcommand(parser.add_subparsers())
parser.parse_args(["convert", "a", "b", "--from", "vamba"])
print(sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_vamba_added_weight_names_are_exactly_what_the_model_adds():
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=64)
    base = set(AutoModel.from_config(config).state_dict())
    torch.manual_seed(0)
    lm = VambaLanguageModel(config, VambaOptions(ssm_d_state=8, ssm_head_dim=16, ssm_chunk_size=4))
    keys = set(lm.state_dict())
    added = keys - base
    assert added and {k for k in keys if is_added_weight(k)} == added
    assert {k.split(".")[2] for k in added} == {"cross_attn", "alpha", "vision_mixer"}
    for prefix in ("", "model.language_model."):  # at any prefix, as in checkpoints and in the full model
        assert all(ADDED_WEIGHT_PATTERN.search(prefix + k) for k in added)
        assert not any(ADDED_WEIGHT_PATTERN.search(prefix + k) for k in base)
