"""HybridVLMProcessor: placeholder expansion agrees with the model, errors name the numbers, chat templates and saved
folders work on transformers 4.57 and 5.x.

The cross-version tests need a second interpreter with the other transformers line and hybrid_vlm installed:
``HYBRID_VLM_OTHER_PYTHON=/path/to/other/python pytest tests/test_processor.py``. That interpreter runs this file as a
script (see ``__main__``), so both sides build and describe a processor with the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    SiglipVisionConfig,
)

from hybrid_vlm.compat import projected_features
from hybrid_vlm.configuration_hybrid_vlm import HybridVLMConfig
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from hybrid_vlm.processing_hybrid_vlm import HybridVLMProcessor
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import VisualTokenSpec, count_image_tokens

IS_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
PROMPTS = ["<image>What is this?", "Compare <image> with <image>, please describe both in detail."]


def register_auto_classes() -> None:
    """What the package's __init__ will do on import; tolerant of running twice (or after it)."""
    try:
        AutoConfig.register("hybrid_vlm", HybridVLMConfig)
    except ValueError:
        pass  # already registered
    AutoImageProcessor.register(HybridVLMConfig, slow_image_processor_class=HybridVLMImageProcessor, exist_ok=True)
    AutoProcessor.register(HybridVLMConfig, HybridVLMProcessor, exist_ok=True)


register_auto_classes()


def make_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    """Deterministic from the arguments alone, so another interpreter builds the same pixels."""
    values = (np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3) * (7 + seed)) % 251
    return PIL.Image.fromarray(values.astype(np.uint8))


def tiny_config(tokenizer: Any, vision: str = "clip", strategy: str = "default") -> HybridVLMConfig:
    vision_config = (CLIPVisionConfig if vision == "clip" else SiglipVisionConfig)(**TINY_VISION)
    text_config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_TEXT)
    return HybridVLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )


def build_processor(vision: str = "clip", strategy: str = "default") -> HybridVLMProcessor:
    tokenizer = load_tiny_tokenizer()
    return HybridVLMProcessor.from_model_config(tiny_config(tokenizer, vision, strategy), tokenizer)


def sample_images() -> list[PIL.Image.Image]:
    return [make_image(40, 50), make_image(30, 30, seed=1), make_image(64, 33, seed=2)]


def conversations(with_pixels: bool = True) -> list[list[dict[str, Any]]]:
    images = sample_images()

    def image(i: int) -> dict[str, Any]:
        return {"type": "image", "image": images[i]} if with_pixels else {"type": "image"}

    return [
        [
            {"role": "user", "content": [image(0), {"type": "text", "text": "What is in this image?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A cat on a mat."}]},
        ],
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Compare"}, image(1), image(2)]},
            {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        ],
    ]


