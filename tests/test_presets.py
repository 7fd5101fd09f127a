"""Presets: shapes the papers describe, the baseline's match, full-size parameter counts on the meta device."""

from __future__ import annotations

import pytest
import torch

import hybrid_vlm
from hybrid_vlm.presets import PRESETS


def test_list_presets_names_every_family_so_far():
    assert {"jamba-llava-tiny", "mamba2-llava-tiny", "llava-tiny", "longllava-9b", "longllava-a13b",
            "mmjamba-52b"} <= set(hybrid_vlm.list_presets())


def test_jamba_tiny_has_the_1_to_7_attention_pattern_and_moe_every_other_layer():
    config = hybrid_vlm.preset_config("jamba-llava-tiny")
    text = config.text_config
    assert text.layers_block_type.count("attention") * 7 == text.layers_block_type.count("mamba")
    assert [n > 1 for n in text.layers_num_experts] == [i % 2 == 1 for i in range(text.num_hidden_layers)]
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_feature_layer == -2


def test_baseline_matches_the_hybrid_in_width_depth_and_vision():
    hybrid = hybrid_vlm.preset_config("jamba-llava-tiny")
    baseline = hybrid_vlm.preset_config("llava-tiny")
    assert baseline.text_config.model_type == "llama"
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(baseline.text_config, field) == getattr(hybrid.text_config, field), field
    assert baseline.vision_config.to_dict() == hybrid.vision_config.to_dict()


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.tiny])
def test_tiny_presets_come_with_a_matching_processor(name):
    model, processor = hybrid_vlm.from_preset(name)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert len(processor.tokenizer) <= model.config.text_config.vocab_size
    inputs = processor(text="<image>hello", images=[torch.zeros(3, 64, 80)], return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def test_same_seed_same_weights():
    a, _ = hybrid_vlm.from_preset("llava-tiny", seed=3)
    b, _ = hybrid_vlm.from_preset("llava-tiny", seed=3)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("name,low,high", [("longllava-a13b", 51.5e9, 52.5e9), ("mmjamba-52b", 51.5e9, 52.5e9),
                                           ("longllava-9b", 9.3e9, 9.9e9)])
def test_full_size_presets_on_meta_have_the_papers_parameter_counts(name, low, high):
    model, processor = hybrid_vlm.from_preset(name, device="meta")
    assert processor is None
    assert next(model.parameters()).device.type == "meta"
    assert low < model.num_parameters() < high


def test_full_size_preset_refuses_to_allocate_real_memory():
    with pytest.raises(ValueError, match="device='meta'"):
        hybrid_vlm.from_preset("longllava-a13b")


def test_overrides_reach_the_sub_configs_and_unknown_names_fail():
    config = hybrid_vlm.preset_config("jamba-llava-tiny", text_config={"num_hidden_layers": 16})
    assert config.text_config.num_hidden_layers == 16
    with pytest.raises(ValueError, match="Unknown preset 'cobra'"):
        hybrid_vlm.preset_config("cobra")
    with pytest.raises(TypeError, match="must be a dict"):
        hybrid_vlm.preset_config("llava-tiny", text_config=3)
