"""AnyRes: grid policies, tiling, the one token-count function, feature packing and the image processor's AnyRes mode.

Pixel tests use 28 px tiles so they run in milliseconds; token arithmetic runs at the papers' real sizes (336 px tiles,
14 px patches), where it costs nothing.
"""

from __future__ import annotations

import io
import json
import types

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
from transformers.image_utils import ChannelDimension
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, get_anyres_image_grid_shape, unpad_image
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from hybrid_vlm.anyres import (
    anyres_token_count,
    best_grid,
    best_grid_max_tiles,
    best_grid_pinpoints,
    fit_size,
    max_tiles_grids,
    merge_tiles,
    pack_anyres_features,
    pad_to,
    pinpoint_grids,
    pool_2d,
    select_real_views,
    split_tiles,
    unpadded_size,
    view_token_count,
)
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.token_counts import VisualTokenSpec

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CLIP_L_336 = VisualTokenSpec(patch_size=14, num_prefix_tokens=1)  # 24x24 patches per 336 px view
TILE = 28  # tiny tiles for pixel tests: 2x2 patches of 14 px
RAW = {"do_rescale": False, "do_normalize": False}  # pixel values stay 0..255 so tiles can be compared exactly


def _image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _processor(**kwargs) -> HybridVLMImageProcessor:
    kwargs.setdefault("size", {"shortest_edge": TILE})
    kwargs.setdefault("crop_size", TILE)
    return HybridVLMImageProcessor(**kwargs)


