"""The package layout's rules, checked on the source: the flat set of modules that remote code copies never imports
the tooling packages, nothing imports in a cycle, the configuration side is free of model code, and importing the
package imports none of transformers' model or processor machinery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hybrid_vlm"
TOOLING = ("convert", "training", "benchmark", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The package-relative name an import statement in module `importer` refers to."""
    if level == 0:
        return (module or "").removeprefix("hybrid_vlm").lstrip(".")
    base = importer.split(".") if importer else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([module] if module else [])])


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at any depth of the file (function-local imports count)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 0 and not (node.module or "").startswith("hybrid_vlm"):
                    continue
                target = _resolve(name, is_package, node.level, node.module)
                targets = [f"{target}.{alias.name}".lstrip(".") for alias in node.names] + [target]
            elif isinstance(node, ast.Import):
                targets = [alias.name.removeprefix("hybrid_vlm").lstrip(".") for alias in node.names
                           if alias.name.split(".")[0] == "hybrid_vlm"]
            for target in targets:
                # `from .x import y` names module x.y when that is a module, else module x.
                if target in modules and target != name:
                    graph[name].add(target)
    for name in graph:  # importing a.b imports the package a first
        graph[name] |= {".".join(t.split(".")[:i]) for t in set(graph[name]) for i in range(1, t.count(".") + 1)}
        graph[name].discard(name)
    return graph


def _is_tooling(name: str) -> bool:
    return name.split(".")[0] in TOOLING


def test_the_flat_set_never_imports_tooling():
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if _is_tooling(t))
                 for name, targets in graph.items() if name and not _is_tooling(name)}
    assert {name: t for name, t in offenders.items() if t} == {}


def test_no_import_cycles():
    graph = import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported (not those under `if TYPE_CHECKING:`)."""
    statements: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            statements.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
            statements.extend([*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])])
        else:
            statements.append(node)
    return statements


def _imports_torch_nn(path: Path) -> bool:
    """Whether importing a module imports `torch.nn` or transformers' model base, or defines a torch module."""
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.nn") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = {a.name for a in node.names}
            if (node.module or "").startswith("torch.nn") or (node.module == "torch" and "nn" in names):
                return True
            if node.module == "transformers" and names & {"PreTrainedModel", "GenerationMixin"}:
                return True
            if (node.module or "").startswith(("transformers.modeling_utils", "transformers.generation")):
                return True
        if isinstance(node, ast.ClassDef) and any("Module" in ast.unparse(base) for base in node.bases):
            return True
    return False


def test_the_configuration_copy_set_has_no_model_code():
    """What remote code copies for `AutoConfig` (the configuration file and everything it imports) defines no torch
    modules: a config loads, validates and saves without model code."""
    from transformers.dynamic_module_utils import get_relative_import_files

    entry = PACKAGE / "configuration_hybrid_vlm.py"
    copied = [entry, *map(Path, get_relative_import_files(str(entry)))]
    assert sorted(p.name for p in copied if _imports_torch_nn(p)) == []


def test_importing_the_package_imports_no_model_or_processor_machinery():
    heavy = ["torch", "transformers.modeling_utils", "transformers.processing_utils", "transformers.generation",
             *(f"hybrid_vlm.{name}" for name in ("configuration_hybrid_vlm", "modeling_hybrid_vlm", "compat",
                                                 *TOOLING))]
    code = f"import sys, hybrid_vlm; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("statement", [
    "from transformers import AutoConfig; print(type(AutoConfig.for_model('hybrid_vlm')).__name__)",
    # transformers' Auto modules imported before the package: registered at once, still lazily
    "from transformers import AutoModelForImageTextToText, AutoConfig; import hybrid_vlm; "
    "print(type(AutoConfig.for_model('hybrid_vlm')).__name__)",
])
def test_auto_classes_answer_for_the_model_type_in_a_fresh_process(statement):
    code = statement if "import hybrid_vlm" in statement else f"import hybrid_vlm; {statement}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "HybridVLMConfig"


def test_auto_model_and_processor_resolve_lazily_registered_classes(tmp_path):
    code = f"""
import sys, hybrid_vlm
from transformers import AutoModelForImageTextToText, AutoModelForCausalLM, AutoProcessor, AutoImageProcessor
assert "hybrid_vlm.modeling_hybrid_vlm" not in sys.modules
model, processor = hybrid_vlm.from_preset("mamba2-llava-tiny", with_processor=True)
model.save_pretrained({str(tmp_path)!r}); processor.save_pretrained({str(tmp_path)!r})
print(type(AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r})).__name__,
      type(AutoModelForCausalLM.from_config(model.config)).__name__,
      type(AutoProcessor.from_pretrained({str(tmp_path)!r})).__name__,
      type(AutoImageProcessor.from_pretrained({str(tmp_path)!r})).__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["HybridVLMForConditionalGeneration", "HybridVLMForConditionalGeneration",
                                     "HybridVLMProcessor", "HybridVLMImageProcessor"]


def test_every_public_name_resolves():
    import hybrid_vlm

    for name in hybrid_vlm.__all__:
        assert getattr(hybrid_vlm, name) is not None, name


def test_the_ssm_option_schema_matches_the_mixers():
    """The configuration side names each mixer's keywords without importing it; they must be the mixers' own."""
    import inspect

    from hybrid_vlm.config_options import SSM_MIXER_OPTIONS
    from hybrid_vlm.ssm import MIXERS

    assert set(SSM_MIXER_OPTIONS) == set(MIXERS)
    for name, mixer in MIXERS.items():
        parameters = set(inspect.signature(mixer.__init__).parameters) - {"self", "hidden_size", "layer_idx"}
        assert SSM_MIXER_OPTIONS[name] == parameters | {"norm_eps"}, name


@pytest.mark.parametrize("entry", ["configuration_hybrid_vlm", "modeling_hybrid_vlm", "processing_hybrid_vlm",
                                   "image_processing_hybrid_vlm", "video_processing_hybrid_vlm"])
def test_the_declared_remote_code_files_are_what_transformers_resolves(entry):
    """A saved folder carries `REMOTE_CODE_FILES[entry]`; transformers' loader (on the installed line) must need
    exactly those files for the entry."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from hybrid_vlm.remote_code import REMOTE_CODE_FILES

    resolved = {Path(p).stem for p in get_relative_import_files(str(PACKAGE / f"{entry}.py"))}
    assert set(REMOTE_CODE_FILES[entry]) == resolved


def test_the_projector_schema_names_every_projector_class():
    from hybrid_vlm.config_options import PROJECTOR_TYPES
    from hybrid_vlm.projectors import PROJECTOR_CLASSES

    assert tuple(PROJECTOR_CLASSES) == PROJECTOR_TYPES
