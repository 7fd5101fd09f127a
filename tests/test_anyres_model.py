"""AnyRes and pooling on the model side: packing agrees with the one token-count function, end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, IMAGE_TOKEN_ID, tiny_model
from PIL import Image

from hybrid_vlm.anyres import anyres_token_count
from hybrid_vlm.compat import projected_features
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.token_counts import VisualTokenSpec, count_image_tokens

LAYOUTS = {
    "llava-next": dict(image_newline=True),
    "no-newline": dict(image_newline=False),
    "longllava-flat-pooled": dict(image_newline=False, anyres_unpad=False, anyres_merge="flat", vision_pooled_grid=1),
}


def _anyres_inputs(model, max_tiles=4):
    processor = HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=max_tiles)
    images = [Image.new("RGB", (60, 30), (200, 10, 10)), Image.new("RGB", (30, 90), (10, 200, 10))]
    inputs = dict(processor(images, return_tensors="pt"))
    spec = VisualTokenSpec.from_config(model.config)
    tile = tuple(inputs["pixel_values"].shape[-2:])
    counts = [
        anyres_token_count(spec, tuple(size), tuple(grid), tile, newline=model.config.image_newline,
                           unpad=model.config.anyres_unpad)
        for size, grid in zip(inputs["image_sizes"].tolist(), inputs["image_grids"].tolist())
    ]
    ids = torch.tensor([[5] + [IMAGE_TOKEN_ID] * counts[0] + [6] + [IMAGE_TOKEN_ID] * counts[1] + [7]])
    return ids, inputs, counts


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_anyres_features_have_the_counted_length_and_generate_with_cache(layout):
    model = tiny_model("jamba", **LAYOUTS[layout])
    ids, inputs, counts = _anyres_inputs(model)
    features = projected_features(model.get_image_features(**inputs))
    assert [f.shape[0] for f in features] == counts
    cached = model.generate(input_ids=ids, **inputs, max_new_tokens=4, **GREEDY)
    reference = model.generate(input_ids=ids, **inputs, max_new_tokens=4, use_cache=False, **GREEDY)
    assert cached.tolist() == reference.tolist()


def test_newline_embedding_is_learned_and_used():
    model = tiny_model("llama", image_newline=True)
    ids, inputs, _ = _anyres_inputs(model)
    out = model(input_ids=ids, **inputs, labels=ids)
    out.loss.backward()
    assert model.model.image_newline.grad is not None and model.model.image_newline.grad.abs().sum() > 0


def test_pooling_reduces_single_resolution_images_and_counts_agree():
    model = tiny_model("llama", vision_pooled_grid=1)
    features = projected_features(model.get_image_features(torch.randn(2, 3, 28, 28)))
    assert features.shape[1] == count_image_tokens(VisualTokenSpec.from_config(model.config), 28, 28) == 1
    torch.manual_seed(0)
    grid = torch.randn(1, 4, 3)  # a 2x2 grid pooled to 1x1 is its mean (bilinear, no corner alignment)
    from hybrid_vlm.anyres import pool_2d

    torch.testing.assert_close(pool_2d(grid, 1, (2, 2))[0, 0], grid[0].mean(0))


def test_anyres_without_metadata_is_a_clear_error():
    model = tiny_model("llama")
    _, inputs, _ = _anyres_inputs(model)
    with pytest.raises(ValueError, match="need image_sizes"):
        projected_features(model.get_image_features(inputs["pixel_values"]))
    # sizes alone are enough only with the config's pinpoints (LLaVA-NeXT's rule); this model has none
    with pytest.raises(ValueError, match="set config.image_grid_pinpoints"):
        projected_features(model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"]))


@pytest.mark.parametrize("overrides,message", [
    (dict(anyres_merge="flat"), "cannot add row newlines or un-pad"),
    (dict(vision_pooled_grid=5), "must be an int in 1..2"),
    (dict(anyres_merge="zigzag"), "Unknown anyres_merge"),
])
def test_inconsistent_anyres_settings_fail_at_construction(overrides, message):
    from conftest import tiny_config

    with pytest.raises(ValueError, match=message):
        tiny_config("llama", **overrides)


@pytest.mark.parametrize("layout", ["llava-next", "longllava-flat-pooled"])
def test_processor_expands_anyres_images_the_way_the_model_packs_them(layout):
    import hybrid_vlm
    from hybrid_vlm import HybridVLMProcessor

    options = LAYOUTS[layout]
    model, processor = hybrid_vlm.from_preset("jamba-llava-tiny", **options)
    anyres_processor = HybridVLMProcessor.from_model_config(
        model.config, processor.tokenizer,
        image_processor=HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=4),
    )
    images = [Image.new("RGB", (120, 50), (200, 10, 10)), Image.new("RGB", (40, 150), (10, 200, 10))]
    inputs = anyres_processor(text=["<image>Left?", "Right? <image>"], images=[[images[0]], [images[1]]],
                              padding=True, return_tensors="pt")
    features = projected_features(model.get_image_features(
        inputs["pixel_values"], image_sizes=inputs["image_sizes"], image_grids=inputs["image_grids"],
        num_patches=inputs["num_patches"],
    ))
    placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert placeholders == [f.shape[0] for f in features]
    assert set(anyres_processor.model_input_names) >= {"image_grids", "num_patches"}
    out = model.generate(**inputs, max_new_tokens=3)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
