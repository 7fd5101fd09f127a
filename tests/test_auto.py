"""Auto classes, save/load, remote code without the package, and checkpoints across transformers lines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from conftest import prompt, tiny_model
from cross_version_helper import check, save
from transformers import AutoConfig, AutoModel, AutoProcessor

import hybrid_vlm
from hybrid_vlm import HybridVLMConfig, HybridVLMForConditionalGeneration, HybridVLMModel, HybridVLMProcessor

HELPER = Path(__file__).parent / "cross_version_helper.py"


def _inputs():
    return dict(input_ids=torch.tensor([prompt(5, "img", 6, 7)]), pixel_values=torch.randn(1, 3, 28, 28))


@pytest.fixture(scope="module")
def saved_jamba(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jamba")
    model = tiny_model("jamba")
    model.save_pretrained(folder)
    return model, folder


AUTO_CLASSES = ["AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModelForVision2Seq"]


@pytest.mark.parametrize("auto_name", AUTO_CLASSES)
def test_auto_classes_load_our_model_with_identical_logits(saved_jamba, auto_name):
    auto = getattr(transformers, auto_name, None)
    if auto is None:
        pytest.skip(f"{auto_name} does not exist in transformers {transformers.__version__}")
    model, folder = saved_jamba
    loaded = auto.from_pretrained(folder).eval()
    assert type(loaded) is HybridVLMForConditionalGeneration
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)  # bit-identical weights
    inputs = _inputs()
    with torch.no_grad():
        # identical weights; on transformers 4.57 the loaded copy's memory layout can change BLAS rounding (~1e-7)
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_config_and_base_model_through_auto(saved_jamba):
    _, folder = saved_jamba
    config = AutoConfig.from_pretrained(folder)
    assert type(config) is HybridVLMConfig and config.text_config.model_type == "jamba"
    assert type(AutoModel.from_config(config)) is HybridVLMModel


def test_weights_are_safetensors_with_the_transformers5_layout(saved_jamba):
    from safetensors import safe_open

    _, folder = saved_jamba
    files = list(folder.glob("*.safetensors"))
    assert files and not list(folder.glob("*.bin"))
    with safe_open(str(files[0]), "pt") as handle:
        keys = set(handle.keys())
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in keys}
    assert prefixes == {"model.vision_tower", "model.multi_modal_projector", "model.language_model", "lm_head"}


def test_auto_processor_returns_our_processor(tmp_path):
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    processor.save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is HybridVLMProcessor


@pytest.mark.parametrize("preset", ["jamba-llava-tiny", "vamba-tiny"])
def test_remote_code_loads_without_the_package(tmp_path, preset):
    """A process that cannot import hybrid_vlm loads the folder with trust_remote_code=True, same logits."""
    model, processor = hybrid_vlm.from_preset(preset)
    model.save_pretrained(tmp_path, remote_code=True)
    processor.save_pretrained(tmp_path, remote_code=True)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {"AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"} <= set(auto_map)
    inputs = _tiny_preset_inputs(processor)
    with torch.no_grad():
        torch.save({"inputs": dict(inputs), "logits": model(**inputs).logits}, tmp_path / "reference.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hybrid_vlm"] = None  # importing the package now fails: only the copied files can be used
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        folder = {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        reference = torch.load(folder + "/reference.pt")
        with torch.no_grad():
            logits = model(**reference["inputs"]).logits
        print("MAXDIFF", (logits - reference["logits"]).abs().max().item())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**_clean_env(), "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert _maxdiff(result.stdout) < 1e-5


def _tiny_preset_inputs(processor):
    from hybrid_vlm.cli.demo import demo_image

    return processor(text="<image>What is this?", images=[demo_image()], return_tensors="pt")


def _clean_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}


@pytest.mark.parametrize("preset", ["jamba-llava-tiny", "mamba2-llava-tiny"])
def test_checkpoint_saved_by_the_other_transformers_line_loads_here(other_python, tmp_path, preset, capsys):
    result = subprocess.run([other_python, str(HELPER), "save", str(tmp_path), preset], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check(tmp_path)
    assert _maxdiff(capsys.readouterr().out) < 1e-4  # same weights; the two lines' kernels round differently


@pytest.mark.parametrize("preset", ["jamba-llava-tiny", "mamba2-llava-tiny"])
def test_checkpoint_saved_here_loads_on_the_other_transformers_line(other_python, tmp_path, preset):
    save(tmp_path, preset)
    result = subprocess.run([other_python, str(HELPER), "check", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _maxdiff(result.stdout) < 1e-4


def _maxdiff(output: str) -> float:
    return float(output.split("MAXDIFF")[-1].split()[0])
