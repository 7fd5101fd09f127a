"""The processor holds one `VisualTokenSpec`, saved nested in processor_config.json; folders saved before that (flat
token-count keys, tests/fixtures/processor_flat_keys, written by transformers 5.24 and 4.57) load to the same
processor, and every way of building a processor from a model config gives the model's own spec."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers import AutoProcessor

import hybrid_vlm
from hybrid_vlm import HybridVLMProcessor, preset_config
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import VisualTokenSpec

FIXTURES = Path(__file__).parent / "fixtures" / "processor_flat_keys"
# The model configs the fixture folders were built from (see the fixture README).
CASES = {
    "pooled": ("jamba-llava-tiny", {
        "vision_pooled_grid": 2, "video_pool_stride": 2, "video_newline": True, "anyres_max_feature_tiles": 4,
        "image_newline": True,
    }),
    "conv": ("llava-tiny", {"projector_type": "conv2d_adapter", "projector_conv_kernel": 2, "projector_conv_stride": 1}),
    "qwen2vl": ("vamba-qwen2vl-tiny", {}),
}
FLAT_KEYS = {"patch_size", "num_prefix_tokens", "vision_pooled_grid", "projector_conv", "num_vision_maps"}


def expected_processor(case: str) -> tuple[HybridVLMProcessor, VisualTokenSpec]:
    name, overrides = CASES[case]
    config = preset_config(name, **overrides)
    return HybridVLMProcessor.from_model_config(config, load_tiny_tokenizer()), VisualTokenSpec.from_config(config)


def fixture_folder(tmp_path: Path, saved_by: str, case: str) -> Path:
    folder = tmp_path / f"{saved_by}-{case}"
    load_tiny_tokenizer().save_pretrained(folder)  # the fixture holds no tokenizer files
    shutil.copytree(FIXTURES / saved_by / case, folder, dirs_exist_ok=True)
    return folder


def outputs(processor: HybridVLMProcessor) -> dict:
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    frames = [PIL.Image.fromarray(np.full((56, 56, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    batch = processor(text="<image><video> hi", images=[image], videos=[frames], return_tensors="np")
    return {key: np.asarray(batch[key]).tolist() for key in ("input_ids", "pixel_values", "pixel_values_videos")}


@pytest.mark.parametrize("saved_by", ["t524", "t457"])
@pytest.mark.parametrize("case", list(CASES))
def test_flat_key_folder_loads_to_the_same_processor(tmp_path, saved_by, case):
    saved = json.loads((FIXTURES / saved_by / case / "processor_config.json").read_text(encoding="utf-8"))
    assert FLAT_KEYS <= set(saved) and "visual_token_spec" not in saved  # the old format, as written then
    expected, model_spec = expected_processor(case)
    assert expected.visual_token_spec == model_spec
    folder = fixture_folder(tmp_path, saved_by, case)
    for loaded in (HybridVLMProcessor.from_pretrained(folder), AutoProcessor.from_pretrained(folder)):
        assert type(loaded) is HybridVLMProcessor
        assert loaded.visual_token_spec == model_spec
        assert loaded.to_dict() == expected.to_dict()
        assert outputs(loaded) == outputs(expected)
    # saving again writes the nested spec only, and that loads back to the same processor
    loaded.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "processor_config.json").read_text(encoding="utf-8"))
    assert not FLAT_KEYS & set(again)
    assert again["visual_token_spec"] == model_spec.to_dict()
    assert HybridVLMProcessor.from_pretrained(tmp_path / "again").visual_token_spec == model_spec


def test_old_pooled_grid_key_means_the_effective_pooled_side(tmp_path):
    """The old top-level `vision_pooled_grid` was the side the projector or the model pools to: it maps to
    `visual_token_spec.pooled_grid` (here the projector pools, and the model config's vision_pooled_grid is None)."""
    config = preset_config("llava-tiny", projector_type="pool2d_mlp", projector_pooled_grid=2)
    assert config.vision_pooled_grid is None
    processor = HybridVLMProcessor.from_model_config(config, load_tiny_tokenizer())
    assert processor.visual_token_spec.pooled_grid == 2 == VisualTokenSpec.from_config(config).pooled_grid
    folder = fixture_folder(tmp_path, "t524", "conv")
    data = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    data.update(vision_pooled_grid=2, projector_conv=None)
    (folder / "processor_config.json").write_text(json.dumps(data), encoding="utf-8")
    assert HybridVLMProcessor.from_pretrained(folder).visual_token_spec == processor.visual_token_spec
    assert processor.num_image_tokens(56, 56) == 4


@pytest.mark.parametrize("name", [name for name in hybrid_vlm.list_presets() if name.endswith("-tiny")])
def test_every_tiny_preset_processor_holds_the_model_spec(name):
    config = preset_config(name)
    processor = HybridVLMProcessor.from_model_config(config, load_tiny_tokenizer())
    assert processor.visual_token_spec == VisualTokenSpec.from_config(config)


def test_flat_settings_and_spec_overrides():
    expected, spec = expected_processor("pooled")
    flat = {"patch_size": 14, "num_prefix_tokens": 1, "vision_pooled_grid": 2, "video_pool_stride": 2,
            "video_newline": True, "anyres_max_feature_tiles": 4, "image_newline": True}
    built = HybridVLMProcessor(expected.image_processor, expected.tokenizer, **flat)
    assert built.visual_token_spec == spec
    # a flat key next to a spec overrides that field (from_model_config(..., anyres_merge=...) relies on it)
    built = HybridVLMProcessor(expected.image_processor, expected.tokenizer, visual_token_spec=spec.to_dict(),
                               num_vision_maps=2)
    assert built.visual_token_spec == dataclasses.replace(spec, num_maps=2)
    with pytest.raises(ValueError, match="unknown field"):
        HybridVLMProcessor(expected.image_processor, expected.tokenizer, visual_token_spec={"patch_sise": 14})
    with pytest.raises(ValueError, match="num_maps must be an int >= 1"):
        HybridVLMProcessor(expected.image_processor, expected.tokenizer, visual_token_spec=spec, num_vision_maps=0)


def test_processing_kwargs_route_flat_and_nested_keywords_on_every_line():
    """transformers' `_merge_kwargs` routes the keywords (`HybridVLMProcessorKwargs`); a flat keyword beside a nested
    dict still arrives (4.57's `_merge_kwargs` alone would drop it), and `_defaults` apply when nothing is given."""
    from hybrid_vlm.processing_hybrid_vlm import HybridVLMProcessorKwargs

    assert HybridVLMProcessorKwargs._defaults["text_kwargs"]["padding"] is False
    processor, _ = expected_processor("conv")
    image = PIL.Image.fromarray(np.full((56, 56, 3), 200, dtype=np.uint8))
    plain = processor(text=["<image> a", "<image> a b c d"], images=[image, image])
    assert len(plain["input_ids"][0]) < len(plain["input_ids"][1])  # no padding by default
    out = processor(
        text=["<image> a", "<image> a b c d"], images=[image, image], images_kwargs={"do_normalize": False},
        padding="max_length", max_length=40, return_tensors="pt", return_mm_token_type_ids=True,
    )
    assert tuple(out["input_ids"].shape) == (2, 40)  # flat text keywords and return_tensors beside images_kwargs
    assert float(out["pixel_values"].max()) == pytest.approx(200 / 255, abs=1e-5)  # the nested image keyword
    assert out["mm_token_type_ids"].tolist()[0].count(1) == processor.num_image_tokens(56, 56)
    # a flat frame keyword reaches images and video frames; nested for one modality, it reaches that one only
    frames = [image] * 2
    both = processor(text="<image><video>", images=[image], videos=[frames], do_rescale=False, return_tensors="np")
    assert both["pixel_values"].max() > 100 and both["pixel_values_videos"].max() > 100  # not rescaled to [0, 1]
    one = processor(text="<image><video>", images=[image], videos=[frames], images_kwargs={"do_rescale": False},
                    return_tensors="np")
    assert one["pixel_values"].max() > 100 and one["pixel_values_videos"].max() < 5


def test_every_spec_field_round_trips_without_the_processor_naming_it(tmp_path):
    """The processor saves and loads the spec as a whole: a field (a new token rule) needs no processor code."""
    spec = VisualTokenSpec(
        patch_size=14, num_prefix_tokens=1, vision_feature_select_strategy="full", pooled_grid=2,
        projector_conv=(2, 1), num_maps=2, image_newline=True, anyres_unpad=False, anyres_merge="flat",
        anyres_max_feature_tiles=3, video_pool_stride=2, video_newline=True, video_temporal_patch=2,
    )
    defaults = [f for f in dataclasses.fields(VisualTokenSpec) if f.default is not dataclasses.MISSING]
    assert all(getattr(spec, f.name) != f.default for f in defaults)  # every field off its default
    expected, _ = expected_processor("conv")
    processor = HybridVLMProcessor(expected.image_processor, expected.tokenizer, visual_token_spec=spec)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text(encoding="utf-8"))["visual_token_spec"] == {
        **dataclasses.asdict(spec), "projector_conv": [2, 1]
    }
    assert HybridVLMProcessor.from_pretrained(tmp_path).visual_token_spec == spec
