"""Tests for HybridVLMImageProcessor: parity with transformers' own PIL processors, input handling, serialization."""

import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    CLIPConfig,
    CLIPVisionConfig,
    Dinov2Config,
    PretrainedConfig,
    SiglipVisionConfig,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN

from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor

# No resize/crop/rescale/normalize: pixel_values are the converted 0..255 RGB values, so colour handling is visible.
RAW = {"do_resize": False, "do_center_crop": False, "do_rescale": False, "do_normalize": False}


def _reference_class(prefix: str) -> type:
    """transformers' torchvision-free processor: ``<prefix>ImageProcessorPil`` on 5.x, the slow class on 4.x."""
    cls = getattr(transformers, f"{prefix}ImageProcessorPil", None)
    if cls is None:
        cls = getattr(transformers, f"{prefix}ImageProcessor")
    assert not cls.__name__.endswith("Fast")
    return cls


def _random_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _smooth_image(height: int, width: int) -> PIL.Image.Image:
    """Low-frequency content, where float and 8-bit resampling agree closely (noise makes 8-bit clipping show)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=-1)
    return PIL.Image.fromarray(np.rint(rgb * 255).astype(np.uint8))


def _pixel(image: PIL.Image.Image, **overrides) -> np.ndarray:
    """The (R, G, B) value at (0, 0) after conversion only."""
    out = HybridVLMImageProcessor()(image, **{**RAW, **overrides})
    return out["pixel_values"][0, :, 0, 0]


@pytest.fixture
def images() -> list[PIL.Image.Image]:
    # Landscape, portrait and odd sizes, so that resize truncation and crop offsets are exercised.
    return [_random_image(117, 151, 0), _random_image(200, 97, 1), _random_image(64, 64, 2)]


# --------------------------------------------------------------------------- parity with transformers


def test_defaults_match_clip_processor(images):
    ours = HybridVLMImageProcessor()(images, return_tensors="np")
    ref = _reference_class("CLIP")()(images, return_tensors="np")
    assert ours["pixel_values"].shape == (3, 3, 224, 224)
    assert ours["pixel_values"].dtype == np.float32
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)


def test_clip_vision_config_matches_clip_processor(images):
    ours = HybridVLMImageProcessor.from_vision_config(CLIPVisionConfig(image_size=336))
    assert ours.size == {"shortest_edge": 336}
    assert ours.crop_size == {"height": 336, "width": 336}
    assert ours.do_center_crop and ours.image_mean == list(OPENAI_CLIP_MEAN)
    ref = _reference_class("CLIP")(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    np.testing.assert_allclose(
        ours(images)["pixel_values"], ref(images, return_tensors="np")["pixel_values"], rtol=0, atol=1e-6
    )


def test_siglip_vision_config_matches_siglip_processor(images):
    ours = HybridVLMImageProcessor.from_vision_config(SiglipVisionConfig(image_size=96))
    assert ours.size == {"height": 96, "width": 96}
    assert not ours.do_center_crop
    assert ours.image_mean == [0.5, 0.5, 0.5] and ours.image_std == [0.5, 0.5, 0.5]
    ref = _reference_class("Siglip")(size={"height": 96, "width": 96})
    out = ours(images)["pixel_values"]
    assert out.shape == (3, 3, 96, 96)
    np.testing.assert_allclose(out, ref(images, return_tensors="np")["pixel_values"], rtol=0, atol=1e-6)


def test_dinov2_config_matches_bit_processor(images):
    # DINOv2 checkpoints use BitImageProcessor with ImageNet statistics; we use image_size for resize and crop.
    ours = HybridVLMImageProcessor.from_vision_config(Dinov2Config(image_size=98))
    assert ours.size == {"shortest_edge": 98} and ours.crop_size == {"height": 98, "width": 98}
    assert ours.image_mean == list(IMAGENET_DEFAULT_MEAN) and ours.image_std == list(IMAGENET_DEFAULT_STD)
    ref = _reference_class("Bit")(
        size={"shortest_edge": 98},
        crop_size={"height": 98, "width": 98},
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    np.testing.assert_allclose(
        ours(images)["pixel_values"], ref(images, return_tensors="np")["pixel_values"], rtol=0, atol=1e-6
    )


def test_from_vision_config_variants():
    full = HybridVLMImageProcessor.from_vision_config(CLIPConfig(vision_config={"image_size": 112}))
    assert full.size == {"shortest_edge": 112}
    as_dict = HybridVLMImageProcessor.from_vision_config({"model_type": "siglip_vision_model", "image_size": 64})
    assert as_dict.size == {"height": 64, "width": 64}
    same = HybridVLMImageProcessor.from_vision_config(
        [CLIPVisionConfig(image_size=64), CLIPVisionConfig(image_size=64)]
    )
    assert same.size == {"shortest_edge": 64}
    overridden = HybridVLMImageProcessor.from_vision_config(CLIPVisionConfig(image_size=64), do_center_crop=False)
    assert overridden.do_center_crop is False
    # several encoders: one geometry (SigLIP's squash), one mean/std triple per encoder
    pair = HybridVLMImageProcessor.from_vision_config([CLIPVisionConfig(), SiglipVisionConfig()])
    assert pair.size == {"height": 224, "width": 224} and not pair.do_center_crop
    assert pair.image_mean == [list(OPENAI_CLIP_MEAN), [0.5, 0.5, 0.5]]
    with pytest.raises(ValueError, match="different input sizes"):
        HybridVLMImageProcessor.from_vision_config([CLIPVisionConfig(image_size=64), SiglipVisionConfig()])
    with pytest.raises(ValueError, match="no preset for vision config model_type 'llama'"):
        HybridVLMImageProcessor.from_vision_config(transformers.LlamaConfig())


# --------------------------------------------------------------------------- colour modes and bit depths


def test_rgba_is_composited_on_white():
    image = PIL.Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    np.testing.assert_array_equal(_pixel(image), [255, 127, 127])  # 0 * 128/255 + 255 * 127/255 = 127
    assert _pixel(PIL.Image.new("RGBA", (2, 2), (0, 0, 255, 0))).tolist() == [255, 255, 255]
    assert _pixel(PIL.Image.new("RGBA", (2, 2), (10, 20, 30, 255))).tolist() == [10, 20, 30]
    assert _pixel(PIL.Image.new("LA", (2, 2), (100, 128))).tolist() == [177, 177, 177]  # 100*128/255 + 127


def test_grayscale_palette_and_bilevel_modes():
    assert _pixel(PIL.Image.new("L", (2, 2), 77)).tolist() == [77, 77, 77]
    assert _pixel(PIL.Image.new("1", (2, 2), 1)).tolist() == [255, 255, 255]
    palette = [255, 0, 0, 0, 255, 0] + [0] * 762
    indexed = PIL.Image.new("P", (2, 2), 1)
    indexed.putpalette(palette)
    assert _pixel(indexed).tolist() == [0, 255, 0]
    transparent = PIL.Image.new("P", (2, 2), 0)
    transparent.putpalette(palette)
    transparent.info["transparency"] = 0
    assert _pixel(transparent).tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [((0, 0, 0, 0), (255, 255, 255)), ((255, 0, 0, 0), (0, 255, 255)), ((0, 0, 0, 255), (0, 0, 0))],
)
def test_cmyk(cmyk, rgb):
    assert _pixel(PIL.Image.new("CMYK", (2, 2), cmyk)).tolist() == list(rgb)


def test_cmyk_follows_subtractive_formula():
    c, m, y, k = 100, 30, 0, 60
    expected = [255 * (1 - v / 255) * (1 - k / 255) for v in (c, m, y)]
    np.testing.assert_allclose(_pixel(PIL.Image.new("CMYK", (2, 2), (c, m, y, k))), expected, atol=1.0)


def test_sixteen_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 257 * (0, 1, 128, 255)
    expected = np.array([0, 1, 128, 255], dtype=np.float32)
    i16 = PIL.Image.fromarray(values)
    assert i16.mode == "I;16"
    i16b = PIL.Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    buffer = io.BytesIO()
    i16.save(buffer, format="PNG")
    from_png = PIL.Image.open(io.BytesIO(buffer.getvalue()))
    for image in (i16, i16b, i16.convert("I"), from_png):
        out = HybridVLMImageProcessor()(image, **RAW)["pixel_values"][0]
        np.testing.assert_allclose(out[0, 0], expected, atol=1e-4, err_msg=image.mode)
        np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_allclose(HybridVLMImageProcessor()(values, **RAW)["pixel_values"][0, 1, 0], expected, atol=1e-4)
    # A 32-bit "I" image holding 8-bit values stays 8-bit.
    small = PIL.Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert HybridVLMImageProcessor()(small, **RAW)["pixel_values"][0, 0, 0].tolist() == [0, 100, 255]


def test_float_pil_mode():
    image = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    np.testing.assert_allclose(HybridVLMImageProcessor()(image, **RAW)["pixel_values"][0, 0, 0], [0, 127.5, 255])


def test_exif_orientation_is_applied():
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: left half becomes the top half
    buffer = io.BytesIO()
    PIL.Image.fromarray(stored).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    image = PIL.Image.open(io.BytesIO(buffer.getvalue()))
    assert image.size == (40, 20)
    out = HybridVLMImageProcessor()(image, **RAW)
    assert out["image_sizes"].tolist() == [[40, 20]]
    assert out["pixel_values"].shape == (1, 3, 40, 20)
    np.testing.assert_allclose(out["pixel_values"][0, :, 5, 10], [255, 0, 0], atol=12)
    np.testing.assert_allclose(out["pixel_values"][0, :, 35, 10], [0, 0, 255], atol=12)
    resized = HybridVLMImageProcessor(size={"height": 32, "width": 16}, do_center_crop=False)(image)
    assert resized["pixel_values"].shape == (1, 3, 32, 16) and resized["image_sizes"].tolist() == [[40, 20]]


# --------------------------------------------------------------------------- input containers


def test_numpy_and_torch_inputs_match_pil():
    pil = _smooth_image(40, 56)
    hwc = np.array(pil)
    processor = HybridVLMImageProcessor(size=32)
    expected = processor(pil)["pixel_values"]
    for image in (hwc, hwc.transpose(2, 0, 1), torch.from_numpy(hwc.transpose(2, 0, 1).copy()), torch.from_numpy(hwc)):
        np.testing.assert_array_equal(processor(image)["pixel_values"], expected)
    # Floats in [0, 1] are not rescaled twice; resizing them keeps float precision, hence the small tolerance.
    as_float = hwc.astype(np.float32) / 255.0
    np.testing.assert_allclose(processor(as_float)["pixel_values"], expected, atol=0.03)
    np.testing.assert_allclose(
        processor(as_float, do_resize=False, do_center_crop=False)["pixel_values"],
        processor(pil, do_resize=False, do_center_crop=False)["pixel_values"],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        processor(torch.from_numpy(as_float).permute(2, 0, 1).half())["pixel_values"], expected, atol=0.05
    )


def test_array_channel_handling():
    processor = HybridVLMImageProcessor()
    gray = np.full((6, 5), 40, dtype=np.uint8)
    assert processor(gray, **RAW)["pixel_values"].shape == (1, 3, 6, 5)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    assert processor(rgba, **RAW)["pixel_values"][0, :, 0, 0].tolist() == [255, 127, 127]
    # Both ends could be channels: the axis of size 3 wins, then the container's convention.
    assert processor(np.zeros((4, 5, 3), np.uint8), **RAW)["pixel_values"].shape == (1, 3, 4, 5)
    assert processor(torch.zeros(3, 4, 4, dtype=torch.uint8), **RAW)["pixel_values"].shape == (1, 3, 4, 4)
    assert processor(np.zeros((1, 7, 3), np.uint8), **RAW)["image_sizes"].tolist() == [[1, 7]]
    forced = processor(np.zeros((3, 4, 1), np.uint8), input_data_format="channels_last", **RAW)
    assert forced["image_sizes"].tolist() == [[3, 4]]
    batch = np.zeros((5, 10, 12, 3), dtype=np.uint8)
    assert processor(batch, **RAW)["pixel_values"].shape == (5, 3, 10, 12)


def test_mixed_batch_and_nested_samples():
    a, b, c = _random_image(30, 50, 0), _random_image(80, 20, 1), _random_image(33, 33, 2)
    out = HybridVLMImageProcessor(size=24)([[a], [b, c], []], return_tensors="pt")
    assert isinstance(out["pixel_values"], torch.Tensor) and out["pixel_values"].dtype == torch.float32
    assert tuple(out["pixel_values"].shape) == (3, 3, 24, 24)
    assert out["image_sizes"].tolist() == [[30, 50], [80, 20], [33, 33]]
    flat = HybridVLMImageProcessor(size=24)([a, b, c])
    np.testing.assert_array_equal(flat["pixel_values"], out["pixel_values"].numpy())


def test_local_path_input(tmp_path):
    path = tmp_path / "image.png"
    _random_image(20, 30).save(path)
    out = HybridVLMImageProcessor(size=16)([str(path), path])
    assert out["image_sizes"].tolist() == [[20, 30], [20, 30]]


# --------------------------------------------------------------------------- parameters


def test_per_call_overrides_do_not_change_stored_parameters(images):
    processor = HybridVLMImageProcessor()
    out = processor(images, size={"shortest_edge": 48})
    assert out["pixel_values"].shape == (3, 3, 48, 48)  # crop follows the overridden size
    assert processor(images, size=48, crop_size=32)["pixel_values"].shape == (3, 3, 32, 32)
    assert processor(images, size={"height": 40, "width": 30})["pixel_values"].shape == (3, 3, 40, 30)
    unnormalized = processor(images[:1], do_normalize=False)["pixel_values"]
    assert unnormalized.min() >= 0 and unnormalized.max() <= 1
    channels_last = processor(images[:1], data_format="channels_last")["pixel_values"]
    assert channels_last.shape == (1, 224, 224, 3)
    assert processor.size == {"shortest_edge": 224} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.do_normalize is True


def test_output_image_size_matches_pixels():
    processor = HybridVLMImageProcessor(size=32, do_center_crop=False)
    image = _random_image(45, 70)
    assert processor(image)["pixel_values"].shape[-2:] == processor.output_image_size(45, 70) == (32, 49)
    assert processor.output_image_size(45, 70, do_center_crop=True) == (32, 32)
    assert processor.output_image_size(45, 70, do_resize=False) == (45, 70)


def _every_parameter_changed() -> HybridVLMImageProcessor:
    return HybridVLMImageProcessor(
        do_resize=True,
        size={"height": 60, "width": 50},
        resample="bilinear",
        do_center_crop=True,
        crop_size={"height": 40, "width": 30},
        do_rescale=True,
        rescale_factor=1 / 127.5,
        do_normalize=True,
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.4, 0.5, 0.6],
        do_convert_rgb=False,
    )


def test_save_load_round_trip(tmp_path, images):
    processor = _every_parameter_changed()
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "HybridVLMImageProcessor"
    assert saved["resample"] == int(PIL.Image.Resampling.BILINEAR)
    loaded = HybridVLMImageProcessor.from_pretrained(tmp_path)
    for name in HybridVLMImageProcessor._param_names:
        assert getattr(loaded, name) == getattr(processor, name), name
    assert loaded.to_dict() == processor.to_dict()
    np.testing.assert_array_equal(loaded(images)["pixel_values"], processor(images)["pixel_values"])
    # Load-time overrides work like construction arguments (validated, crop re-derived from a new size).
    assert HybridVLMImageProcessor.from_pretrained(tmp_path, do_normalize=False).do_normalize is False
    assert HybridVLMImageProcessor.from_pretrained(tmp_path, image_mean=0.25).image_mean == [0.25] * 3
    resized = HybridVLMImageProcessor.from_pretrained(tmp_path, size=32)
    assert resized.size == {"shortest_edge": 32} and resized.crop_size == {"height": 32, "width": 32}
    assert resized.image_std == processor.image_std
    # Toggling booleans off (and back) survives a round trip too.
    off = HybridVLMImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    off.save_pretrained(tmp_path / "off")
    reloaded = HybridVLMImageProcessor.from_pretrained(tmp_path / "off")
    assert [getattr(reloaded, n) for n in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")] == [False] * 4


class _Cfg(PretrainedConfig):
    model_type = "hybrid_vlm_test_ip"


@pytest.fixture(scope="module")
def registered() -> None:
    AutoConfig.register(_Cfg.model_type, _Cfg, exist_ok=True)
    AutoImageProcessor.register(_Cfg, slow_image_processor_class=HybridVLMImageProcessor, exist_ok=True)


def test_auto_image_processor_by_type_name_without_config_json(tmp_path, registered):
    processor = _every_parameter_changed()
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is HybridVLMImageProcessor
    assert loaded.to_dict() == processor.to_dict()
    assert AutoImageProcessor.from_pretrained(tmp_path, do_rescale=False).do_rescale is False


def test_auto_image_processor_through_model_config(tmp_path, registered):
    HybridVLMImageProcessor(size=64).save_pretrained(tmp_path)
    config_file = tmp_path / "preprocessor_config.json"
    saved = json.loads(config_file.read_text())
    del saved["image_processor_type"]
    config_file.write_text(json.dumps(saved))
    _Cfg().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is HybridVLMImageProcessor
    assert loaded.size == {"shortest_edge": 64}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([], ValueError, "empty list of images"),
        ([[], []], ValueError, "every sample's image list is empty"),
        (42, TypeError, "unsupported type int"),
        ([_random_image(4, 4), {"image": 1}], TypeError, r"images\[1\] has unsupported type int"),
        ("/no/such/image.png", TypeError, "no such file"),
        ("https://example.com/a.png", TypeError, "is a URL"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "2 channels"),
        (np.zeros((2, 8, 8), np.uint8), ValueError, "2 channels"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, "cannot find the channel axis"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "is empty"),
        (PIL.Image.new("RGB", (0, 5)), ValueError, "is empty"),
        (np.full((4, 4, 3), 300.5, np.float32), ValueError, r"expected \[0, 1\] or \[0, 255\]"),
        (np.full((4, 4, 3), 1000, np.int32), ValueError, r"outside \[0, 255\]"),
        (np.zeros((1, 2, 4, 4, 3), np.uint8), ValueError, "5 dimensions"),
    ],
)
def test_bad_inputs_raise_clear_errors(images, error, message):
    with pytest.raises(error, match=message):
        HybridVLMImageProcessor()(images)


def test_bad_parameters_raise_clear_errors():
    processor = HybridVLMImageProcessor()
    image = _random_image(10, 10)
    with pytest.raises(TypeError, match="unexpected keyword argument.*do_resise"):
        processor(image, do_resise=False)
    with pytest.raises(ValueError, match="size must have the keys"):
        HybridVLMImageProcessor(size={"longest_edge": 5})
    with pytest.raises(ValueError, match="crop_size must have the keys"):
        HybridVLMImageProcessor(crop_size={"shortest_edge": 5})
    with pytest.raises(ValueError, match="must be a positive int"):
        processor(image, size={"height": 0, "width": 4})
    with pytest.raises(ValueError, match="image_mean must have 3 values"):
        HybridVLMImageProcessor(image_mean=[0.5, 0.5])
    with pytest.raises(ValueError, match="unknown resample 'fancy'"):
        processor(image, resample="fancy")
    with pytest.raises(TypeError, match="do_resize must be True or False"):
        processor(image, do_resize="yes")
    with pytest.raises(ValueError, match="do_convert_rgb=True"):
        processor(PIL.Image.new("L", (4, 4)), do_convert_rgb=False)
    with pytest.raises(ValueError, match="different sizes"):
        processor([_random_image(10, 20), _random_image(20, 10)], do_center_crop=False)


def test_pad_to_square_mode():
    """image_aspect_ratio="pad" (LLaVA's expand2square): centred on a square of the mean colour int(m * 255), before
    resizing; kept through save/load; sizes without pixels agree; refused where it cannot apply."""
    processor = HybridVLMImageProcessor(size={"shortest_edge": 16}, crop_size=16, image_aspect_ratio="pad")
    wide = PIL.Image.fromarray(np.full((8, 16, 3), 250, dtype=np.uint8))
    pixels = processor(wide, return_tensors="np")["pixel_values"][0]
    mean, std = np.asarray(processor.image_mean)[:, None], np.asarray(processor.image_std)[:, None]
    rows = np.rint((pixels[:, :, 8] * std + mean) * 255).T  # one column, top to bottom, on the 0..255 scale
    assert (rows[:4] == [122, 116, 104]).all() and (rows[4:12] == 250).all() and (rows[12:] == [122, 116, 104]).all()
    cropped = HybridVLMImageProcessor(size={"shortest_edge": 16}, crop_size=16)(wide, return_tensors="np")
    assert not np.allclose(cropped["pixel_values"], pixels)  # the default still crops the sides away
    tall = HybridVLMImageProcessor(size={"shortest_edge": 16}, do_center_crop=False, image_aspect_ratio="pad")
    assert tall.output_image_size(30, 10) == (16, 16)
    assert tall(PIL.Image.new("RGB", (10, 30)), return_tensors="np")["pixel_values"].shape == (1, 3, 16, 16)
    loaded = HybridVLMImageProcessor.from_dict(json.loads(processor.to_json_string()))
    assert loaded.image_aspect_ratio == "pad"
    assert np.array_equal(loaded(wide, return_tensors="np")["pixel_values"], pixels[None])
    with pytest.raises(ValueError, match="unknown image_aspect_ratio"):
        HybridVLMImageProcessor(image_aspect_ratio="square")
    with pytest.raises(ValueError, match="single-resolution"):
        HybridVLMImageProcessor(image_aspect_ratio="pad", max_tiles=4)
    with pytest.raises(ValueError, match="one image_mean"):
        HybridVLMImageProcessor(image_aspect_ratio="pad", image_mean=[[0.5] * 3, [0.4] * 3], image_std=[[0.5] * 3] * 2)


def test_encoded_inputs_decode_like_videos_do(tmp_path):
    """Bytes, file objects and {'path'|'bytes'|'image'} dicts give the same pixels as the decoded image."""
    image = _random_image(30, 44)
    image.save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    processor = HybridVLMImageProcessor(size={"shortest_edge": 28}, crop_size=28)
    reference = processor(image, return_tensors="pt")["pixel_values"]
    for item in (data, bytearray(data), io.BytesIO(data), {"path": str(tmp_path / "a.png")},
                 {"bytes": data, "path": None}, {"image": image}):
        assert torch.equal(processor(item, return_tensors="pt")["pixel_values"], reference), type(item)
    with pytest.raises(ValueError, match=r"\(9 bytes\) is not an image Pillow can read"):
        processor(b"not a png")
    with pytest.raises(ValueError, match="is a folder"):
        processor(str(tmp_path))
    with pytest.raises(TypeError, match="a dict without 'bytes', 'path' or 'image'"):
        processor({"url": "x"})
