"""Qwen2-VL's vision tower behind HybridVLM's vision seam, checked against transformers' own Qwen2-VL pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from hybrid_vlm.compat import projected_features
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


# ------------------------------------------------------------------------------------------------ inside HybridVLM


@pytest.fixture(scope="module")
def tiny_preset():
    import hybrid_vlm

    return hybrid_vlm.from_preset("vamba-qwen2vl-tiny")


def test_token_spec_processor_and_identity_projector(tiny_preset):
    from hybrid_vlm.projectors import IdentityProjector
    from hybrid_vlm.token_counts import count_image_tokens, vision_prefix_token_count

    model, processor = tiny_preset
    spec = model.model.visual_token_spec
    assert (spec.patch_size, spec.num_prefix_tokens) == (28, 0)
    assert vision_prefix_token_count(model.config.vision_config) == 0
    assert count_image_tokens(spec, 448, 336) == 16 * 12
    assert isinstance(model.model.vision_tower, Qwen2VLVisionEncoder)
    assert isinstance(model.model.multi_modal_projector, IdentityProjector)
    assert not list(model.model.multi_modal_projector.parameters())
    image_processor = processor.image_processor
    assert image_processor.size == {"height": 448, "width": 448} and not image_processor.do_center_crop
    hf = hf_image_processor()
    assert list(image_processor.image_mean) == pytest.approx(hf.image_mean)
    assert list(image_processor.image_std) == pytest.approx(hf.image_std)
    pixels = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        features = projected_features(model.model.get_image_features(pixels))
        (tower,) = model.model.vision_tower.encode_patch_maps(pixels, [-1])
    features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
    torch.testing.assert_close(features.reshape(tower.shape), tower, rtol=0, atol=0)


def test_processor_and_model_equal_transformers_pipeline(tiny_preset):
    """A 448x448 picture: HybridVLM's processor + tower == Qwen2-VL's processor + transformers' vision model."""
    model, processor = tiny_preset
    (image,) = random_images([(448, 448)], seed=3)
    ours = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    hf_processor = hf_image_processor()
    hf = hf_processor(images=[image], return_tensors="pt")
    assert hf["image_grid_thw"].tolist() == [[1, 32, 32]]
    flat, _ = patchify(ours)
    torch.testing.assert_close(flat, hf["pixel_values"].float(), rtol=0, atol=1e-5)
    reference = Qwen2VisionTransformerPretrainedModel(model.config.vision_config).eval()
    reference.load_state_dict(model.model.vision_tower.state_dict())
    with torch.no_grad():
        expected = merged_output(reference, hf["pixel_values"], hf["image_grid_thw"])
        got = projected_features(model.model.get_image_features(ours))
    got = torch.cat(list(got)) if isinstance(got, (list, tuple)) else got
    torch.testing.assert_close(got.reshape(expected.shape), expected, rtol=0, atol=1e-5)


def test_chat_generate_and_save_load_roundtrip(tiny_preset, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, processor = tiny_preset
    (image,) = random_images([(200, 300)], seed=4)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 256  # 448 / 28 = 16 per side
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model.vision_tower, Qwen2VLVisionEncoder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits, rtol=0, atol=1e-5)


def test_folder_loads_on_the_other_transformers_line(tmp_path, other_python):
    """The vision config is 'qwen2_vl_vision' on 5.x and 'qwen2_vl' on 4.x: a folder saved on one line loads on the
    other with the same logits (once per other line: HYBRID_VLM_OTHER_PYTHON may list several, as .ci/run does)."""
    import subprocess
    import sys
    from pathlib import Path

    other = other_python
    helper = Path(__file__).with_name("cross_version_helper.py")
    saved = tmp_path / "saved_here"
    subprocess.run([sys.executable, str(helper), "save", str(saved), "vamba-qwen2vl-tiny"], check=True)
    result = subprocess.run([other, str(helper), "check", str(saved)], check=True, capture_output=True, text=True)
    assert float(result.stdout.split("MAXDIFF")[-1]) < 1e-4
    there = tmp_path / "saved_there"
    subprocess.run([other, str(helper), "save", str(there), "vamba-qwen2vl-tiny"], check=True)
    result = subprocess.run([sys.executable, str(helper), "check", str(there)], check=True, capture_output=True,
                            text=True)
    assert float(result.stdout.split("MAXDIFF")[-1]) < 1e-4