def _sizes(count: int, seed: int) -> list[tuple[int, int]]:
    """Image sizes from 1x1 to 8000x8000 with aspect ratios from 1:8 to 8:1, plus the hand-picked edge cases."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 1), (1, 8), (8, 1), (8000, 8000), (1000, 8000), (8000, 1000), (336, 336), (337, 335), (2688, 2688)]
    for _ in range(count):
        short = int(rng.integers(1, 8001))
        ratio = float(np.exp(rng.uniform(np.log(1 / 8), np.log(8))))
        height, width = (short, max(1, round(short * ratio))) if ratio >= 1 else (max(1, round(short / ratio)), short)
        sizes.append((min(height, 8000), min(width, 8000)))
    return sizes


# --------------------------------------------------------------------------------------------- MMJamba policy


def test_max_tiles_candidates_are_the_papers_eight_grids():
    grids = max_tiles_grids(4)
    assert sorted(grids) == sorted([(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (1, 4), (4, 1)])
    assert grids[0] == (1, 1) and len(set(grids)) == 8
    assert len(max_tiles_grids(1)) == 1
    assert all(r * c <= 64 for r, c in max_tiles_grids(64)) and (8, 8) in max_tiles_grids(64)


@pytest.mark.parametrize(
    ("image_size", "expected"),
    [
        # Each of the 8 grids, for an image with exactly its aspect ratio (w/h = cols/rows).
        ((336, 336), (1, 1)),  # ties with 2x2; 2x2 adds no pixels of the image, only padding -> 1x1
        ((672, 672), (2, 2)),  # ties with 1x1; 2x2 keeps 4x the image's pixels -> 2x2
        ((336, 672), (1, 2)),
        ((672, 336), (2, 1)),
        ((300, 900), (1, 3)),
        ((900, 300), (3, 1)),
        ((100, 400), (1, 4)),
        ((400, 100), (4, 1)),
        # Ratios between candidates: 1.4 is nearest 1 (1x1 or 2x2, by how many pixels the image has).
        ((100, 140), (1, 1)),
        ((500, 700), (2, 2)),
        # 1.5 is as far from 1 as from 2: 1x1, 2x2 and 1x2 tie; 600x900 fills 2x2 best, 200x300 fits 1x1 already.
        ((600, 900), (2, 2)),
        ((200, 300), (1, 1)),
        # Extreme ratios go to the most elongated grids.
        ((800, 100), (4, 1)),
        ((100, 800), (1, 4)),
        ((1, 1), (1, 1)),
    ],
)
def test_max_tiles_grid_choice_hand_picked(image_size, expected):
    assert best_grid_max_tiles(image_size, 4, 336) == expected
    assert best_grid(image_size, (336, 336), max_tiles=4) == expected


def test_max_tiles_grid_choice_at_inference_resolutions():
    # "Train short, infer long": 672 / 1344 / 2688 px squares at 4 / 16 / 64 tiles.
    assert best_grid((672, 672), 336, max_tiles=4) == (2, 2)
    assert best_grid((1344, 1344), 336, max_tiles=16) == (4, 4)
    assert best_grid((2688, 2688), 336, max_tiles=64) == (8, 8)
    # A small image is not forced into the largest square grid: 1x1..8x8 tie on aspect, 3x3 already holds 1000x1000.
    assert best_grid((1000, 1000), 336, max_tiles=64) == (3, 3)


def test_max_tiles_grid_is_always_a_closest_aspect_ratio():
    for height, width in _sizes(200, seed=1):
        rows, cols = best_grid_max_tiles((height, width), 9, 336)
        best = min(abs(width / height - c / r) for r, c in max_tiles_grids(9))
        assert abs(width / height - cols / rows) == pytest.approx(best, abs=1e-12)


def test_max_tiles_uses_the_tile_aspect_ratio_for_non_square_tiles():
    # 2:1 tiles: a square image is best served by 2 rows x 1 column.
    assert best_grid_max_tiles((400, 400), 4, (200, 400)) == (2, 1)


# --------------------------------------------------------------------------------------------- LLaVA-NeXT policy


def test_pinpoint_choice_equals_transformers_select_best_resolution():
    for height, width in _sizes(300, seed=2):
        expected = select_best_resolution((height, width), LLAVA_NEXT_PINPOINTS)
        rows, cols = best_grid_pinpoints((height, width), LLAVA_NEXT_PINPOINTS, 336)
        assert (rows * 336, cols * 336) == tuple(expected)
        assert (rows, cols) == tuple(get_anyres_image_grid_shape([height, width], LLAVA_NEXT_PINPOINTS, 336))
    assert pinpoint_grids(LLAVA_NEXT_PINPOINTS, 336) == [(1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]


def test_grid_policy_errors():
    with pytest.raises(ValueError, match="exactly one grid policy"):
        best_grid((10, 10), 336)
    with pytest.raises(ValueError, match="exactly one grid policy"):
        best_grid((10, 10), 336, max_tiles=4, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    with pytest.raises(ValueError, match="not multiples of the tile size"):
        best_grid_pinpoints((10, 10), [[336, 600]], 336)
    with pytest.raises(ValueError, match="max_tiles must be a positive int"):
        max_tiles_grids(0)
    with pytest.raises(ValueError, match="above the supported limit"):
        max_tiles_grids(10**6)
    with pytest.raises(ValueError, match="image_size"):
        best_grid((0, 10), 336, max_tiles=4)


# --------------------------------------------------------------------------------------------- tiling (pixels)


def test_fit_size_equals_transformers_get_patch_output_size():
    for height, width in _sizes(100, seed=3)[:60]:
        for target in ((336, 672), (672, 336), (1008, 1008), (28, 84)):
            image = np.empty((1, min(height, 600), min(width, 600)), np.uint8)
            expected = get_patch_output_size(image, target, input_data_format=ChannelDimension.FIRST)
            assert fit_size(image.shape[1:], target) == tuple(expected)


def test_split_and_merge_tiles_round_trip():
    image = np.arange(6 * 9 * 3).reshape(6, 9, 3)
    tiles = split_tiles(image, (2, 3), (3, 3))
    assert tiles.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(tiles[4], image[3:6, 3:6])  # row 1, column 1
    np.testing.assert_array_equal(merge_tiles(tiles, (2, 3)), image)
    with pytest.raises(ValueError, match="needs a 6x9 image"):
        split_tiles(image[:5], (2, 3), (3, 3))


@pytest.mark.parametrize(
    ("image_size", "policy", "grid"),
    [
        ((56, 84), {"max_tiles": 6}, (2, 3)),  # exact fit: no resize, no padding
        ((56, 70), {"image_grid_pinpoints": [[56, 84]]}, (2, 3)),  # no resize, 7 px padding left and right
        ((30, 50), {"max_tiles": 4}, (1, 2)),  # resized (30x50 -> 28x47), then padded
        ((90, 20), {"max_tiles": 4}, (4, 1)),
    ],
)
def test_tiles_reassemble_the_resized_padded_image(image_size, policy, grid):
    image = _image(*image_size, seed=5)
    out = _processor(**policy)(image, **RAW)
    assert out["image_grids"].tolist() == [list(grid)]
    assert out["num_patches"].tolist() == [grid[0] * grid[1] + 1]
    views = out["pixel_values"][0].transpose(0, 2, 3, 1)  # (views, H, W, C)
    target = (grid[0] * TILE, grid[1] * TILE)
    fitted = fit_size(image_size, target)
    resized = np.asarray(image.resize(fitted[::-1], PIL.Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_array_equal(merge_tiles(views[1:], grid), pad_to(resized, target))
    base = np.asarray(image.resize((TILE, TILE), PIL.Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_array_equal(views[0], base)
    if fitted == image_size:
        np.testing.assert_array_equal(pad_to(np.asarray(image, np.float32), target), merge_tiles(views[1:], grid))


def _llava_next_reference_class() -> type:
    """transformers' torchvision-free LLaVA-NeXT processor: the PIL class on 5.x, the slow class on 4.x."""
    cls = getattr(transformers, "LlavaNextImageProcessorPil", None)
    return cls if cls is not None else transformers.LlavaNextImageProcessor


