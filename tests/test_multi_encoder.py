"""Several vision encoders in one model (MambaVLM: sequence fusion; Cobra: channel fusion) and their presets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor

import hybrid_vlm
from hybrid_vlm import HybridVLMConfig
from hybrid_vlm.compat import projected_features
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.presets import TINY_DINOV2, TINY_MAMBA, TINY_SIGLIP
from hybrid_vlm.projectors import MambaProjector, MLP3xGeluProjector
from hybrid_vlm.vision_encoders import MultiVisionEncoder

HELPER = Path(__file__).parent / "cross_version_helper.py"
GRID = (TINY_DINOV2["image_size"] // TINY_DINOV2["patch_size"]) ** 2  # 4x4 patches per encoder


def _reference_class(prefix: str) -> type:
    """transformers' torchvision-free processor: ``<prefix>ImageProcessorPil`` on 5.x, the slow class on 4.x."""
    return getattr(transformers, f"{prefix}ImageProcessorPil", None) or getattr(transformers, f"{prefix}ImageProcessor")


def _image(height: int = 70, width: int = 90, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _inputs(processor, images, question: str = "What is this?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text] * len(images), images=[[i] for i in images], return_tensors="pt", padding=True)


def test_each_encoder_gets_its_own_transformers_normalisation():
    _, processor = hybrid_vlm.from_preset("mambavlm-tiny")
    image = _image()
    pixels = processor.image_processor(image, return_tensors="np")["pixel_values"][0]
    assert pixels.shape == (6, 56, 56)
    # DINOv2's own processor (BitImageProcessor, ImageNet mean/std) and SigLIP's (mean/std 0.5), with the shared
    # geometry (exact 56x56 bicubic resize).
    geometry = dict(size={"height": 56, "width": 56}, do_center_crop=False, resample=PIL.Image.BICUBIC)
    dino = _reference_class("Bit")(**geometry, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                   do_convert_rgb=True)
    siglip = _reference_class("Siglip")(size={"height": 56, "width": 56}, resample=PIL.Image.BICUBIC)
    expected_dino = np.asarray(dino(image, return_tensors="np")["pixel_values"][0])
    expected_siglip = np.asarray(siglip(image, return_tensors="np")["pixel_values"][0])
    np.testing.assert_allclose(pixels[:3], expected_dino, atol=1e-5)
    np.testing.assert_allclose(pixels[3:], expected_siglip, atol=1e-5)
    assert np.abs(pixels[:3] - pixels[3:]).max() > 0.1  # the two normalisations really differ


def test_per_encoder_statistics_round_trip_and_validate(tmp_path):
    processor = HybridVLMImageProcessor.from_vision_config(
        [transformers.Dinov2Config(**{k: v for k, v in TINY_DINOV2.items() if k != "model_type"}),
         transformers.SiglipVisionConfig(**{k: v for k, v in TINY_SIGLIP.items() if k != "model_type"})]
    )
    processor.save_pretrained(tmp_path)
    reloaded = HybridVLMImageProcessor.from_pretrained(tmp_path)
    assert reloaded.image_mean == [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]]
    image = _image(40, 40)
    np.testing.assert_array_equal(processor(image)["pixel_values"], reloaded(image)["pixel_values"])
    with pytest.raises(ValueError, match="one triple per vision encoder"):
        HybridVLMImageProcessor(image_mean=[[0.5] * 3, [0.5] * 3], image_std=[0.5] * 3)(image)
    with pytest.raises(ValueError, match="different input sizes"):
        HybridVLMImageProcessor.from_vision_config(
            [transformers.SiglipVisionConfig(image_size=56, patch_size=14),
             transformers.SiglipVisionConfig(image_size=28, patch_size=14)]
        )


@pytest.mark.parametrize(
    ("preset", "fusion", "tokens", "projector", "widths"),
    [
        ("mambavlm-tiny", "sequence", 2 * GRID, MambaProjector, (32, 48)),
        ("cobra-tiny", "channel", GRID, MLP3xGeluProjector, (80,)),
    ],
)
def test_fusion_token_counts_shapes_and_projector_widths(preset, fusion, tokens, projector, widths):
    model, processor = hybrid_vlm.from_preset(preset)
    assert model.config.vision_fusion == fusion
    assert isinstance(model.model.vision_tower, MultiVisionEncoder)
    assert isinstance(model.model.multi_modal_projector, projector)
    assert model.model.multi_modal_projector.map_widths == widths
    assert processor.num_image_tokens(56, 56) == tokens
    assert hybrid_vlm.count_image_tokens(model.model.visual_token_spec, 56, 56) == tokens
    inputs = _inputs(processor, [_image()])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == tokens
    with torch.no_grad():
        features = projected_features(model.model.get_image_features(inputs["pixel_values"]))
    assert features.shape == (1, tokens, model.config.text_config.hidden_size)


def test_sequence_fusion_keeps_each_encoders_tokens_in_order():
    """MambaVLM: the first half of an image's tokens depends on DINOv2 only through the projector's scans, but with
    an MLP projector each half comes from exactly one encoder: perturbing SigLIP's weights changes only the second."""
    model, _ = hybrid_vlm.from_preset("mambavlm-tiny", projector_type="mlp2x_gelu",
                                      vision_config=[{}, {"hidden_size": 32, "intermediate_size": 64}])
    pixels = torch.randn(1, 6, 56, 56)
    with torch.no_grad():
        before = projected_features(model.model.get_image_features(pixels))
        for p in model.model.vision_tower.encoders[1].parameters():
            p.add_(0.1)
        after = projected_features(model.model.get_image_features(pixels))
    torch.testing.assert_close(before[:, :GRID], after[:, :GRID])
    assert (before[:, GRID:] - after[:, GRID:]).abs().max() > 1e-3


def test_each_encoder_reads_its_own_channels():
    model, _ = hybrid_vlm.from_preset("cobra-tiny")
    pixels = torch.randn(1, 6, 56, 56)
    tower = model.model.vision_tower
    with torch.no_grad():
        maps = tower.encode_patch_maps(pixels, [-2])
        alone = tower.encoders[1](pixels[:, 3:], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(maps[1], alone)  # SigLIP: no prefix tokens
    assert maps[0].shape == (1, GRID, 32)  # DINOv2: CLS + 2 registers dropped
    with pytest.raises(ValueError, match="needs pixel_values with 6 channels"):
        projected_features(model.model.get_image_features(torch.randn(1, 3, 56, 56)))


@pytest.mark.parametrize("preset", ["mambavlm-tiny", "cobra-tiny"])
def test_mamba_lm_end_to_end_generate_and_batched_equals_unbatched(preset):
    model, processor = hybrid_vlm.from_preset(preset)
    images = [_image(70, 90, 0), _image(50, 30, 1)]
    processor.tokenizer.padding_side = "left"
    batch = _inputs(processor, images)
    with torch.no_grad():
        batched = model.generate(**batch, max_new_tokens=6, do_sample=False)
        for row, image in enumerate(images):
            single = _inputs(processor, [image])
            alone = model.generate(**single, max_new_tokens=6, do_sample=False)
            assert batched[row, -6:].tolist() == alone[0, -6:].tolist()
            logits = model(**single).logits[0, -1]
            ids = batch["input_ids"][row : row + 1]
            mask = batch["attention_mask"][row : row + 1]
            batch_logits = model(input_ids=ids, attention_mask=mask,
                                 pixel_values=batch["pixel_values"][row : row + 1]).logits[0, -1]
            torch.testing.assert_close(batch_logits, logits, atol=1e-4, rtol=1e-4)


def test_config_round_trip_and_auto_reload(tmp_path):
    model, processor = hybrid_vlm.from_preset("mambavlm-tiny")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = HybridVLMConfig.from_pretrained(tmp_path)
    assert [c.model_type for c in config.vision_configs] == ["dinov2_with_registers", "siglip_vision_model"]
    assert config.vision_fusion == "sequence"
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    inputs = _inputs(reloaded_processor, [_image()])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    keys = set(reloaded.state_dict())
    assert any(k.startswith("model.vision_tower.encoders.1.") for k in keys)


@pytest.mark.parametrize("preset", ["mambavlm-tiny", "cobra-tiny"])
def test_checkpoint_saved_here_loads_on_the_other_transformers_line(other_python, tmp_path, preset):
    from cross_version_helper import save

    save(tmp_path, preset)
    result = subprocess.run([other_python, str(HELPER), "check", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("MAXDIFF")[-1].split()[0]) < 1e-4


def test_config_errors_name_the_fix():
    dino = {**TINY_DINOV2}
    siglip = {**TINY_SIGLIP}
    with pytest.raises(ValueError, match="same image size"):
        HybridVLMConfig(vision_config=[dino, siglip, {**siglip, "image_size": 28}], text_config=TINY_MAMBA)
    with pytest.raises(ValueError, match="same image size"):
        HybridVLMConfig(vision_config=[dino, {**siglip, "patch_size": 7}], text_config=TINY_MAMBA)
    # DINOv2 interpolates its position embeddings (its image_size is not its input size): accepted
    config = HybridVLMConfig(vision_config=[{**dino, "image_size": 518}, siglip], text_config=TINY_MAMBA)
    assert HybridVLMImageProcessor.from_vision_config(config.vision_configs).size == {"height": 56, "width": 56}
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        HybridVLMConfig(vision_config=[dino, siglip], text_config=TINY_MAMBA, vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="Unknown vision_fusion"):
        HybridVLMConfig(vision_config=[dino, siglip], text_config=TINY_MAMBA, vision_fusion="stack")
    with pytest.raises(ValueError, match="same width"):  # an MLP cannot take two widths one after another
        hybrid_vlm.from_preset("mambavlm-tiny", projector_type="mlp2x_gelu")
    with pytest.raises(ValueError, match="empty list"):
        HybridVLMConfig(vision_config=[], text_config=TINY_MAMBA)


@pytest.mark.parametrize(
    ("preset", "total", "vision"),
    [("mambavlm-2.8b", 3_541_533_680, 731_942_976), ("cobra-3b", 3_548_078_144, 731_942_976)],
)
def test_full_size_shapes_on_meta(preset, total, vision):
    model, processor = hybrid_vlm.from_preset(preset, device="meta")
    assert processor is None
    assert model.num_parameters() == total
    assert sum(p.numel() for p in model.model.vision_tower.parameters()) == vision
    spec = model.model.visual_token_spec
    expected = 1458 if preset.startswith("mambavlm") else 729  # MambaVLM Table 4: 1458 visual tokens
    assert hybrid_vlm.count_image_tokens(spec, 378, 378) == expected