def test_config_validation_for_the_qwen2vl_tower():
    from hybrid_vlm.configuration_hybrid_vlm import HybridVLMConfig
    from hybrid_vlm.presets import TINY_QWEN2

    text = {**TINY_QWEN2, "vocab_size": 100}
    vision = {**TINY_QWEN2VL_VISION, "hidden_size": 64}
    for model_type in ("qwen2_vl_vision", "qwen2_vl"):  # either line's saved name
        config = HybridVLMConfig(vision_config={**vision, "model_type": model_type}, text_config=text,
                                 projector_type="identity")
        assert is_qwen2vl_vision_config(config.vision_config)
        assert HybridVLMConfig.from_dict(config.to_dict()).vision_config.depth == 2
    with pytest.raises(ValueError, match="vision_feature_layer"):
        HybridVLMConfig(vision_config=vision, text_config=text, projector_type="identity", vision_feature_layer=-3)
    with pytest.raises(ValueError, match="fixed patch grid"):
        HybridVLMConfig(vision_config=vision, text_config=text, vision_pooled_grid=4)
    with pytest.raises(ValueError, match="as wide as the language model"):
        from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration

        HybridVLMForConditionalGeneration(HybridVLMConfig(
            vision_config={**vision, "hidden_size": 32}, text_config=text, projector_type="identity"
        ))


def test_vamba_10b_shape_on_meta():
    import hybrid_vlm

    model, processor = hybrid_vlm.from_preset("vamba-10b", device="meta")
    assert processor is None
    total = model.num_parameters()
    vision = sum(p.numel() for n, p in model.named_parameters() if ".vision_tower." in n)
    added = sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in (".cross_attn.", ".vision_mixer.",
                                                                                          ".alpha")))
    # Qwen2-VL-7B: 675.8M vision tower (ViT + merger) + 7.6B LM (untied head); Vamba adds ~3.0B (Vamba, arXiv:2503.11579, sec. 4.3).
    assert vision == 675_759_104
    assert total - added == 8_291_375_616  # Qwen2-VL-7B's parameter count
    assert added == 3_018_461_404
    assert total == 11_309_837_020


# ------------------------------------------------------------------------------------------------ build_vamba


