"""LLaVA-OneVision -> HybridVLM: the anyres_max_N feature cap and the pooled video layout, with logit parity."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

import hybrid_vlm  # noqa: F401  (registers the Auto classes)
from hybrid_vlm.anyres import anyres_token_count, best_grid_pinpoints
from hybrid_vlm.convert import convert
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import VisualTokenSpec, capped_feature_size, count_video_tokens, video_runs

TILE = 42  # 3x3 patches of 14 px: an odd grid, so the 2x pooling and the cap interpolate for real
PINPOINTS = [[42, 84], [84, 42], [84, 84], [126, 126], [42, 126], [126, 42]]
VISION = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, image_size=TILE, patch_size=14)
TEXT = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def _source(folder, aspect: str = "anyres_max_1"):
    tokenizer = load_tiny_tokenizer()
    image_id, video_id = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.convert_tokens_to_ids("<video>")
    config = LlavaOnevisionConfig(
        vision_config=VISION, text_config=dict(TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id),
        image_token_index=image_id, video_token_index=video_id, image_grid_pinpoints=PINPOINTS,
        vision_aspect_ratio=aspect, vision_feature_select_strategy="full", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        newline = model.model.image_newline if hasattr(model.model, "image_newline") else model.image_newline
        newline.normal_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, image_id, video_id


def test_cap_arithmetic_matches_the_reference_rule():
    # 9x9 un-padded map, at most 1 view of 3x3: ratio 3 -> 3x3; a map within 1.1x of the cap is kept
    assert capped_feature_size(9, 9, 1, 9) == (3, 3)
    assert capped_feature_size(3, 3, 1, 9) == (3, 3)
    assert capped_feature_size(7, 5, 2, 9) == (int(7 // (35 / 18) ** 0.5), int(5 // (35 / 18) ** 0.5))
    assert capped_feature_size(9, 9, None, 9) == (9, 9)
    spec = VisualTokenSpec(patch_size=14, num_prefix_tokens=0, video_pool_stride=2, video_newline=True)
    assert video_runs(spec, 3, TILE, TILE) == [4, 4, 5]  # ceil(3/2)^2 per frame, the newline after the last
    assert count_video_tokens(spec, 3, TILE, TILE, include_markers=False) == 13


@pytest.mark.parametrize("sizes", [[(130, 120), (40, 100)], [(60, 200)]])
def test_onevision_image_logits_match_transformers(tmp_path, sizes):
    source, image_id, _ = _source(tmp_path / "src")
    report = convert(tmp_path / "src", tmp_path / "dst", "llava-onevision", progress=False)
    assert not report.missing
    from transformers import AutoModelForImageTextToText

    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst").eval()
    assert ours.config.anyres_max_feature_tiles == 1 and ours.config.video_pool_stride == 2
    spec = ours.model.visual_token_spec
    grids = [best_grid_pinpoints(size, PINPOINTS, TILE) for size in sizes]
    views = [1 + rows * cols for rows, cols in grids]
    torch.manual_seed(1)
    pixel_values = torch.zeros(len(sizes), max(views), 3, TILE, TILE)
    for i, count in enumerate(views):
        pixel_values[i, :count] = torch.randn(count, 3, TILE, TILE)
    counts = [anyres_token_count(spec, size, grid, TILE, newline=True, unpad=True) for size, grid in zip(sizes, grids)]
    uncapped = [anyres_token_count(VisualTokenSpec(14, 0, "full"), s, g, TILE) for s, g in zip(sizes, grids)]
    assert counts[0] < uncapped[0]  # the cap really applies to the large image
    ids = [1, 30]
    for count in counts:
        ids += [image_id] * count + [31]
    ids = torch.tensor([ids])
    extra = {"image_sizes": torch.tensor(sizes), "image_grids": torch.tensor(grids), "num_patches": torch.tensor(views)}
    with torch.no_grad():
        expected = source(input_ids=ids, pixel_values=pixel_values, image_sizes=extra["image_sizes"]).logits
        got = ours(input_ids=ids, pixel_values=pixel_values, **extra).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_onevision_video_logits_match_transformers_and_the_processor_counts(tmp_path):
    source, _, video_id = _source(tmp_path / "src", aspect="anyres_max_9")
    convert(tmp_path / "src", tmp_path / "dst", "llava-onevision", progress=False)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    frames = torch.randint(0, 255, (3, 50, 60, 3), dtype=torch.uint8).numpy()
    inputs = processor(text="<|im_start|>user\n<video>What happens?<|im_end|>", videos=[frames], return_tensors="pt",
                       num_frames=3)
    assert int((inputs["input_ids"] == video_id).sum()) == 3 * 4 + 1  # 3x3 -> 2x2 per frame, one newline
    with torch.no_grad():
        expected = source(input_ids=inputs["input_ids"],
                          pixel_values_videos=inputs["pixel_values_videos"].reshape(1, 3, 3, TILE, TILE)).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(anyres_max_feature_tiles=9, anyres_merge="flat", image_newline=False, anyres_unpad=False),
         "anyres_merge='spatial'"),
        (dict(video_newline=True), "set image_newline=True"),
        (dict(video_pool_stride=2, projector_type="pool2d_mlp", projector_pooled_grid=1), "keeps one token per patch"),
        (dict(video_pool_stride=0), "positive int"),
    ],
)
def test_onevision_settings_are_validated(fields, message):
    from hybrid_vlm import preset_config

    with pytest.raises(ValueError, match=message):
        preset_config("llava-tiny", **fields)
