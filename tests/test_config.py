"""HybridVLMConfig: validation at construction, serialisation, and every language-model family named in the issue."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, TINY_VISION, prompt, tiny_config
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from hybrid_vlm import HybridVLMConfig, HybridVLMForConditionalGeneration


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"decoder_type": "perceiver"}, "Unknown decoder_type 'perceiver'. Choose one of"),
        ({"projector_type": "qformer"}, "Unknown projector_type 'qformer'. Choose one of"),
        ({"vision_feature_select_strategy": "cls"}, "Unknown vision_feature_select_strategy 'cls'"),
        ({"vision_feature_layer": 7}, "vision_feature_layer [7] is out of range: the vision encoder has 2 layers"),
        ({"image_token_id": 1000}, "image_token_id=1000 is not a valid id in the text vocabulary of size 100"),
        ({"video_token_id": 99}, "image_token_id and video_token_id are both 99"),
        ({"text": {"pad_token_id": 99}}, "pad_token_id (99) is also a visual placeholder id"),
    ],
)
def test_inconsistent_settings_fail_at_construction_with_the_fix(overrides, message):
    with pytest.raises(ValueError) as info:
        tiny_config("llama", **overrides)
    assert message in str(info.value)


def test_wrong_kind_of_sub_config_is_named():
    with pytest.raises(ValueError, match="cannot use as a vision encoder"):
        HybridVLMConfig(vision_config=CLIPTextConfig(), text_config={"model_type": "llama"})
    with pytest.raises(ValueError, match="not a causal language model"):
        HybridVLMConfig(vision_config=CLIPVisionConfig(**TINY_VISION), text_config={"model_type": "clip_vision_model"})
    with pytest.raises(ValueError, match="without a `model_type`"):
        HybridVLMConfig(text_config={"hidden_size": 8})
    with pytest.raises(TypeError, match="must be a transformers config, a dict or None"):
        HybridVLMConfig(text_config="llama")


def test_decoder_keyword_is_an_alias_of_decoder_type():
    config = tiny_config("llama", decoder="interleaved")
    assert config.decoder_type == "interleaved"
    with pytest.raises(ValueError, match="Unknown decoder_type"):
        tiny_config("llama", decoder="cross_attention_later")


def test_composite_clip_config_contributes_its_vision_part():
    clip = CLIPConfig(vision_config=TINY_VISION)
    config = HybridVLMConfig(vision_config=clip, text_config={"model_type": "llama", "vocab_size": 100})
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_config.hidden_size == 32


def test_dict_round_trip_keeps_every_field():
    config = tiny_config("jamba", vision_feature_layer=[-2, -1], video_token_id=98)
    again = HybridVLMConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.text_config.model_type == "jamba" and again.vision_feature_layers == [-2, -1]


# Tiny configs of the other hybrid / SSM / transformer LMs the issue names.
EXTRA_LMS = {
    "mamba": dict(model_type="mamba", hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4),
    "bamba": dict(
        model_type="bamba", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
        mamba_n_groups=1, mamba_chunk_size=4, mamba_expand=2,
    ),
    "zamba2": dict(
        model_type="zamba2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        mamba_d_state=8, mamba_headdim=16, n_mamba_heads=4, chunk_size=4, layers_block_type=["mamba", "hybrid"],
        hybrid_layer_ids=[1], intermediate_size=64, attention_hidden_size=64, attention_head_dim=16,
    ),
    "nemotron_h": dict(
        model_type="nemotron_h", hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=8, n_groups=1,
        chunk_size=4, hybrid_override_pattern="M*-",
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


@pytest.mark.parametrize("lm", list(EXTRA_LMS))
def test_every_named_language_model_family_trains_and_generates(lm):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if EXTRA_LMS[lm]["model_type"] not in CONFIG_MAPPING:
        pytest.skip(f"{lm} is not in this transformers version")
    torch.manual_seed(0)
    model = HybridVLMForConditionalGeneration(tiny_config(EXTRA_LMS[lm])).eval()
    ids = torch.tensor([prompt(5, "img", 6, 7)])
    pixel_values = torch.randn(1, 3, 28, 28)
    loss = model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    results = [
        model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=5, use_cache=use_cache, **GREEDY)
        for use_cache in (True, False)
    ]
    assert results[0].tolist() == results[1].tolist()


def test_nemotron_h_is_reported_missing_on_transformers_4():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if "nemotron_h" in CONFIG_MAPPING_NAMES:
        pytest.skip("this transformers has NemotronH")
    with pytest.raises(ValueError, match="does not know"):
        tiny_config(EXTRA_LMS["nemotron_h"])