def tiny_qwen2vl(seed: int = 0, tie: bool = False):
    """A random transformers Qwen2VLForConditionalGeneration (M-RoPE LM, ViT + merger)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(
        vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 2]},
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tie,
    )
    vision = {k: v for k, v in TINY_QWEN2VL_VISION.items() if k != "model_type"}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=120, video_token_id=121,
                           vision_start_token_id=122, vision_end_token_id=123, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config).eval()


@pytest.mark.parametrize("from_folder", [False, True])
def test_build_vamba_from_qwen2vl(tmp_path, from_folder):
    import hybrid_vlm

    source = tiny_qwen2vl()
    if from_folder:
        source.save_pretrained(tmp_path)
    built = hybrid_vlm.build_vamba(tmp_path if from_folder else source, vamba_options=dict(ssm_d_state=16,
                                                                                          ssm_head_dim=16))
    assert built.config.text_config.model_type == "qwen2" and built.config.projector_type == "identity"
    assert built.config.image_token_id == 120 and built.config.video_token_id == 121
    ours = built.state_dict()
    for name, tensor in source.state_dict().items():  # every source weight, bit for bit
        if name.startswith("model.visual."):
            target = "model.vision_tower." + name[len("model.visual."):]
        elif name.startswith("visual."):
            target = "model.vision_tower." + name[len("visual."):]
        elif name.startswith("model.language_model."):
            target = name
        elif name.startswith("model."):
            target = "model.language_model." + name[len("model."):]
        else:
            target = name
        assert torch.equal(ours[target], tensor), name
    for i in range(2):  # cross-attention starts as that layer's self-attention
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            prefix = f"model.language_model.layers.{i}."
            assert torch.equal(ours[prefix + f"cross_attn.{proj}.weight"], ours[prefix + f"self_attn.{proj}.weight"])
        assert float(ours[f"model.language_model.layers.{i}.alpha"]) == 0.5
    ids = torch.tensor([[1, 5, 9, 17, 33, 64, 3, 2, 99]])
    with torch.no_grad():
        expected = source(input_ids=ids).logits
        got = built(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():  # the tower + merger are Qwen2-VL's: same image features as the source model
        reference = merged_output(source.model.visual if hasattr(source.model, "visual") else source.visual,
                                  *patchify(pixels))
        features = projected_features(built.model.get_image_features(pixels))
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    torch.testing.assert_close(features.reshape(reference.shape), reference, rtol=0, atol=1e-6)


def test_build_vamba_refuses_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig

    import hybrid_vlm

    class Fake(torch.nn.Module):
        config = Qwen2_5_VLConfig()

    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        hybrid_vlm.build_vamba(Fake())


def test_qwen2vl_blocks_are_never_split_across_devices():
    import hybrid_vlm

    model, _ = hybrid_vlm.from_preset("vamba-qwen2vl-tiny")
    assert "Qwen2VLVisionBlock" in set(model.model._no_split_modules)


def test_video_frames_are_paired_into_temporal_patches(encoder_and_reference):
    """Qwen2-VL/Vamba encode two consecutive frames as one temporal patch: a pair of equal frames is exactly the image
    of that frame (images are the frame repeated in time), the order inside a pair matters, and pairs are
    independent."""
    encoder = encoder_and_reference[0]
    torch.manual_seed(0)
    frames = torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        paired = encoder.encode_patch_maps(frames, [-1], frames_per_patch=2)[0]
        assert paired.shape[0] == 2
        still = encoder.encode_patch_maps(frames[[0, 0]], [-1], frames_per_patch=2)[0]
        torch.testing.assert_close(still[0], encoder.encode_patch_maps(frames[:1], [-1])[0][0])
        swapped = encoder.encode_patch_maps(frames[[1, 0, 2, 3]], [-1], frames_per_patch=2)[0]
        assert (swapped[0] - paired[0]).abs().max() > 1e-4
        torch.testing.assert_close(swapped[1], paired[1])
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        encoder.encode_patch_maps(frames[:3], [-1], frames_per_patch=2)


def test_video_token_counts_follow_the_pairs(tiny_preset):
    model, processor = tiny_preset
    spec = model.model.visual_token_spec
    assert spec.video_temporal_patch == 2 and processor.video_processor.temporal_patch_size == 2
    from hybrid_vlm.token_counts import count_video_tokens

    grid = count_video_tokens(spec, 2, 448, 448, include_markers=False)
    assert count_video_tokens(spec, 6, 448, 448, include_markers=False) == 3 * grid
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        count_video_tokens(spec, 3, 448, 448)
    frames = np.random.default_rng(0).integers(0, 255, (4, 40, 50, 3), dtype=np.uint8)
    inputs = processor(text="<video>what happens?", videos=[frames], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 2 * grid
    with torch.no_grad():
        features = projected_features(model.model.get_video_features(inputs["pixel_values_videos"]))
        assert features[0].shape[0] == 2 * grid
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="multiple of 2 frames"):
        projected_features(model.model.get_video_features(inputs["pixel_values_videos"][:, :3]))
