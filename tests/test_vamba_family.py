"""The Vamba family through HybridVLM: build_vamba, generation, batching, caches, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, TINY_VISION, assert_same_continuation, left_pad, prompt, tiny_model
from transformers import AutoModelForImageTextToText, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

import hybrid_vlm
from hybrid_vlm import HybridVLMConfig, build_vamba

TINY_SSM = {"ssm_d_state": 8, "ssm_head_dim": 16, "ssm_chunk_size": 4}


def _vamba(lm: str = "llama"):
    return tiny_model(lm, decoder_type="vamba", vamba_options=TINY_SSM)


def _llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    text = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    config = LlavaConfig(vision_config=CLIPVisionConfig(**TINY_VISION), text_config=text, image_token_index=99)
    return LlavaForConditionalGeneration(config).eval()


def test_build_vamba_from_transformers_llava_carries_every_weight_and_copies_self_attention():
    source = _llava()
    model = build_vamba(source, TINY_SSM)
    assert model.config.decoder_type == "vamba"
    lm = model.model.language_model
    for layer in lm.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(getattr(layer.cross_attn, name).weight, getattr(layer.self_attn, name).weight)
        assert float(layer.alpha) == 0.5
    ours = model.state_dict()
    source_vision = source.model.vision_tower.state_dict()
    for key, tensor in source_vision.items():
        assert torch.equal(ours["model.vision_tower." + key.removeprefix("vision_model.")], tensor), key
    assert torch.equal(ours["lm_head.weight"], source.lm_head.weight)
    ids = torch.tensor([prompt(5, 6, 7, 8)])
    with torch.no_grad():  # no visual tokens: exactly the source language model
        torch.testing.assert_close(model(input_ids=ids).logits, source(input_ids=ids).logits, rtol=0, atol=0)


def test_build_vamba_from_an_interleaved_preset_folder(tmp_path):
    source, _ = hybrid_vlm.from_preset("llava-tiny")
    source.save_pretrained(tmp_path)
    model = build_vamba(str(tmp_path), TINY_SSM)
    assert model.config.decoder_type == "vamba"
    assert torch.equal(model.lm_head.weight, source.lm_head.weight)


def test_build_vamba_refuses_what_it_cannot_build():
    jamba = tiny_model("jamba")
    with pytest.raises(ValueError, match="is not one it supports"):
        build_vamba(jamba)
    with pytest.raises(ValueError, match="already uses decoder_type='vamba'"):
        build_vamba(_vamba())
    with pytest.raises(TypeError, match="expected a model or a folder path"):
        build_vamba(3)


def test_vamba_options_need_the_vamba_decoder():
    with pytest.raises(ValueError, match="vamba_options only apply"):
        HybridVLMConfig(text_config={"model_type": "llama"}, vamba_options={"alpha_init": 0.3})


@pytest.mark.parametrize("lm", ["llama", "qwen2"])
def test_left_padded_batch_equals_one_by_one(lm):
    from conftest import TEXT_CONFIGS

    TEXT_CONFIGS.setdefault("qwen2", {**TEXT_CONFIGS["llama"], "model_type": "qwen2"})
    model = _vamba(lm)
    rows = [prompt(5, 6, "img", 7, 8, 9, 10, 11), prompt(12, "img", 13)]
    pixel_values = torch.randn(2, 3, 28, 28)
    ids, mask = left_pad(rows)
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, max_new_tokens=5,
                             output_scores=True, return_dict_in_generate=True, **GREEDY)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=torch.tensor([row]), pixel_values=pixel_values[i : i + 1], max_new_tokens=5,
                               output_scores=True, return_dict_in_generate=True, **GREEDY)
        assert_same_continuation(batched.sequences[i, ids.shape[1] :], alone.sequences[0, len(row) :])
        for a, b in zip(batched.scores, alone.scores):
            finite = torch.isfinite(b[0])
            torch.testing.assert_close(a[i][finite], b[0][finite], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["greedy", "beam"])
def test_cached_generation_equals_no_cache_reference(mode):
    model = _vamba()
    ids = torch.tensor([prompt(3, "img", 5, 6, 7)])
    pixel_values = torch.randn(1, 3, 28, 28)
    options = dict(max_new_tokens=6, **GREEDY, **({"num_beams": 3} if mode == "beam" else {}))
    cached = model.generate(input_ids=ids, pixel_values=pixel_values, **options)
    reference = model.generate(input_ids=ids, pixel_values=pixel_values, use_cache=False, **options)
    assert cached.tolist() == reference.tolist()


def test_second_turn_with_a_new_image_on_the_returned_cache():
    """With causal visibility (text of the first turn never sees the second image either way); with the reference's
    all-visible cross-attention a recompute would let the first turn see it, which a cache cannot."""
    model = tiny_model("llama", decoder_type="vamba", vamba_options={
        **TINY_SSM, "cross_attention_visibility": "causal", "text_positions": "sequence"})
    pixel_values = torch.randn(2, 3, 28, 28)
    first = model.generate(input_ids=torch.tensor([prompt(5, "img", 6)]), pixel_values=pixel_values[:1],
                           max_new_tokens=3, return_dict_in_generate=True, **GREEDY)
    second = torch.cat([first.sequences, torch.tensor([prompt(20, "img", 21)])], dim=1)
    # An explicit mask: the first turn may have generated the pad id, which generate() would otherwise mask out of the
    # no-cache reference while the cache holds it as a real token.
    mask = torch.ones_like(second)
    cached = model.generate(input_ids=second, attention_mask=mask, pixel_values=pixel_values,
                            past_key_values=first.past_key_values, max_new_tokens=4, **GREEDY)
    reference = model.generate(input_ids=second, attention_mask=mask, pixel_values=pixel_values, use_cache=False,
                               max_new_tokens=4, **GREEDY)
    assert cached.tolist() == reference.tolist()


def test_vamba_preset_saves_and_reloads_through_auto(tmp_path):
    model, processor = hybrid_vlm.from_preset("vamba-tiny")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert loaded.config.decoder_type == "vamba"
    inputs = processor(text="<image>What is this?", images=[torch.zeros(3, 56, 56)], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)
    ssm = {n: p.dtype for n, p in loaded.named_parameters() if n.endswith(("A_log", ".D", "dt_bias"))}
    assert ssm and set(ssm.values()) == {torch.float32}