def describe(processor: Any) -> dict[str, Any]:
    """What must match between processors (and transformers lines), as plain JSON."""
    batch = processor(images=sample_images(), text=PROMPTS, padding=True, return_tensors="pt")
    chat = processor.apply_chat_template(
        conversations(), tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    return {
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "image_sizes": batch["image_sizes"].tolist(),
        "pixel_sum": round(float(batch["pixel_values"].double().sum()), 4),
        "pixel_shape": list(batch["pixel_values"].shape),
        "chat_input_ids": chat["input_ids"].tolist(),
        "rendered": processor.apply_chat_template(conversations(), tokenize=False),
        "settings": [
            processor.visual_token_spec.patch_size,
            processor.visual_token_spec.num_prefix_tokens,
            processor.visual_token_spec.vision_feature_select_strategy,
            processor.image_token,
            processor.image_token_id,
        ],
        "classes": [type(processor).__name__, type(processor.image_processor).__name__],
    }


@pytest.fixture(scope="module")
def processor() -> HybridVLMProcessor:
    return build_processor()


@pytest.fixture(scope="module")
def model(processor) -> HybridVLMForConditionalGeneration:
    torch.manual_seed(0)
    return HybridVLMForConditionalGeneration(tiny_config(processor.tokenizer)).eval()


def image_token_counts(processor: HybridVLMProcessor, input_ids: torch.Tensor) -> list[int]:
    return (input_ids == processor.image_token_id).sum(-1).tolist()


# -------------------------------------------------------------------------------------- processor/model agreement


@pytest.mark.parametrize("vision", ["clip", "siglip"])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_expansion_matches_token_count_and_model_features(vision, strategy):
    processor = build_processor(vision, strategy)
    config = tiny_config(processor.tokenizer, vision, strategy)
    out = processor(images=[make_image(40, 50)], text="<image>Describe.", return_tensors="pt")
    height, width = out["pixel_values"].shape[-2:]
    expected = count_image_tokens(VisualTokenSpec.from_config(config), height, width)
    torch.manual_seed(0)
    model = HybridVLMForConditionalGeneration(config).eval()
    with torch.no_grad():
        features = projected_features(model.get_image_features(out["pixel_values"]))
        model(**out)  # the model's own placeholder check passes
    assert image_token_counts(processor, out["input_ids"]) == [expected]
    assert features.shape[1] == expected
    assert processor._get_num_multimodal_tokens(image_sizes=[(40, 50)]).num_image_tokens == [expected]
    # CLIP has a CLS token, which "full" keeps; SigLIP has none.
    assert expected == 4 + (vision == "clip" and strategy == "full")


def test_forward_runs_and_batch_is_left_padded(processor, model):
    out = processor(images=sample_images(), text=PROMPTS, padding=True, return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert out["pixel_values"].shape == (3, 3, 28, 28)
    assert out["image_sizes"].tolist() == [[40, 50], [30, 30], [64, 33]]
    assert image_token_counts(processor, out["input_ids"]) == [4, 8]
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids[0, 0] == processor.tokenizer.pad_token_id and mask[0, 0] == 0
    assert mask[:, -1].tolist() == [1, 1] and mask[1].all()
    # Left padding: each row ends with its unpadded encoding.
    for i, prompt in enumerate(PROMPTS):
        single = processor(images=sample_images()[:1] if i == 0 else sample_images()[1:], text=prompt)
        row = single["input_ids"][0]
        assert ids[i, -len(row) :].tolist() == row and mask[i].sum() == len(row)
    with torch.no_grad():
        logits = model(**out).logits
    assert logits.shape == (*ids.shape, len(processor.tokenizer))


def test_images_per_sample_and_flat_list_agree(processor):
    images = sample_images()
    flat = processor(images=images, text=PROMPTS, padding=True)
    nested = processor(images=[images[:1], images[1:]], text=PROMPTS, padding=True)
    assert flat["input_ids"] == nested["input_ids"]
    np.testing.assert_array_equal(flat["pixel_values"], nested["pixel_values"])
    # A sample without images gets an empty list; a single image and a single prompt need no lists at all.
    mixed = processor(images=[[], images[:1]], text=["no image", "<image>one"], padding=True)
    assert [row.count(processor.image_token_id) for row in mixed["input_ids"]] == [0, 4]
    single = processor(images=images[0], text="<image>x")
    assert single["input_ids"][0].count(processor.image_token_id) == 4
    text_only = processor(text=["just text", "more text here"], padding=True, return_tensors="pt")
    assert set(text_only) == {"input_ids", "attention_mask"}


def test_expansion_follows_processed_size_and_kwargs_route(processor):
    text = ["<image>a", "<image>much longer text"]
    images = sample_images()[:2]
    big = processor(images=images, text=text, size={"height": 42, "width": 42}, padding=True, return_tensors="pt")
    assert big["pixel_values"].shape[-2:] == (42, 42)
    assert image_token_counts(processor, big["input_ids"]) == [9, 9]  # (42 / 14) ** 2
    nested = processor(
        images=images,
        text=text,
        images_kwargs={"size": {"height": 42, "width": 42}},
        text_kwargs={"padding": True, "padding_side": "right"},
        return_tensors="pt",
    )
    assert torch.equal(nested["pixel_values"], big["pixel_values"])
    assert nested["attention_mask"][0, -1] == 0 and nested["attention_mask"][0, 0] == 1  # right padded this time
    with pytest.raises(TypeError, match="both as a keyword and in text_kwargs"):
        processor(text="x", padding=True, text_kwargs={"padding": False})


def test_offsets_refer_to_the_text_as_passed(processor):
    text = "hi <image> there"
    out = processor(images=[make_image(28, 28)], text=text, return_offsets_mapping=True)
    ids, offsets = out["input_ids"][0], out["offset_mapping"][0]
    spans = [tuple(span) for token, span in zip(ids, offsets) if token == processor.image_token_id]
    assert spans == [(3, 10)] * 4
    assert text[offsets[-1][0] : offsets[-1][1]].strip() == "there"
    # Left padding stays zero-width; a placeholder at the very start keeps its own span.
    batch = processor(
        images=[make_image(28, 28)] * 2,
        text=["<image>a", "a longer text <image> b"],
        padding=True,
        return_offsets_mapping=True,
    )
    first_ids, first_offsets = batch["input_ids"][0], batch["offset_mapping"][0]
    pad = processor.tokenizer.pad_token_id
    assert {tuple(span) for token, span in zip(first_ids, first_offsets) if token == pad} == {(0, 0)}
    assert {tuple(span) for token, span in zip(first_ids, first_offsets) if token == processor.image_token_id} == {
        (0, 7)
    }
    assert tuple(first_offsets[-1]) == (7, 8)
    # transformers 5's convention: offsets into the expanded text plus where the expansions are.
    out = processor(
        images=[make_image(28, 28)], text=text, return_offsets_mapping=True, return_text_replacement_offsets=True
    )
    (replacement,) = out["text_replacement_offsets"][0]
    assert replacement["span"] == (3, 10) and replacement["new_span"] == (3, 3 + 4 * len("<image>"))
    assert out["offset_mapping"][0][-1][1] == len(text) + 3 * len("<image>")


# ------------------------------------------------------------------------------------------------------- errors


def test_too_few_and_too_many_images(processor):
    images = sample_images()
    with pytest.raises(
        ValueError, match=r"the text has 3 <image> placeholder\(s\) \(per sample: \[1, 2\]\) but 2 image"
    ):
        processor(images=images[:2], text=PROMPTS)
    with pytest.raises(ValueError, match=r"the text has 1 <image> placeholder\(s\) .* but 3 image\(s\) were given"):
        processor(images=images, text="<image>only one")
    with pytest.raises(ValueError, match=r"sample 1 has 2 <image> placeholder\(s\) in its text but 1 image\(s\)"):
        processor(images=[images[:1], images[1:2]], text=PROMPTS)
    with pytest.raises(ValueError, match=r"holds 1 per-sample image lists but there are 2 text sample"):
        processor(images=[images], text=PROMPTS)
    with pytest.raises(ValueError, match=r"has 1 <image> placeholder\(s\) .* but no images were given"):
        processor(text="<image>where is it?")
    with pytest.raises(ValueError, match="got images but no text"):
        processor(images=images)


def test_truncation_through_image_tokens_raises(processor):
    images = sample_images()
    full = processor(images=images, text=PROMPTS)
    lengths = [len(row) for row in full["input_ids"]]
    # Cutting text after the last image token of every sample is fine.
    cut_text = processor(images=images, text=PROMPTS, truncation=True, max_length=lengths[1] - 3)
    assert [row.count(processor.image_token_id) for row in cut_text["input_ids"]] == [4, 8]
    # Sample 1's second image ends 3 tokens before "please describe both in detail." ... cut inside it.
    second_image_end = max(i for i, t in enumerate(full["input_ids"][1]) if t == processor.image_token_id) + 1
    with pytest.raises(ValueError) as error:
        processor(images=images, text=PROMPTS, truncation=True, max_length=second_image_end - 2, padding=True)
    message = str(error.value)
    assert f"max_length={second_image_end - 2} would cut visual tokens of sample 1" in message
    assert "keeps 6 of its 8 image tokens (2 image(s))" in message
    assert f"the sample needs {lengths[1]} tokens" in message and "Raise max_length" in message


def test_bad_construction_is_explained(processor):
    tokenizer = processor.tokenizer
    with pytest.raises(ValueError, match="needs a visual_token_spec"):
        HybridVLMProcessor(processor.image_processor, tokenizer)
    config = tiny_config(tokenizer)
    config.image_token_id = 3
    with pytest.raises(ValueError, match=r"gives '<image>' the id 505 but the model config has image_token_id=3"):
        HybridVLMProcessor.from_model_config(config, tokenizer)
    with pytest.raises(ValueError, match="does not know the image token"):
        HybridVLMProcessor.from_model_config(tiny_config(tokenizer), tokenizer, image_token="<nope>")
    with pytest.raises(
        ValueError, match=r"the text has 1 <video> placeholder\(s\) \(per sample: \[1\]\) but no videos were given"
    ):
        processor(text="what happens in <video>?")


# ------------------------------------------------------------------------------------------------ chat template


def test_chat_template_with_image_blocks_matches_processor_on_rendered_text(processor):
    rendered = processor.apply_chat_template(conversations(), tokenize=False)
    assert rendered[1] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare<image><image><|im_end|>\n"
        "<|im_start|>assistant\nSame.<|im_end|>\n"
    )
    # The call TRL's vision collator makes.
    chat = processor.apply_chat_template(
        conversations(), tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    direct = processor(
        images=[sample_images()[:1], sample_images()[1:]], text=rendered, return_tensors="pt", padding=True
    )
    assert set(chat) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    for key in direct:
        assert torch.equal(chat[key], direct[key]), key
    # Bare image blocks plus images= give the same.
    separate = processor.apply_chat_template(
        conversations(with_pixels=False),
        images=[sample_images()[:1], sample_images()[1:]],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    assert torch.equal(separate["input_ids"], chat["input_ids"])
    assert torch.equal(separate["pixel_values"], chat["pixel_values"])
    with pytest.raises(ValueError, match=r"conversation 1 has 2 image block\(s\) without image data but 1 image"):
        processor.apply_chat_template(
            conversations(with_pixels=False), images=[sample_images()[:1], sample_images()[1:2]], tokenize=True
        )


def test_chat_template_generation_prompt_and_string_content(processor):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": make_image(28, 28)}, {"type": "text", "text": "Hi"}]},
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n<image>Hi<|im_end|>\n<|im_start|>assistant\n")
    # String content plus tokenize=True: transformers 4.57's own implementation crashes on this.
    out = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = processor(images=[make_image(28, 28)], text=prompt)
    assert out["input_ids"] == expected["input_ids"]
    # Text-only conversations (TRL tokenizes those through the processor too) keep the batch dimension.
    text_only = processor.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=True, return_dict=True)
    assert text_only["input_ids"] == processor(text="<|im_start|>user\nHi<|im_end|>\n")["input_ids"]


def test_chat_template_assistant_mask_skips_expanded_image_tokens(processor):
    out = processor.apply_chat_template(
        conversations(),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
        return_assistant_tokens_mask=True,
    )
    tokenizer = processor.tokenizer
    replies = [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(out["input_ids"], out["assistant_masks"])]
    assert replies == ["A cat on a mat.<|im_end|>", "Same.<|im_end|>"]
    assert "offset_mapping" not in out and "text_replacement_offsets" not in out


def test_trl_style_collation(processor):
    """Newer TRL renders with apply_chat_template, then calls the processor with these keywords."""
    texts = processor.apply_chat_template(conversations(with_pixels=False))
    out = processor(
        images=[sample_images()[:1], sample_images()[1:]],
        text=texts,
        padding=True,
        padding_side="right",
        pad_to_multiple_of=8,
        truncation=False,
        max_length=None,
        return_tensors="pt",
        add_special_tokens=False,
    )
    assert out["input_ids"].shape[1] % 8 == 0 and out["attention_mask"][:, 0].tolist() == [1, 1]
    assert image_token_counts(processor, out["input_ids"]) == [4, 8]


# --------------------------------------------------------------------------------------------- saving, loading


def test_decode_and_model_input_names(processor):
    ids = processor(text=["a cat", "a dog"])["input_ids"]
    assert processor.batch_decode(ids) == ["a cat", "a dog"]
    assert processor.decode(ids[0]) == "a cat"
    assert processor.model_input_names == [
        "input_ids", "attention_mask", "pixel_values", "image_sizes", "pixel_values_videos"
    ]


def save_folder(processor: HybridVLMProcessor, directory: Path) -> None:
    processor.save_pretrained(directory)
    tiny_config(processor.tokenizer).save_pretrained(directory)


def test_save_and_auto_load_round_trip(processor, tmp_path):
    save_folder(processor, tmp_path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "processor_config.json").read_text(encoding="utf-8"))
    spec = saved["visual_token_spec"]  # the token spec, nested; no flat token-count keys beside it
    assert {k: spec[k] for k in ("patch_size", "num_prefix_tokens", "vision_feature_select_strategy")} == {
        "patch_size": 14,
        "num_prefix_tokens": 1,
        "vision_feature_select_strategy": "default",
    }
    assert not set(saved) & {"patch_size", "num_prefix_tokens", "vision_pooled_grid", "num_vision_maps"}
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.visual_token_spec == processor.visual_token_spec
    assert isinstance(loaded, HybridVLMProcessor)
    assert loaded.chat_template == processor.chat_template
    assert describe(loaded) == describe(processor)


# ------------------------------------------------------------------------------------------------ cross version


def _run_other(other: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [other, str(Path(__file__).resolve()), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, f"other interpreter failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def other_side(processor, tmp_path_factory, other_python) -> dict[str, Any]:
    """One subprocess for both directions: it saves into ``saved_there`` and describes what we saved here."""
    saved_here, saved_there = tmp_path_factory.mktemp("saved_here"), tmp_path_factory.mktemp("saved_there")
    save_folder(processor, saved_here)
    report = _run_other(other_python, str(saved_there), str(saved_here))
    assert report["transformers"] != transformers.__version__, "HYBRID_VLM_OTHER_PYTHON runs the same line"
    return {**report, "saved_there": saved_there}


def test_folder_saved_by_other_version_loads_here(processor, other_side):
    loaded = AutoProcessor.from_pretrained(other_side["saved_there"])
    assert describe(loaded) == describe(processor) == other_side["own"], f"saved by {other_side['transformers']}"


def test_folder_saved_here_loads_in_other_version(processor, other_side):
    assert other_side["loaded"] == describe(processor), f"loaded by transformers {other_side['transformers']}"


def _main(save_directory: str, load_directory: str) -> None:
    """Entry point for the other interpreter: save our processor, describe it and the folder saved by the caller."""
    processor = build_processor()
    save_folder(processor, Path(save_directory))
    report = {
        "own": describe(processor),
        "loaded": describe(AutoProcessor.from_pretrained(load_directory)),
        "transformers": transformers.__version__,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    _main(*sys.argv[1:])


def test_a_prompt_that_starts_with_bos_gets_no_second_one():
    """A tokenizer that adds BOS (Jamba's, Llama's) and a template that writes it: the processor leaves it at one,
    as apply_chat_template(tokenize=True) does; prompts without it still get it; an explicit choice wins."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = load_tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", bos)]
    )
    assert tokenizer("hi")["input_ids"][0] == bos
    processor = HybridVLMProcessor.from_model_config(tiny_config(tokenizer), tokenizer)
    templated = "<|startoftext|>user: <image>hi"
    ids = processor(text=templated, images=[make_image(28, 28)])["input_ids"][0]
    assert ids[0] == bos and ids[1] != bos
    assert processor(text="user: hi")["input_ids"][0][:1] == [bos]
    assert processor(text="<|startoftext|>hi", add_special_tokens=True)["input_ids"][0][:2] == [bos, bos]
    assert processor(text=["<|startoftext|>a", "<|startoftext|>b"], padding=True)["input_ids"][0].count(bos) == 1
    with pytest.raises(ValueError, match="second BOS"):
        processor(text=["<|startoftext|>a", "b"], padding=True)
