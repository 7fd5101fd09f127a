"""Property: for any image size (1x1 .. 8000x8000, aspect 1:8 .. 8:1), tiling setting and layout, the processor's
token counts equal the model's feature counts, and what the processor writes is exactly its count with markers.

The model side runs `get_image_features` of tiny models on random views (only the grid, not the picture, decides the
count), so no 8000 x 8000 image is ever built.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hybrid_vlm
from hybrid_vlm import HybridVLMImageProcessor, HybridVLMProcessor
from hybrid_vlm.compat import projected_features
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import count_layout_tokens

# Model settings per case, and the layout the processor writes for it.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llava-next": ("llava", dict(image_newline=True)),
    "llava-no-newline": ("llava", dict(image_newline=False)),
    "llava-pooled-keep-padding": ("llava", dict(image_newline=True, anyres_unpad=False, vision_pooled_grid=2)),
    "longllava-flat": ("longllava", dict(image_newline=False, anyres_unpad=False, anyres_merge="flat")),
    "longllava-flat-pooled": (
        "longllava", dict(image_newline=False, anyres_unpad=False, anyres_merge="flat", vision_pooled_grid=2)
    ),
    "qwen2vl": ("qwen2vl", dict(image_newline=True)),
    "full-strategy": ("llava", dict(image_newline=True, vision_feature_select_strategy="full")),
}
PINPOINTS = [
    [[56, 56]],
    [[56, 112], [112, 56], [112, 112]],
    [[56, 168], [168, 56], [112, 112], [56, 224], [224, 56]],
    [[112, 224], [224, 112], [168, 168], [56, 392]],
]


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[Any, HybridVLMProcessor]]:
    tokenizer = load_tiny_tokenizer()
    tokenizer.add_tokens(["<|vision_start|>", "<|vision_end|>"], special_tokens=True)
    out = {}
    for name, (layout, options) in CASES.items():
        model, _ = hybrid_vlm.from_preset("llava-tiny", text_config={"vocab_size": len(tokenizer)}, **options)
        image_processor = HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=4)
        processor = HybridVLMProcessor.from_model_config(
            model.config, tokenizer, image_processor=image_processor, layout=layout
        )
        out[name] = (model, processor)
    return out


@st.composite
def image_sizes(draw: st.DrawFn) -> tuple[int, int]:
    height = draw(st.integers(1, 8000))
    width = draw(st.integers(max(1, -(-height // 8)), min(8000, 8 * height)))
    return height, width


tilings = st.one_of(
    st.integers(1, 9).map(lambda n: {"max_tiles": n, "image_grid_pinpoints": None}),
    st.sampled_from(PINPOINTS).map(lambda p: {"image_grid_pinpoints": p, "max_tiles": None}),
    st.just({"anyres": False}),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=image_sizes(), tiling=tilings, case=st.sampled_from(sorted(CASES)))
def test_processor_counts_equal_model_features(built, size, tiling, case):
    model, processor = built[case]
    height, width = size
    layout = processor._anyres_layout(height, width, **tiling)
    if layout is None:  # single resolution: one view at the encoder's size
        tile = processor.image_processor.output_image_size(height, width, **tiling)
        pixel_values = torch.randn(1, 3, *tile)
        image_inputs: dict[str, Any] = {"pixel_values": pixel_values}
        with torch.no_grad():
            features = projected_features(model.model.get_image_features(pixel_values))[0]
    else:
        views = layout.num_patches
        pixel_values = torch.randn(1, views, 3, *layout.tile_size)
        image_inputs = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor([[height, width]]),
            "image_grids": torch.tensor([layout.grid]),
            "num_patches": torch.tensor([views]),
        }
        with torch.no_grad():
            features = projected_features(model.model.get_image_features(**image_inputs))[0]
    # the processor's counts, without and with markers
    assert processor.image_token_count(height, width, include_markers=False, **tiling) == features.shape[0]
    with_markers = processor.image_token_count(height, width, **tiling)
    # ... and what it writes for the same image: the model's feature count in image tokens, the rest markers
    written = processor.replace_image_token(image_inputs, 0)
    ids = processor.tokenizer(written, add_special_tokens=False)["input_ids"]
    assert ids.count(processor.image_token_id) == features.shape[0]
    assert len(ids) == with_markers
    runs = [features.shape[0]] if processor.image_layout != "longllava" or layout is None else None
    if runs is not None:
        assert with_markers == count_layout_tokens(processor._image_token_layout, "image", runs)
    else:  # longllava AnyRes: `\n` between the global view and each of the grid's tile rows
        assert len(ids) == features.shape[0] + 2 + layout.grid[0]