def test_anyres_pixels_equal_transformers_llava_next_image_processor():
    pinpoints = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
    reference = _llava_next_reference_class()(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=pinpoints
    )
    ours = _processor(image_grid_pinpoints=pinpoints)
    images = [_image(30, 50, 0), _image(100, 20, 1), _image(17, 90, 2), _image(64, 64, 3), _image(5, 300, 4)]
    expected = reference(images, return_tensors="np")
    got = ours(images, return_tensors="np")
    np.testing.assert_allclose(got["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-5)
    assert got["image_sizes"].tolist() == np.asarray(expected["image_sizes"]).tolist()


# --------------------------------------------------------------------------------------------- token count & packing


def test_seed_token_numbers_are_reproduced():
    """MMJamba (MMJamba: "Multimodal Instruction Tuning with Hybrid State Space Models"): 672^2 -> 2304 in training; 672^2 / 1344^2 / 2688^2 -> 2880 / 9792 / 37440 at inference."""
    flat = {"newline": False, "unpad": True}
    assert anyres_token_count(CLIP_L_336, (672, 672), (2, 2), 336, base_view=False, **flat) == 2304
    for side, max_tiles, expected in ((672, 4, 2880), (1344, 16, 9792), (2688, 64, 37440)):
        grid = best_grid((side, side), 336, max_tiles=max_tiles)
        assert anyres_token_count(CLIP_L_336, (side, side), grid, 336, **flat) == expected
    # With LLaVA-NeXT's newline tokens the same images would be 2928 / 9888 / 37632.
    assert anyres_token_count(CLIP_L_336, (2688, 2688), (8, 8), 336) == 37440 + 8 * 24
    # LongLLaVA's pooling: 576 -> 144 tokens per view.
    assert view_token_count(CLIP_L_336, 336) == 576 and view_token_count(CLIP_L_336, 336, pooled_grid=12) == 144
    assert anyres_token_count(CLIP_L_336, (672, 672), (2, 2), 336, pooled_grid=12, newline=False) == 5 * 144


def test_token_count_equals_transformers_llava_next_processor():
    fake = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=LLAVA_NEXT_PINPOINTS),
        patch_size=14,
        num_additional_image_tokens=0,
        vision_feature_select_strategy="default",
    )
    fake._get_unpadded_features = types.MethodType(LlavaNextProcessor._get_unpadded_features, fake)
    for height, width in _sizes(300, seed=6):
        grid = best_grid((height, width), 336, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
        expected = LlavaNextProcessor._get_number_of_features(fake, height, width, 336, 336)
        assert anyres_token_count(CLIP_L_336, (height, width), grid, 336) == expected, (height, width)


def test_unpadded_size_equals_transformers_unpad_image():
    for height, width in _sizes(300, seed=7):
        for feature_size in ((24, 48), (48, 24), (48, 48), (72, 24), (12, 36), (96, 96)):
            features = torch.zeros(2, *feature_size)
            assert unpadded_size(feature_size, (height, width)) == tuple(
                unpad_image(features, [height, width]).shape[1:]
            )


def test_packing_equals_transformers_llava_next_pack_image_features():
    torch.manual_seed(0)
    dim = 8
    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(
            vision_config=types.SimpleNamespace(image_size=336, patch_size=14),
            image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        )
    )
    newline = torch.randn(dim)
    for height, width in [(500, 300), (300, 500), (336, 336), (100, 1000), (1000, 120), (800, 801)]:
        grid = best_grid((height, width), 336, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
        views = torch.randn(1 + grid[0] * grid[1], 576, dim)
        sizes = torch.tensor([[height, width]])
        for line in (newline, None):
            (expected,), _ = LlavaNextModel.pack_image_features(fake, [views], sizes, "default", image_newline=line)
            got = pack_anyres_features(views[0], views[1:], grid, (height, width), newline_embedding=line)
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("prefix", [0, 1])
def test_packed_length_equals_token_count_everywhere(prefix):
    """The model-side packing and the count agree for every size, grid and option (processor == model)."""
    rng = np.random.default_rng(8 + prefix)
    spec = VisualTokenSpec(14, 1, "full" if prefix else "default")
    dim, tile = 4, 336
    grid_tokens = 24 * 24
    for index, (height, width) in enumerate(_sizes(120, seed=9 + prefix)):
        policy = (
            {"max_tiles": int(rng.integers(1, 17))} if index % 2 else {"image_grid_pinpoints": LLAVA_NEXT_PINPOINTS}
        )
        grid = best_grid((height, width), tile, **policy)
        views = torch.randn(1 + grid[0] * grid[1], prefix + grid_tokens, dim)
        for pooled in (None, 12, 7):
            for newline in (False, True):
                for unpad in (False, True):
                    for base_view in (False, True):
                        packed = pack_anyres_features(
                            views[0] if base_view else None,
                            views[1:],
                            grid,
                            (height, width),
                            newline_embedding=torch.zeros(dim) if newline else None,
                            pooled_grid=pooled,
                            unpad=unpad,
                            num_prefix_tokens=prefix,
                        )
                        count = anyres_token_count(spec, (height, width), grid, tile, pooled, newline, base_view, unpad)
                        assert packed.shape == (count, dim), (height, width, grid, pooled, newline, unpad, base_view)


def test_pooling_before_packing_gives_the_same_count_and_tokens():
    """LongLLaVA pools before the projector: pool_2d per view, then pack without pooled_grid; counts agree."""
    views = torch.randn(5, 576, 6)
    pooled = pool_2d(views, 12)
    early = pack_anyres_features(pooled[0], pooled[1:], (2, 2), (500, 700))
    late = pack_anyres_features(views[0], views[1:], (2, 2), (500, 700), pooled_grid=12)
    torch.testing.assert_close(early, late)
    assert early.shape[0] == anyres_token_count(CLIP_L_336, (500, 700), (2, 2), 336, pooled_grid=12, newline=False)


def test_flat_merge_keeps_tiles_whole_for_marker_layouts():
    views = torch.arange(5 * 4 * 1, dtype=torch.float32).reshape(5, 4, 1)  # 2x2 patch grid per view
    packed = pack_anyres_features(views[0], views[1:], (2, 2), (30, 70), unpad=False, merge="flat")
    torch.testing.assert_close(packed, views.reshape(-1, 1))
    spatial = pack_anyres_features(None, views[1:], (2, 2), (30, 70), unpad=False)
    assert spatial[:4, 0].tolist() == [4.0, 5.0, 8.0, 9.0]  # first feature row runs across tiles 0 and 1
    with pytest.raises(ValueError, match="merge='flat'"):
        pack_anyres_features(views[0], views[1:], (2, 2), (30, 70), merge="flat")


def test_pool_2d():
    features = torch.randn(3, 576, 5)
    pooled = pool_2d(features, 12)
    assert pooled.shape == (3, 144, 5)
    constant = torch.full((2, 576, 4), 3.25)
    torch.testing.assert_close(pool_2d(constant, 12), torch.full((2, 144, 4), 3.25))
    # At a factor of 2, bilinear pooling is the mean of each 2x2 block.
    maps = features.transpose(1, 2).reshape(3, 5, 24, 24)
    block_mean = torch.nn.functional.avg_pool2d(maps, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, block_mean)
    assert pool_2d(torch.randn(1, 6, 2), (1, 2), in_grid=(2, 3)).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="not a square grid"):
        pool_2d(torch.randn(1, 6, 2), 1)
    with pytest.raises(ValueError, match="cannot pool"):
        pool_2d(torch.randn(1, 4, 2), 3)


