"""Vamba's preprocessing rules: Qwen2-VL's smart_resize in the image processor and Vamba's own frame samplers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor, smart_resize
from hybrid_vlm.video_processing_hybrid_vlm import (
    HybridVLMVideoProcessor,
    middle_indices,
    vamba_middle_indices,
    vamba_uniform_indices,
)

QWEN2VL = {"min_pixels": 3136, "max_pixels": 12845056}


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((70, 100), (56, 112)),  # 2.5 rounds half to even (Python's round): 2 * 28, not 3 * 28
        ((84, 112), (84, 112)),  # already multiples of 28
        ((90, 120), (84, 112)),
        ((30, 40), (56, 84)),  # 28 x 28 is under min_pixels: scaled up, rounded up
        ((3000, 5000), (2772, 4620)),  # over max_pixels: scaled down, rounded down
    ],
)
def test_smart_resize_is_qwen2vls(size, expected):
    assert smart_resize(*size, 28, **QWEN2VL) == expected
    processor = HybridVLMImageProcessor(size=QWEN2VL, do_center_crop=False)
    assert processor.output_image_size(*size) == expected


def test_dynamic_resolution_processes_pixels_and_refuses_what_qwen2vl_refuses():
    processor = HybridVLMImageProcessor(size={**QWEN2VL, "factor": 28}, do_center_crop=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    assert tuple(processor(image, return_tensors="pt")["pixel_values"].shape) == (1, 3, 56, 112)
    saved = HybridVLMImageProcessor.from_dict(processor.to_dict())
    assert saved.size == {**QWEN2VL, "factor": 28}
    with pytest.raises(ValueError, match="smaller than 28 px"):
        processor(Image.new("RGB", (20, 100)))
    with pytest.raises(ValueError, match="do_center_crop=False"):
        HybridVLMImageProcessor(size=QWEN2VL, do_center_crop=True)
    with pytest.raises(ValueError, match="exceeds"):
        HybridVLMImageProcessor(size={"min_pixels": 10, "max_pixels": 5}, do_center_crop=False)


def test_vamba_middle_is_its_chat_scripts_rule_with_padding():
    assert vamba_middle_indices(40, 4) == [4, 14, 24, 34]
    assert middle_indices(40, 4) == [5, 15, 25, 35]  # our plain "middle" is another rule
    assert vamba_middle_indices(8, 4) == [0, 2, 4, 6]  # the parity pack's video case
    assert vamba_middle_indices(3, 5) == [0, 1, 2, 2, 2]  # short video: padded with its last frame
    assert vamba_middle_indices(10, 3) == [1, 4, 7]  # cuts 0, 3, 6, 10 (3.33 and 6.67 truncated)
    # The reference's cuts come from float64 linspace, truncated: linspace(0, 30, 23)[11] is 14.999..., so the cut
    # is 14 and frame 14 is picked where exact arithmetic (cut 15) would pick 15.
    assert vamba_middle_indices(30, 22)[10:12] == [13, 14]
    for total in range(1, 60):
        for count in range(1, 2 * total):
            picks = vamba_middle_indices(total, count)
            assert len(picks) == count and picks == sorted(picks) and 0 <= picks[0] and picks[-1] < total


def test_vamba_uniform_is_its_evaluation_rule():
    assert vamba_uniform_indices(40, 4) == [5, 15, 25, 35]
    assert vamba_uniform_indices(10, 3) == [1, 4, 8]  # cuts 0, 3, 6, 10 -> (6 + 10) // 2
    assert vamba_uniform_indices(3, 5) == [0, 1, 2]  # no padding: every frame once


def test_the_video_processor_samples_with_vambas_rules():
    frames = [np.full((28, 28, 3), i, dtype=np.uint8) for i in range(10)]
    processor = HybridVLMVideoProcessor(size=QWEN2VL, do_center_crop=False, sampling="vamba_middle", num_frames=4)
    picked = processor(frames, do_sample_frames=True)["video_metadata"][0]["frame_indices"]
    assert picked == vamba_middle_indices(10, 4) == [0, 3, 5, 8]  # cuts 0, 2, 5, 7, 10
    padded = processor(frames[:2], do_sample_frames=True, num_frames=5)["video_metadata"][0]["frame_indices"]
    assert padded == [0, 1, 1, 1, 1]
    uniform = processor(frames, do_sample_frames=True, sampling="vamba_uniform", num_frames=3)
    assert uniform["video_metadata"][0]["frame_indices"] == [1, 4, 8]
    assert processor(frames)["video_metadata"][0]["frame_indices"] == list(range(10))  # in memory: kept as given


def test_vambas_edge_limits_resize_first_then_smart_resize():
    """Vamba's chat loader with img_shortest_edge / img_longest_edge (its demo: 256 / 640): bicubic to the edge
    limits, then Qwen2-VL's smart_resize from there (not from the original size)."""
    from hybrid_vlm.image_processing_hybrid_vlm import edge_limited_size

    assert edge_limited_size(1000, 1500, 256, 640) == (426, 640)  # 640 / 1.5 = 426.67, truncated
    assert edge_limited_size(90, 120, 56, 112) == (84, 112)
    assert edge_limited_size(40, 300, 56, 112) == (56, 112)  # 112 / 7.5 = 14, raised to the shortest edge
    size = {**QWEN2VL, "shortest_edge": 256, "longest_edge": 640}
    processor = HybridVLMImageProcessor(size=size, do_center_crop=False)
    assert processor.output_image_size(1000, 1500) == (420, 644) != smart_resize(1000, 1500, 28, **QWEN2VL)
    array = np.random.default_rng(1).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)
    two_steps = Image.fromarray(array).resize((640, 426), resample=3).resize((644, 420), resample=3)
    expected = HybridVLMImageProcessor(size={"height": 420, "width": 644}, do_center_crop=False)(two_steps)
    np.testing.assert_allclose(processor(Image.fromarray(array))["pixel_values"], expected["pixel_values"], atol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        HybridVLMImageProcessor(size={**QWEN2VL, "shortest_edge": 700, "longest_edge": 640}, do_center_crop=False)


def test_edge_limits_on_the_parity_packs_decoded_video_give_its_frames():
    """The pack's video: 8 decoded 90x120 frames, sampled [0, 2, 4, 6] and resized by the reference to 84x112 with
    img_shortest_edge 56 / img_longest_edge 112; the processor with those limits gives its processor's frames."""
    from pathlib import Path

    case = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "vamba" / "cases" / "video"
    if not case.is_dir():
        pytest.skip(f"the Vamba parity pack is not at {case.parent.parent}")
    decoded = [Image.open(case / "decoded" / f"frame_{i:02d}.png").convert("RGB") for i in (0, 2, 4, 6)]
    handed = [Image.open(case / "frames" / f"frame_{i}.png").convert("RGB") for i in range(4)]
    size = {**QWEN2VL, "shortest_edge": 56, "longest_edge": 112}
    processor = HybridVLMImageProcessor(size=size, do_center_crop=False)
    plain = HybridVLMImageProcessor(size=QWEN2VL, do_center_crop=False)
    np.testing.assert_array_equal(processor(decoded)["pixel_values"], plain(handed)["pixel_values"])
