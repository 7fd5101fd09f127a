"""Proposed with the projector integration: every projector type inside the model, counts agree end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, IMAGE_TOKEN_ID, tiny_config, tiny_model
from PIL import Image

from hybrid_vlm.anyres import anyres_token_count
from hybrid_vlm.compat import projected_features
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.projectors import PROJECTOR_CLASSES, init_projector_module
from hybrid_vlm.token_counts import VisualTokenSpec, count_image_tokens

TINY_SSM = dict(d_state=4, head_dim=8, chunk_size=4)
VISION_56 = dict(image_size=56)  # 4x4 patch grid: room for pooling and convolution
SETTINGS = {
    "mlp2x_gelu": (dict(), 16),
    "mlp3x_gelu": (dict(projector_intermediate_size=48), 16),
    "pool2d_mlp": (dict(projector_pooled_grid=2), 4),
    "pool1d_mlp": (dict(projector_pooled_grid=2), 4),
    "conv2d_adapter": (dict(projector_conv_kernel=2), 4),
    "conv2d_adapter-k3s1": (dict(projector_conv_kernel=3, projector_conv_stride=1), 4),
    "mamba": (dict(projector_ssm=TINY_SSM), 16),
    "identity": ({}, 16),  # the tiny tower is as wide as the tiny LMs (32)
}


def test_every_projector_is_configurable():
    assert {name.split("-")[0] for name in SETTINGS} == set(PROJECTOR_CLASSES)


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("lm", ["llama", "mamba2"])
def test_projector_in_the_model_counts_and_generates(name, lm):
    fields, tokens = SETTINGS[name]
    model = tiny_model(lm, projector_type=name.split("-")[0], vision=VISION_56, **fields)
    assert type(model.model.multi_modal_projector) is PROJECTOR_CLASSES[name.split("-")[0]]
    spec = VisualTokenSpec.from_config(model.config)
    assert count_image_tokens(spec, 56, 56) == tokens
    pixels = torch.randn(2, 3, 56, 56)
    assert projected_features(model.get_image_features(pixels)).shape == (2, tokens, 32)
    ids = torch.tensor([[5] + [IMAGE_TOKEN_ID] * tokens + [6], [7] + [IMAGE_TOKEN_ID] * tokens + [8]])
    out = model(input_ids=ids, pixel_values=pixels, labels=ids)
    out.loss.backward()
    assert all(p.grad is not None for p in model.model.multi_modal_projector.parameters())
    cached = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=3, **GREEDY)
    reference = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=3, use_cache=False, **GREEDY)
    assert cached.tolist() == reference.tolist()


def test_pool_projector_does_not_pool_twice_and_matches_model_side_pooling():
    model_side = tiny_model("llama", vision=VISION_56, vision_pooled_grid=2)
    in_projector = tiny_model("llama", vision=VISION_56, projector_type="pool2d_mlp", projector_pooled_grid=2)
    in_projector.load_state_dict(model_side.state_dict())
    pixels = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(projected_features(in_projector.get_image_features(pixels)), projected_features(model_side.get_image_features(pixels)))


def test_mismatched_projector_is_caught_with_the_numbers():
    model = tiny_model("llama", vision=VISION_56, projector_type="pool2d_mlp", projector_pooled_grid=2)
    model.model.multi_modal_projector.pooled_grid = 1  # the module no longer matches the config
    with pytest.raises(ValueError, match="projector produced 1 tokens .* expects 4"):
        projected_features(model.get_image_features(torch.randn(1, 3, 56, 56)))


@pytest.mark.parametrize(("fields", "message"), [
    (dict(projector_type="pool2d_mlp"), "needs projector_pooled_grid"),
    (dict(projector_type="pool2d_mlp", projector_pooled_grid=9), "must be an int in 1..4"),
    (dict(projector_type="pool2d_mlp", projector_pooled_grid=2, vision_pooled_grid=2), "pool a second time"),
    (dict(projector_type="mamba", vision_feature_select_strategy="full"), "patch grid only"),
    (dict(projector_type="mamba", projector_scan_fusion="x"), "projector_scan_fusion"),
])
def test_config_rejects_bad_projector_settings(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_config("llama", vision=VISION_56, **fields)


@pytest.mark.parametrize("name", ["pool2d_mlp", "conv2d_adapter", "mamba"])
def test_config_round_trips_and_reloads(tmp_path, name):
    fields, _ = SETTINGS[name]
    model = tiny_model("llama", projector_type=name, vision=VISION_56, **fields)
    model.save_pretrained(tmp_path)
    from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    loaded = HybridVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 56, 56)
    torch.testing.assert_close(projected_features(loaded.get_image_features(pixels)), projected_features(model.get_image_features(pixels)))


@pytest.mark.parametrize("name", ["pool2d_mlp", "conv2d_adapter"])
def test_anyres_counts_with_reducing_projectors(name):
    fields, _ = SETTINGS[name]
    model = tiny_model("llama", projector_type=name, vision=VISION_56, **fields)
    processor = HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=4)
    images = [Image.new("RGB", (120, 60), (200, 10, 10)), Image.new("RGB", (60, 180), (10, 200, 10))]
    inputs = dict(processor(images, return_tensors="pt"))
    spec = VisualTokenSpec.from_config(model.config)
    tile = tuple(inputs["pixel_values"].shape[-2:])
    counts = [anyres_token_count(spec, tuple(s), tuple(g), tile, newline=model.config.image_newline,
                                 unpad=model.config.anyres_unpad)
              for s, g in zip(inputs["image_sizes"].tolist(), inputs["image_grids"].tolist())]
    assert [f.shape[0] for f in projected_features(model.get_image_features(**inputs))] == counts


def test_init_weights_initialises_the_mamba_projector():
    model = tiny_model("llama", projector_type="mamba", vision=VISION_56, projector_ssm=TINY_SSM)
    projector = model.model.multi_modal_projector
    for p in projector.parameters():
        p.data.fill_(float("nan"))
    for module in reversed(list(projector.modules())):
        assert init_projector_module(module) or not list(module.parameters(recurse=False))
    model.model._init_weights(projector.ssm[0])  # the model's hook routes here too
    assert all(torch.isfinite(p).all() for p in projector.parameters())
    assert set(model._keep_in_fp32_modules or []) >= {"A_log", "D", "dt_bias"}
