"""compat.py is the only place that knows how transformers releases differ, and the model works on every release.

The structural tests read the package's source: no other module tests the transformers version or picks a cache
keyword, and compat.py itself decides by probing features (a published checkpoint freezes it, and must keep working
on releases newer than the one it was saved with).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import CORE_LMS, GREEDY, prompt, tiny_model
from transformers.modeling_outputs import BaseModelOutputWithPast

from hybrid_vlm import compat
from hybrid_vlm.modeling_hybrid_vlm import HybridVLMCausalLMOutputWithPast, HybridVLMModelOutputWithPast

PACKAGE = Path(compat.__file__).parent
CACHE_KEYWORDS = {"past_key_values", "cache_params"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "compat.py")


def _version_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "__version__":
            if not (isinstance(node.value, ast.Name) and node.value.id in ("hybrid_vlm", "torch")):
                found.append(f"line {node.lineno}: .__version__")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(name.split(".")[0] == "packaging" for name in names):
                found.append(f"line {node.lineno}: imports packaging")
        elif isinstance(node, ast.Call) and any(
            isinstance(a, ast.Constant) and a.value == "transformers" for a in node.args
        ):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "version":
                found.append(f"line {node.lineno}: metadata.version('transformers')")
    return found


def _cache_name_choices(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in CACHE_KEYWORDS:
            found.append(f"line {node.lineno}: string {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in CACHE_KEYWORDS:
            found.append(f"line {node.lineno}: attribute .{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) != "take_cache":
            for keyword in node.keywords:
                if keyword.arg in ("cache", "cache_params"):
                    found.append(f"line {node.lineno}: keyword {keyword.arg}=")
    return found


def test_no_module_but_compat_tests_the_transformers_version():
    offenders = {
        p.name: uses for p in _modules() if (uses := _version_uses(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert offenders == {}, f"version checks outside compat.py (ask compat for the feature instead): {offenders}"


def test_no_module_but_compat_chooses_a_cache_name():
    offenders = {
        p.name: uses for p in _modules() if (uses := _cache_name_choices(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert offenders == {}, f"cache names chosen outside compat.py (use compat's helpers): {offenders}"


def test_compat_decides_by_probes_not_version_numbers():
    tree = ast.parse((PACKAGE / "compat.py").read_text(encoding="utf-8"))
    readings = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "__version__"]
    assert len(readings) == 1, "compat.py reads the version once, for reports (TRANSFORMERS_VERSION)"
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            inside = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert "TRANSFORMERS_VERSION" not in inside, f"compat.py line {node.lineno} compares the version"
    assert not any(isinstance(n, ast.Import) and n.names[0].name.startswith("packaging") for n in ast.walk(tree))


def test_compat_imports_only_torch_and_transformers():
    """It is part of the flat set of files remote code copies; nothing of hybrid_vlm may be needed beside it."""
    tree = ast.parse((PACKAGE / "compat.py").read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "compat.py must not import the package's other modules"
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "dataclasses", "functools", "importlib", "inspect", "warnings", "collections",
                     "typing", "torch", "transformers"}


def test_modules_import_compat_so_remote_code_copies_it():
    """transformers' remote-code loader copies only `from .module import ...` imports; `from . import x` is lost."""
    for path in [PACKAGE / "modeling_hybrid_vlm.py", PACKAGE / "processing_hybrid_vlm.py"]:
        text = path.read_text(encoding="utf-8")
        assert "from .compat import" in text and "from . import" not in text


def test_take_cache_accepts_each_name_and_refuses_two():
    marker = object()
    for name in compat.CACHE_NAMES:
        kwargs = {name: marker, "other": 1}
        assert compat.take_cache(kwargs) is marker
        assert kwargs == {"other": 1}, "the cache must never stay behind to be forwarded under a wrong name"
    assert compat.take_cache({}, past_key_values=marker) is marker
    assert compat.take_cache({"cache": None}, past_key_values=None) is None
    with pytest.raises(TypeError, match="once"):
        compat.take_cache({"cache": marker}, past_key_values=object())
    with pytest.raises(TypeError, match="once"):
        compat.take_cache({"cache_params": marker, "past_key_values": object()})


def test_cache_argument_reads_the_signature():
    def new(x, cache=None, **kwargs): ...
    def old(x, past_key_values=None, **kwargs): ...
    def mamba(x, cache_params=None): ...
    def none(x, **kwargs): ...

    assert [compat.cache_argument(f) for f in (new, old, mamba, none)] == ["cache", "past_key_values",
                                                                           "cache_params", None]
    assert compat.cache_kwargs(old, 1) == {"past_key_values": 1}
    with pytest.raises(TypeError, match="takes no cache"):
        compat.cache_kwargs(none, 1)