def test_pack_errors_are_clear():
    with pytest.raises(ValueError, match=r"needs tile features of shape \(4, tokens, dim\)"):
        pack_anyres_features(None, torch.zeros(3, 4, 2), (2, 2), (10, 10))
    with pytest.raises(ValueError, match="newline_embedding must have shape"):
        pack_anyres_features(None, torch.zeros(4, 4, 2), (2, 2), (10, 10), newline_embedding=torch.zeros(3))
    with pytest.raises(ValueError, match="every view must have the same size"):
        pack_anyres_features(torch.zeros(9, 2), torch.zeros(4, 4, 2), (2, 2), (10, 10))
    with pytest.raises(ValueError, match="larger than"):
        anyres_token_count(CLIP_L_336, (10, 10), (1, 1), 336, pooled_grid=30)


def test_select_real_views():
    pixel_values = torch.arange(2 * 3).float().reshape(2, 3, 1, 1, 1)
    assert select_real_views(pixel_values, torch.tensor([3, 1])).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="does not fit"):
        select_real_views(pixel_values, [4, 1])


# --------------------------------------------------------------------------------------------- image processor


def test_anyres_is_off_by_default_and_single_resolution_is_unchanged():
    processor = _processor()
    assert processor.anyres is False and processor.max_tiles is None and processor.image_grid_pinpoints is None
    out = processor(_image(40, 60))
    assert set(out) == {"pixel_values", "image_sizes"} and out["pixel_values"].shape == (1, 3, TILE, TILE)
    # A grid policy alone turns AnyRes on; an explicit anyres=False keeps it off (the policy is kept for later).
    assert _processor(max_tiles=4).anyres is True
    assert _processor(max_tiles=4, anyres=False)(_image(40, 60))["pixel_values"].shape == (1, 3, TILE, TILE)


