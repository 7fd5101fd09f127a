"""What `push_to_hub` would upload: `save_pretrained` (model + processor) writes a complete, self-contained folder.

Config, sharded safetensors with their index, processor and chat-template files, a model card with Hub metadata and
remote code; it loads in a fresh process with the package and without it, and `pipeline("image-text-to-text")`
answers from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import hybrid_vlm
from hybrid_vlm.hub import CARD_MARKER, model_card_metadata, write_model_card
from hybrid_vlm.remote_code import write_text_atomic

PRESET = "jamba-llava-tiny"
QUESTION = "What is in the picture?"


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A tiny model and processor saved the way one would before uploading, with small shards."""
    folder = tmp_path_factory.mktemp("hub") / "tiny-jamba-llava"
    model, processor = hybrid_vlm.from_preset(PRESET)
    model.save_pretrained(folder, remote_code=True, max_shard_size="300KB")
    processor.save_pretrained(folder, remote_code=True)
    return model.eval(), processor, folder


def test_folder_has_config_shards_index_processor_and_chat_template(hub_folder):
    model, _, folder = hub_folder
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json"} <= names
    assert {"processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert "chat_template.jinja" in names and "{% generation %}" in (folder / "chat_template.jinja").read_text()
    assert not any(name.endswith(".bin") for name in names)

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1, "max_shard_size='300KB' must shard a 3 MB model"
    assert set(index["weight_map"].values()) == set(shards)
    from safetensors import safe_open

    stored = set()
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as handle:
            stored |= set(handle.keys())
    assert stored == set(index["weight_map"])  # the index lists exactly what the shards hold
    loaded = type(model).from_pretrained(folder)  # (transformers 5 stores fused MoE experts per expert)
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    assert all(torch.equal(state[key], reloaded[key]) for key in state)


def test_folder_carries_remote_code_and_auto_map(hub_folder):
    _, _, folder = hub_folder
    for module in ("configuration_hybrid_vlm", "modeling_hybrid_vlm", "processing_hybrid_vlm", "hub", "precision"):
        assert (folder / f"{module}.py").is_file(), module
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_hybrid_vlm.HybridVLMForConditionalGeneration"
    assert "AutoProcessor" in json.loads((folder / "processor_config.json").read_text())["auto_map"]


def test_model_card_front_matter(hub_folder):
    _, _, folder = hub_folder
    meta = front_matter(folder / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert {"hybrid_vlm", "jamba", "ssm", "custom_code"} <= set(meta["tags"])
    assert "base_model" not in meta  # a preset has no base model
    body = (folder / "README.md").read_text()
    assert CARD_MARKER in body and "trust_remote_code=True" in body


def test_model_card_base_model_from_hub_id_or_argument(tmp_path):
    model, _ = hybrid_vlm.from_preset("llava-tiny")
    model.config._name_or_path = "some-org/base-vlm"
    assert model_card_metadata(model)["base_model"] == "some-org/base-vlm"
    assert model_card_metadata(model, base_model="other/model")["base_model"] == "other/model"
    model.config._name_or_path = str(tmp_path)  # a local folder is not a base model id
    meta = model_card_metadata(model)
    assert "base_model" not in meta and "ssm" not in meta["tags"] and "custom_code" not in meta["tags"]


def test_model_card_never_replaces_a_users_readme(tmp_path):
    model, _ = hybrid_vlm.from_preset("llava-tiny")
    readme = tmp_path / "README.md"
    readme.write_text("# My model\nHand-written.\n")
    model.save_pretrained(tmp_path)
    assert readme.read_text() == "# My model\nHand-written.\n"
    assert write_model_card(tmp_path, model) is False
    assert write_model_card(tmp_path, model, overwrite=True) is True  # only when asked
    assert front_matter(readme)["pipeline_tag"] == "image-text-to-text"
    # our own card is regenerated by the next save (it still has the marker)
    readme.write_text(readme.read_text().replace("Describe the data", "STALE-EDIT"))
    model.save_pretrained(tmp_path)
    assert "STALE-EDIT" not in readme.read_text()
    # and no card at all when not wanted
    (tmp_path / "none").mkdir()
    model.save_pretrained(tmp_path / "none", model_card=False)
    assert not (tmp_path / "none" / "README.md").exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "README.md"
    target.write_text("good")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "half")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left behind


def _expected_answer(model, processor) -> str:
    messages = [{"role": "user", "content": [{"type": "image", "image": picture()}, {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "remote_code":
        sys.modules["hybrid_vlm"] = None  # importing the package fails: only the folder's own code can be used
    else:
        import hybrid_vlm  # noqa: F401
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, pipeline

    trust = mode == "remote_code"
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust).eval()
    expected_module = "transformers_modules" if trust else "hybrid_vlm"
    assert type(model).__module__.startswith(expected_module), type(model).__module__
    reference = torch.load(folder + "/reference.pt")
    with torch.no_grad():
        print("MAXDIFF", (model(**reference["inputs"]).logits - reference["logits"]).abs().max().item())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=trust)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": sys.argv[3]}]}]
    out = pipe(text=messages, max_new_tokens=6, do_sample=False)
    print("ANSWER" + repr(out[0]["generated_text"][-1]))
    """
)


def _run_load_script(python: str, folder: Path, mode: str, tmp_path: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # a fresh remote-code cache
    result = subprocess.run(
        [python, "-c", LOAD_SCRIPT, str(folder), mode, QUESTION], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    maxdiff = float(result.stdout.split("MAXDIFF")[-1].split()[0])
    answer = eval(result.stdout.split("ANSWER")[-1].strip())  # noqa: S307 (our own script's repr of a dict)
    return maxdiff, answer


@pytest.fixture(scope="module")
def reference(hub_folder):
    model, processor, folder = hub_folder
    inputs = processor(text="<image>" + QUESTION, images=[picture()], return_tensors="pt")
    with torch.no_grad():
        torch.save({"inputs": dict(inputs), "logits": model(**inputs).logits}, folder / "reference.pt")
    return _expected_answer(model, processor)


@pytest.mark.parametrize("mode", ["package", "remote_code"])
def test_fresh_process_loads_the_folder_and_pipeline_answers(hub_folder, reference, mode, tmp_path):
    _, _, folder = hub_folder
    maxdiff, answer = _run_load_script(sys.executable, folder, mode, tmp_path)
    assert maxdiff < 1e-5
    assert answer["role"] == "assistant"
    assert answer["content"] == reference  # the pipeline's greedy answer is the model's own


def test_other_transformers_line_loads_the_folder_with_remote_code(hub_folder, reference, other_python, tmp_path):
    _, _, folder = hub_folder
    maxdiff, answer = _run_load_script(other_python, folder, "remote_code", tmp_path)
    assert maxdiff < 1e-4  # same weights; the two lines' kernels round differently
    assert answer["role"] == "assistant"
    assert answer["content"] == reference  # the same greedy tokens on the other release


def test_push_to_hub_uploads_the_complete_folder_in_one_commit(tmp_path, monkeypatch):
    """No Hub here: HfApi is replaced by a recorder that copies what would be uploaded."""
    import shutil

    import huggingface_hub

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, kwargs)
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    assert model.push_to_hub("you/tiny", processor=processor, private=True) == "commit-info"
    assert calls["create_repo"][0] == "you/tiny" and calls["create_repo"][1]["private"] is True
    assert calls["upload"][0] == "you/tiny"
    uploaded = tmp_path / "uploaded"
    names = {p.name for p in uploaded.iterdir()}
    assert {"config.json", "README.md", "modeling_hybrid_vlm.py", "processing_hybrid_vlm.py",
            "preprocessor_config.json", "tokenizer.json"} <= names
    assert front_matter(uploaded / "README.md")["library_name"] == "transformers"
    assert json.loads((uploaded / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.push_to_hub("you/tiny", use_auth_tokn="x")
