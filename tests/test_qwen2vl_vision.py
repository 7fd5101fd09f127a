"""Qwen2-VL's vision tower behind HybridVLM's vision seam, checked against transformers' own Qwen2-VL pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from hybrid_vlm.qwen2vl_vision import (
    Qwen2VLVisionEncoder,
    is_qwen2vl_vision_config,
    patchify,
    qwen2vl_vision_config,
)

TINY_QWEN2VL_VISION = {
    "model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "num_heads": 4, "hidden_size": 48, "mlp_ratio": 2,
}


def hf_image_processor():
    """transformers' Qwen2-VL image processor that runs without torchvision on this line."""
    try:  # 5.x: the PIL backend (the default one needs torchvision)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil()
    except ImportError:  # 4.x: the slow (numpy) processor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor()


def random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def normalised(images, processor) -> torch.Tensor:
    """(B, 3, H, W) pixels rescaled and normalised as the Qwen2-VL processor does, without resizing."""
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    arrays = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 for image in images]
    return torch.stack([(a - mean) / std for a in arrays])


def merged_output(model, pixel_values, grid_thw) -> torch.Tensor:
    output = model(pixel_values, grid_thw=grid_thw)
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # 4.x: tensor; 5.x: pooler_output


@pytest.fixture(scope="module")
def encoder_and_reference():
    torch.manual_seed(0)
    encoder = Qwen2VLVisionEncoder(qwen2vl_vision_config(TINY_QWEN2VL_VISION)).eval()
    reference = Qwen2VisionTransformerPretrainedModel(qwen2vl_vision_config(TINY_QWEN2VL_VISION)).eval()
    result = reference.load_state_dict(encoder.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return encoder, reference


@pytest.mark.parametrize("sizes", [[(56, 84)], [(84, 56), (84, 56)], [(112, 112)]])
def test_patchify_matches_the_hf_image_processor(sizes):
    processor = hf_image_processor()
    images = random_images(sizes)
    # Sides that are multiples of 28 within the pixel budget: the HF processor keeps the size.
    hf = processor(images=images, return_tensors="pt")
    flat, grid_thw = patchify(normalised(images, processor))
    assert torch.equal(grid_thw, hf["image_grid_thw"])
    torch.testing.assert_close(flat, hf["pixel_values"].float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("sizes", [[(56, 84)], [(84, 56), (84, 56)]])
def test_features_equal_transformers_qwen2vl_pipeline(encoder_and_reference, sizes):
    """Our (B, 3, H, W) path == transformers' processor output through transformers' vision model (with merger)."""
    encoder, reference = encoder_and_reference
    processor = hf_image_processor()
    images = random_images(sizes, seed=1)
    hf = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = merged_output(reference, hf["pixel_values"], hf["image_grid_thw"])
        (ours,) = encoder.encode_patch_maps(normalised(images, processor), [-2])
    height, width = sizes[0]
    assert ours.shape == (len(sizes), (height // 28) * (width // 28), TINY_QWEN2VL_VISION["hidden_size"])
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), expected, rtol=0, atol=1e-5)
    # Per image: batching never mixes images (attention is per image).
    with torch.no_grad():
        (alone,) = encoder.encode_patch_maps(normalised(images[-1:], processor), [-1])
    torch.testing.assert_close(ours[-1:], alone, rtol=0, atol=1e-5)


def test_merged_tokens_are_in_raster_order():
    """Without blocks, a merged token depends only on its 2x2 window: perturbing window (r, c) of a 3x4-window image
    changes token r * 4 + c and nothing else."""
    torch.manual_seed(0)
    encoder = Qwen2VLVisionEncoder({**TINY_QWEN2VL_VISION, "depth": 0}).eval()
    pixels = torch.randn(1, 3, 84, 112)
    row, col = 2, 1
    changed = pixels.clone()
    changed[:, :, row * 28 + 5, col * 28 + 20] += 1.0
    with torch.no_grad():
        base, moved = encoder(pixels), encoder(changed)
    differs = (base - moved).abs().amax(-1)[0] > 0
    assert differs.nonzero().flatten().tolist() == [row * 4 + col]


def test_tower_attributes_and_refusals(encoder_and_reference):
    encoder, _ = encoder_and_reference
    assert encoder.patch_size == 28 and encoder.map_widths == (48,)
    pixels = torch.zeros(1, 3, 56, 56)
    for layers in ([-3], [0], [-2, -1]):
        with pytest.raises(ValueError, match="vision_feature_layer"):
            encoder.encode_patch_maps(pixels, layers)
    with pytest.raises(ValueError, match="multiples of 28"):
        encoder.encode_patch_maps(torch.zeros(1, 3, 56, 42), [-1])
    with pytest.raises(ValueError, match="3, height, width"):
        encoder.encode_patch_maps(torch.zeros(1, 6, 56, 56), [-1])


def test_vision_config_from_either_line_and_from_a_full_config():
    """4.x saves the vision config with model_type 'qwen2_vl', 5.x with 'qwen2_vl_vision'; a full Qwen2-VL config
    stands for its vision part."""
    fields = {k: v for k, v in TINY_QWEN2VL_VISION.items() if k != "model_type"}
    configs = [
        qwen2vl_vision_config({"model_type": "qwen2_vl_vision", **fields}),
        qwen2vl_vision_config({"model_type": "qwen2_vl", **fields}),
        qwen2vl_vision_config({"model_type": "qwen2_vl", "vision_config": dict(fields), "text_config": {}}),
    ]
    for config in configs:
        assert is_qwen2vl_vision_config(config)
        assert {k: getattr(config, k) for k in fields} == fields
    with pytest.raises(ValueError, match="not a Qwen2-VL vision config"):
        qwen2vl_vision_config({"model_type": "clip_vision_model"})