def test_output_classes_name_the_cache_as_transformers_does():
    installed = {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} & set(compat.CACHE_NAMES)
    assert installed == {compat.OUTPUT_CACHE_FIELD}
    for cls in (HybridVLMCausalLMOutputWithPast, HybridVLMModelOutputWithPast):
        fields = [f.name for f in dataclasses.fields(cls)]
        assert compat.OUTPUT_CACHE_FIELD in fields
        assert not (set(fields) & set(compat.CACHE_NAMES)) - {compat.OUTPUT_CACHE_FIELD}
    marker = object()
    output = HybridVLMCausalLMOutputWithPast(logits=torch.zeros(1), **compat.cache_output_kwargs(marker))
    assert compat.output_cache(output) is marker
    assert output.to_tuple()[1] is marker  # generate() and tuple users find it right after the logits
    assert compat.output_cache(None) is None


@pytest.mark.parametrize("lm", CORE_LMS)
@pytest.mark.parametrize("name", compat.CACHE_NAMES)
def test_forward_takes_the_cache_under_every_name(lm, name):
    """A decode step given the prefill's cache under any of the three names equals the no-cache forward."""
    model = tiny_model(lm)
    ids = torch.tensor([prompt(5, 6, "img", 7, 8, 9)])
    pixel_values = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits[:, -1]
        prefill = model(input_ids=ids[:, :-1], pixel_values=pixel_values, use_cache=True)
        cache = compat.output_cache(prefill)
        assert cache is not None
        step = model(input_ids=ids[:, -1:], use_cache=True, **{name: cache}).logits[:, -1]
        assert compat.output_cache(model(input_ids=ids[:, -1:], use_cache=False)) is None
    torch.testing.assert_close(step, reference, atol=1e-5, rtol=1e-4)


def test_forward_refuses_a_cache_under_two_names():
    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        cache = compat.output_cache(model(input_ids=ids, use_cache=True))
        with pytest.raises(TypeError, match="once"):
            model(input_ids=ids[:, -1:], past_key_values=cache, cache=cache)
        with pytest.raises(TypeError, match="once"):
            model.model(input_ids=ids[:, -1:], cache_params=cache, past_key_values=cache)


@pytest.mark.parametrize("lm", CORE_LMS)
def test_generate_hands_the_cache_back_under_the_installed_name(lm):
    """generate() reads the cache back from our outputs by its own name: a cached run equals the uncached one and
    returns a cache the next turn can use."""
    model = tiny_model(lm)
    ids = torch.tensor([prompt(5, "img", 6)])
    pixel_values = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    cached = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=5,
                            return_dict_in_generate=True, **GREEDY)
    uncached = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=5, use_cache=False, **GREEDY)
    assert cached.sequences.tolist() == uncached.tolist()
    assert compat.output_cache(cached) is not None


def test_feature_report_names_every_probe():
    report = dict(compat.feature_report())
    assert report["cache keyword (generate)"] in compat.CACHE_NAMES
    assert report["transformers"] == compat.TRANSFORMERS_VERSION


def test_remote_code_folders_carry_compat(tmp_path):
    """A checkpoint saved with remote code takes compat.py along for both the model and the processor side."""
    from hybrid_vlm.remote_code import write_model_remote_code, write_processor_remote_code

    (tmp_path / "config.json").write_text("{}")
    assert "compat.py" in write_model_remote_code(tmp_path)
    assert "compat.py" in write_processor_remote_code(tmp_path)
    assert (tmp_path / "compat.py").read_text() == (PACKAGE / "compat.py").read_text()


def test_a_text_config_saved_with_rope_parameters_keeps_its_rope_theta_on_either_line():
    """5.x saves rope_theta inside `rope_parameters`; 4.x would ignore that and fall back to its default theta, so a
    converted Qwen2 LM (theta 1e6) saved on 5.x would compute other logits on 4.57."""
    from hybrid_vlm import HybridVLMConfig

    saved = {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
             "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}
    text = HybridVLMConfig(text_config=saved).text_config
    rope = getattr(text, "rope_parameters", None) or {}
    assert rope.get("rope_theta", getattr(text, "rope_theta", None)) == 1000000.0
    assert compat.portable_rope_fields(saved)["model_type"] == "qwen2"
    if not compat.CONFIGS_TAKE_ROPE_PARAMETERS:
        assert compat.portable_rope_fields(saved)["rope_theta"] == 1000000.0
        mrope = {"rope_parameters": {"rope_type": "default", "rope_theta": 1.0, "mrope_section": [2, 3, 3]}}
        assert compat.portable_rope_fields(mrope)["rope_scaling"] == {"rope_type": "default", "mrope_section": [2, 3, 3]}


@pytest.mark.parametrize("entry", ["modeling_hybrid_vlm", "configuration_hybrid_vlm", "processing_hybrid_vlm",
                                   "image_processing_hybrid_vlm", "video_processing_hybrid_vlm"])
def test_every_remote_code_module_is_a_direct_import_of_its_entry(entry):
    """transformers 4.57 copies only an entry module's direct relative imports into its module cache, then walks them:
    any module reachable only through another one (even a function-local `from .x import`) fails to load there."""
    from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

    path = PACKAGE / f"{entry}.py"
    reachable = {Path(p).stem for p in get_relative_import_files(str(path))}
    assert reachable - set(get_relative_imports(str(path))) == set()