def test_per_call_max_tiles_override_changes_the_grid():
    processor = _processor(max_tiles=4)
    image = _image(8 * TILE, 8 * TILE)
    trained = processor(image)
    assert trained["image_grids"].tolist() == [[2, 2]] and trained["pixel_values"].shape == (1, 5, 3, TILE, TILE)
    longer = processor(image, max_tiles=64)
    assert longer["image_grids"].tolist() == [[8, 8]] and longer["pixel_values"].shape == (1, 65, 3, TILE, TILE)
    assert processor.max_tiles == 4  # the stored setting is untouched
    assert processor.anyres_layout(8 * TILE, 8 * TILE, max_tiles=64) == ((8, 8), 65, (TILE, TILE))
    assert processor.anyres_layout(8 * TILE, 8 * TILE).grid == (2, 2)
    # A policy given per call replaces the stored one for that call.
    pinned = _processor(image_grid_pinpoints=[[TILE, 2 * TILE]])
    assert pinned(image)["image_grids"].tolist() == [[1, 2]]
    assert pinned(image, max_tiles=16)["image_grids"].tolist() == [[4, 4]]
    assert pinned.anyres_layout(10, 10, max_tiles=1).num_patches == 2
    assert processor.output_image_size(500, 300) == (TILE, TILE)


def test_batches_with_different_tile_counts_are_zero_padded():
    processor = _processor(max_tiles=6)
    images = [_image(28, 28, 0), _image(56, 84, 1), _image(100, 30, 2)]
    out = processor(images, return_tensors="pt")
    grids = out["image_grids"].tolist()
    assert grids == [[1, 1], [2, 3], [3, 1]]
    assert out["num_patches"].tolist() == [2, 7, 4]
    assert out["pixel_values"].shape == (3, 7, 3, TILE, TILE) and out["pixel_values"].dtype == torch.float32
    assert out["image_sizes"].tolist() == [[28, 28], [56, 84], [100, 30]]
    for i, image in enumerate(images):
        alone = processor(image, return_tensors="pt")["pixel_values"][0]
        real = int(out["num_patches"][i])
        torch.testing.assert_close(out["pixel_values"][i, :real], alone)
        assert not out["pixel_values"][i, real:].any()
    assert select_real_views(out["pixel_values"], out["num_patches"]).shape == (13, 3, TILE, TILE)
    channels_last = processor(images, data_format="channels_last")["pixel_values"]
    assert channels_last.shape == (3, 7, TILE, TILE, 3)


