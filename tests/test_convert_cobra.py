"""Cobra (Prismatic run folder) -> HybridVLM: lossless mapping, leftovers, and the converted model generates."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open

import hybrid_vlm  # noqa: F401  (registers the Auto classes)
from hybrid_vlm.convert import ConversionError, convert
from hybrid_vlm.presets import TINY_DINOV2, TINY_MAMBA, TINY_SIGLIP
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer


def _config(cls_name: str, fields: dict) -> transformers.PretrainedConfig:
    return getattr(transformers, cls_name)(**{k: v for k, v in fields.items() if k != "model_type"})


def _cobra_run(root, *, tokenizer: bool = True, extra: dict | None = None, side: int = 56):
    """A tiny Cobra run (mamba_ssm LM names, fused-gelu-mlp projector) plus the two encoder folders."""
    torch.manual_seed(0)
    dino = transformers.Dinov2WithRegistersModel(_config("Dinov2WithRegistersConfig", TINY_DINOV2))
    siglip = transformers.SiglipVisionModel(_config("SiglipVisionConfig", TINY_SIGLIP))
    dino.save_pretrained(root / "dinov2")
    siglip.save_pretrained(root / "siglip")
    vocab = 520  # padded past the tiny tokenizer's 512 ids, as Cobra pads GPT-NeoX's vocabulary
    lm = transformers.MambaForCausalLM(_config("MambaConfig", {**TINY_MAMBA, "vocab_size": vocab,
                                                               "tie_word_embeddings": False}))
    llm = {}
    for name, tensor in lm.state_dict().items():
        name = name.replace("backbone.embeddings.", "backbone.embedding.")
        llm["llm." + name] = tensor.clone()
    fused, hidden = 32 + 48, TINY_MAMBA["hidden_size"]
    projector = {  # FusedMLPProjector keeps its layers in its own `projector` Sequential
        "projector.0.weight": torch.randn(4 * fused, fused), "projector.0.bias": torch.randn(4 * fused),
        "projector.2.weight": torch.randn(hidden, 4 * fused), "projector.2.bias": torch.randn(hidden),
        "projector.4.weight": torch.randn(hidden, hidden), "projector.4.bias": torch.randn(hidden),
    }
    run = root / "cobra"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {
        "model_id": "cobra+tiny", "vision_backbone_id": f"dinosiglip-vit-so-{side}px",
        "llm_backbone_id": "mamba-2.8b-zephyr", "arch_specifier": "no-align+fused-gelu-mlp", "image_resize_strategy": "resize-naive"}}))
    torch.save({"model": {"projector": projector, "llm_backbone": {**llm, **(extra or {})}}},
               run / "checkpoints" / "latest-checkpoint.pt")
    if tokenizer:
        load_tiny_tokenizer().save_pretrained(run)
    return run, projector, llm, dino, siglip


def _saved(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in handle.keys()})
    return tensors


def test_cobra_conversion_is_lossless_and_generates(tmp_path):
    run, projector, llm, dino, siglip = _cobra_run(tmp_path)
    report = convert(run, tmp_path / "out", "cobra", vision_towers=(tmp_path / "dinov2", tmp_path / "siglip"),
                     progress=False)
    saved = _saved(tmp_path / "out")
    for name, tensor in projector.items():
        _, layer, kind = name.split(".")
        assert torch.equal(saved[f"model.multi_modal_projector.linear_{int(layer) // 2 + 1}.{kind}"], tensor)
    assert torch.equal(saved["model.language_model.embeddings.weight"], llm["llm.backbone.embedding.weight"])
    assert torch.equal(saved["model.language_model.layers.3.mixer.A_log"], llm["llm.backbone.layers.3.mixer.A_log"])
    assert torch.equal(saved["model.language_model.norm_f.weight"], llm["llm.backbone.norm_f.weight"])
    assert torch.equal(saved["lm_head.weight"], llm["llm.lm_head.weight"])
    # every source tensor landed somewhere or was dropped with a reason
    sources = len(projector) + len(llm) + len(dino.state_dict()) + len(siglip.state_dict())
    assert len(report.mapped) + len(report.dropped) >= sources - 2  # position_ids buffers may not be saved

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.vision_fusion == "channel" and model.config.projector_type == "mlp3x_gelu"
    # the converted towers are the source towers, each reading its own normalised channels
    pixels = torch.randn(1, 6, 56, 56)
    with torch.no_grad():
        maps = model.model.vision_tower.encode_patch_maps(pixels, [-2])
        # Cobra's timm SigLIP uses exact GELU: the converted tower is the source tower with that activation
        erf_siglip = transformers.SiglipVisionModel(_config("SiglipVisionConfig", {**TINY_SIGLIP, "hidden_act": "gelu"}))
        erf_siglip.load_state_dict(siglip.state_dict())
        expected = erf_siglip(pixels[:, 3:], output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(maps[1], expected)
        expected = dino(pixels[:, :3], output_hidden_states=True).hidden_states[-2][:, 1 + 2 :]
        torch.testing.assert_close(maps[0], expected)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<image><|user|>\n") and text.endswith("<|assistant|>\n")  # patches go first
    image = torch.randint(0, 255, (40, 60, 3), dtype=torch.uint8).numpy()
    inputs = processor(text=text, images=[image], return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 6
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_cobra_leftover_tensor_fails_and_writes_nothing(tmp_path):
    run, *_ = _cobra_run(tmp_path, extra={"llm.backbone.mystery.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match="mystery"):
        convert(run, tmp_path / "out", "cobra", vision_towers=(tmp_path / "dinov2", tmp_path / "siglip"),
                progress=False)
    assert not (tmp_path / "out").exists()


def test_cobra_wrong_towers_are_named(tmp_path):
    run, *_ = _cobra_run(tmp_path, tokenizer=False, side=224)
    with pytest.raises(ConversionError, match="not DINOv2"):
        convert(run, tmp_path / "out", "cobra", vision_towers=(tmp_path / "siglip", tmp_path / "dinov2"),
                progress=False)
    with pytest.raises(ConversionError, match="SigLIP the run was trained with"):  # 56 px tower, 224 px run
        convert(run, tmp_path / "out", "cobra", vision_towers=(tmp_path / "dinov2", tmp_path / "siglip"),
                progress=False)