def _with_exif_orientation(image: PIL.Image.Image, orientation: int) -> PIL.Image.Image:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    buffer.seek(0)
    return PIL.Image.open(buffer)


def test_mode_conversions_still_work_in_anyres_mode():
    processor = _processor(max_tiles=4)
    rgb = _image(30, 62, 3)

    def views(image, **kw):
        return processor(image, **RAW, **kw)["pixel_values"]

    gray = rgb.convert("L")
    np.testing.assert_array_equal(views(gray), views(gray.convert("RGB")))
    cmyk = rgb.convert("CMYK")
    np.testing.assert_array_equal(views(cmyk), views(cmyk.convert("RGB")))
    palette = rgb.convert("P")
    np.testing.assert_array_equal(views(palette), views(palette.convert("RGB")))
    transparent = rgb.convert("RGBA")
    transparent.putalpha(0)
    white = views(transparent)
    assert white[0, :1].min() == 255  # the global view is all white (alpha composited, not dropped)
    array_chw = torch.from_numpy(np.asarray(rgb).transpose(2, 0, 1).copy())
    np.testing.assert_array_equal(views(array_chw), views(rgb))
    # 16-bit and float inputs resample in float: compare on smooth content, where 8-bit rounding stays within 1.
    y, x = np.mgrid[0:30, 0:62].astype(np.float32)
    smooth = np.stack([x / 62, y / 30, 0.5 + 0.4 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=-1)
    smooth_rgb = PIL.Image.fromarray(np.rint(smooth * 255).astype(np.uint8))
    np.testing.assert_allclose(views(np.asarray(smooth_rgb, np.float32) / 255.0), views(smooth_rgb), atol=1.5)
    smooth_gray = smooth_rgb.convert("L")
    sixteen = PIL.Image.fromarray((np.asarray(smooth_gray, np.uint16) * 257).astype(np.uint16))
    np.testing.assert_allclose(views(sixteen), views(smooth_gray), atol=1.5)
    # EXIF orientation 6 (rotate 90 degrees): the grid is chosen for the upright image.
    rotated = _with_exif_orientation(_image(30, 90), 6)
    out = processor(rotated)
    assert out["image_sizes"].tolist() == [[90, 30]] and out["image_grids"].tolist() == [[3, 1]]


def test_anyres_save_load_round_trip(tmp_path):
    processor = _processor(image_grid_pinpoints=[[TILE, 2 * TILE], [2 * TILE, TILE]])
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["anyres"] is True and saved["max_tiles"] is None
    assert saved["image_grid_pinpoints"] == [[TILE, 2 * TILE], [2 * TILE, TILE]]
    loaded = HybridVLMImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = _image(50, 20)
    np.testing.assert_array_equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    # Train short, infer long at load time: a load-time policy replaces the saved one.
    longer = HybridVLMImageProcessor.from_pretrained(tmp_path, max_tiles=16)
    assert longer.max_tiles == 16 and longer.image_grid_pinpoints is None and longer.anyres is True


def test_anyres_parameter_errors():
    with pytest.raises(ValueError, match="not both"):
        _processor(max_tiles=4, image_grid_pinpoints=[[TILE, TILE]])
    with pytest.raises(ValueError, match="AnyRes needs a grid policy"):
        _processor(anyres=True)
    with pytest.raises(ValueError, match="not multiples of the tile size"):
        _processor(image_grid_pinpoints=[[TILE, 30]])
    with pytest.raises(ValueError, match="fixed view size"):
        HybridVLMImageProcessor(size={"shortest_edge": TILE}, do_center_crop=False, max_tiles=4)
    with pytest.raises(ValueError, match="max_tiles must be a positive int"):
        _processor(max_tiles=0)
    with pytest.raises(TypeError, match="anyres must be"):
        _processor(anyres="yes", max_tiles=2)
    single = _processor()
    with pytest.raises(ValueError, match=r"only apply to AnyRes.*anyres=True"):
        single(_image(10, 10), max_tiles=4)
    assert single(_image(10, 10), anyres=True, max_tiles=4)["image_grids"].tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="anyres_layout needs AnyRes"):
        single.anyres_layout(10, 10)
