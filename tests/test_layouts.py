"""Token layouts (llava, longllava, qwen2vl): what the processor writes, that the model fills the placeholder runs in
the order its features come, marker styles (special tokens or plain text), chat templates and saved folders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, PreTrainedTokenizerFast

import hybrid_vlm
from hybrid_vlm import HybridVLMImageProcessor, HybridVLMProcessor, HybridVLMVideoProcessor
from hybrid_vlm.chat_templates import CHAT_TEMPLATE
from hybrid_vlm.compat import projected_features
from hybrid_vlm.processing_hybrid_vlm import CHAT_TEMPLATES
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer, tiny_tokenizer_path
from hybrid_vlm.token_counts import (
    TokenLayout,
    VisualTokenSpec,
    count_layout_tokens,
    count_video_tokens,
    layout_pieces,
)

IS_5 = int(transformers.__version__.split(".")[0]) >= 5
TILE = 56  # the tiny presets' CLIP: 56 px views, 14 px patches -> 4 x 4 = 16 tokens per view
PER_VIEW = 16
VISION_MARKERS = ["<|vision_start|>", "<|vision_end|>"]
LONGLLAVA_MODEL = dict(image_newline=False, anyres_unpad=False, anyres_merge="flat")
# Model settings each layout is used with (what from_model_config passes on to the processor).
MODEL_OPTIONS = {
    "llava": dict(image_newline=True),
    "longllava": LONGLLAVA_MODEL,
    "qwen2vl": dict(image_newline=True),
}


def compress(text: str) -> str:
    """Runs of a placeholder as `<image>x16`, so expected strings stay readable."""
    return re.sub(r"(<image>|<video>)\1+", lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text)


def tokenizer_with_vision_markers() -> PreTrainedTokenizerFast:
    tokenizer = load_tiny_tokenizer()
    tokenizer.add_tokens(VISION_MARKERS, special_tokens=True)
    return tokenizer


def plain_text_marker_tokenizer(tmp_path: Path) -> PreTrainedTokenizerFast:
    """The tiny tokenizer without <img> </img> <vid> </vid> <t> as tokens: like LongLLaVA's, they become BPE pieces."""
    data = json.loads((tiny_tokenizer_path() / "tokenizer.json").read_text())
    markers = {"<img>", "</img>", "<vid>", "</vid>", "<t>"}
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in markers]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    extra = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    named = {"image_token": "<image>", "video_token": "<video>"}
    special: dict[str, Any] = (
        {"extra_special_tokens": extra, **named} if IS_5 else {"additional_special_tokens": extra,
                                                               "extra_special_tokens": named}
    )
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
        padding_side="left", chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False, **special,
    )


def build(layout: str, tokenizer: Any = None, max_tiles: int | None = 4, markers: str = "special", **video: Any):
    """(model, processor) of the tiny Llama preset, set up for `layout`, with AnyRes up to `max_tiles` tiles."""
    tokenizer = tokenizer or load_tiny_tokenizer()
    options = dict(MODEL_OPTIONS[layout])
    model, _ = hybrid_vlm.from_preset("llava-tiny", text_config={"vocab_size": len(tokenizer)}, **options)
    image_processor = HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=max_tiles)
    video_processor = HybridVLMVideoProcessor.from_image_processor(image_processor, **video)
    processor = HybridVLMProcessor.from_model_config(
        model.config, tokenizer, image_processor=image_processor, video_processor=video_processor, layout=layout,
        layout_markers=markers,
    )
    return model, processor


def frames(count: int, side: int = 20) -> list[Image.Image]:
    return [Image.fromarray(np.full((side, side, 3), 10 * i, np.uint8)) for i in range(count)]


def write_video(path: Path, num_frames: int = 12, rate: int = 6) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 9 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("layout_clips") / "clip.mkv")


WIDE = Image.new("RGB", (200, 90), (200, 30, 30))  # 2 tiles side by side with max_tiles=4 -> a 1 x 2 grid


# ----------------------------------------------------------------------------------------------- the one place


def test_layout_pieces_spell_out_every_layout():
    assert layout_pieces("llava", "image", [16, 32]) == [48]
    assert layout_pieces("longllava", "image", [16]) == ["<img>", 16, "</img>"]
    assert layout_pieces("longllava", "image", [16, 32, 32]) == ["<img>", 16, "\n", 32, "\n", 32, "</img>"]
    assert layout_pieces("qwen2vl", "image", [16, 32]) == ["<|vision_start|>", 48, "<|vision_end|>"]
    assert layout_pieces("plain", "video", [4, 4]) == [8]
    assert layout_pieces("longllava", "video", [4, 4]) == ["<vid><img>", 4, "</img><t><img>", 4, "</img></vid>"]
    assert layout_pieces("qwen2vl", "video", [4, 4, 4]) == ["<|vision_start|>", 12, "<|vision_end|>"]
    # counts: placeholders alone, or with markers at one token each unless measured otherwise
    assert count_layout_tokens("longllava", "image", [16, 32, 32]) == 80 + 4
    assert count_layout_tokens("longllava", "image", [16, 32, 32], include_markers=False) == 80
    measured = TokenLayout("longllava", "text", (("<img>", 3), ("\n", 1), ("</img>", 4)))
    assert count_layout_tokens(measured, "image", [16, 32, 32]) == 80 + 3 + 2 + 4
    spec = VisualTokenSpec(14, 1)
    for frames_ in (1, 2, 7):
        per_frame = count_video_tokens(spec, 1, 28, 28, include_markers=False)
        for name in ("plain", "longllava", "qwen2vl"):
            assert count_video_tokens(spec, frames_, 28, 28, name) == count_layout_tokens(
                name, "video", [per_frame] * frames_
            )
    assert count_video_tokens(spec, 3, 28, 28, "longllava") == 3 * 4 + 3 * 3 + 1
    with pytest.raises(ValueError, match="Unknown layout 'tiles'"):
        layout_pieces("tiles", "image", [1])
    with pytest.raises(ValueError, match="positive token counts"):
        layout_pieces("llava", "image", [0])


# ----------------------------------------------------------------------------------------------- what is written


@pytest.mark.parametrize("layout", ["llava", "longllava", "qwen2vl"])
def test_single_resolution_image_and_video_expansions(layout, clip):
    tokenizer = tokenizer_with_vision_markers()
    _, processor = build(layout, tokenizer, max_tiles=None, num_frames=2)
    out = processor(text="A <image> B <video> C", images=[WIDE], videos=[str(clip)], return_text_replacement_offsets=True)
    image, video = (r["replacement"] for r in out["text_replacement_offsets"][0])
    expected_image = {
        "llava": "<image>x16",
        "longllava": "<img><image>x16</img>",
        "qwen2vl": "<|vision_start|><image>x16<|vision_end|>",
    }[layout]
    expected_video = {
        "llava": "<video>x32",
        "longllava": "<vid><img><video>x16</img><t><img><video>x16</img></vid>",
        "qwen2vl": "<|vision_start|><video>x32<|vision_end|>",
    }[layout]
    assert (compress(image), compress(video)) == (expected_image, expected_video)
    # what is written is what is counted, markers included
    assert len(tokenizer(image, add_special_tokens=False)["input_ids"]) == processor.image_token_count(90, 200)
    assert len(tokenizer(video, add_special_tokens=False)["input_ids"]) == processor.num_video_tokens(2, TILE, TILE)
    assert processor.image_token_count(90, 200, include_markers=False) == PER_VIEW
    assert processor._get_num_multimodal_tokens(image_sizes=[(90, 200)]).num_image_tokens == [
        processor.image_token_count(90, 200)
    ]


def test_longllava_anyres_image_is_global_view_then_tile_rows():
    _, processor = build("longllava")
    tall = Image.new("RGB", (60, 130), (10, 10, 200))  # max_tiles=4 picks a 2 x 1 grid (two rows of one tile)
    out = processor(text="<image>", images=[WIDE, tall][1:], return_tensors="pt")
    assert out["image_grids"].tolist() == [[2, 1]]
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert compress(text) == "<img><image>x16\n<image>x16\n<image>x16</img>"
    out = processor(text="<image>", images=[WIDE], return_tensors="pt")
    assert out["image_grids"].tolist() == [[1, 2]]
    assert compress(processor.tokenizer.decode(out["input_ids"][0])) == "<img><image>x16\n<image>x32</img>"
    assert len(out["input_ids"][0]) == processor.image_token_count(90, 200) == 1 + 16 + 1 + 32 + 1


@pytest.mark.parametrize("layout", ["llava", "longllava", "qwen2vl"])
def test_model_fills_each_run_with_the_features_of_that_run(layout, clip):
    """The features the model scatters into each run of placeholders are the views the layout says are there."""
    tokenizer = tokenizer_with_vision_markers()
    model, processor = build(layout, tokenizer, num_frames=3)
    inputs = processor(text="Look: <image> and <video>?", images=[WIDE], videos=[str(clip)], return_tensors="pt")
    with torch.no_grad():
        features = projected_features(model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"], image_grids=inputs["image_grids"],
            num_patches=inputs["num_patches"],
        ))[0]
        views = projected_features(model.model.get_image_features(inputs["pixel_values"][0]))  # each view encoded alone: (3, 16, D)
        video = projected_features(model.model.get_video_features(inputs["pixel_values_videos"]))[0]
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        merged = model.model._merge_visual_features(inputs["input_ids"], embeds, [features], "image")
        merged = model.model._merge_visual_features(inputs["input_ids"], merged, [video], "video")
    ids = inputs["input_ids"][0].tolist()
    image_positions = [i for i, t in enumerate(ids) if t == processor.image_token_id]
    assert len(image_positions) == features.shape[0] == processor.image_token_count(90, 200, include_markers=False)
    torch.testing.assert_close(merged[0, image_positions], features)
    if layout == "longllava":
        # runs between the `\n` text tokens: global view, then the tile row (two tiles, each whole, left to right)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        runs, current = [], []
        for position in range(image_positions[0], image_positions[-1] + 2):
            if ids[position] == processor.image_token_id:
                current.append(position)
            elif current:
                runs.append(current)
                current = []
                assert [ids[position]] == newline or ids[position] == tokenizer.convert_tokens_to_ids("</img>")
        assert [len(r) for r in runs] == [16, 32]
        torch.testing.assert_close(merged[0, runs[0]], views[0])
        torch.testing.assert_close(merged[0, runs[1]], torch.cat([views[1], views[2]]))
    video_positions = [i for i, t in enumerate(ids) if t == processor.video_token_id]
    torch.testing.assert_close(merged[0, video_positions], video)
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == len(ids)


def test_longllava_anyres_needs_the_flat_model_packing():
    tokenizer = load_tiny_tokenizer()
    model, _ = hybrid_vlm.from_preset("llava-tiny", image_newline=True)
    image_processor = HybridVLMImageProcessor.from_vision_config(model.config.vision_config, max_tiles=4)
    with pytest.raises(ValueError, match="anyres_merge='flat'"):
        HybridVLMProcessor.from_model_config(model.config, tokenizer, image_processor=image_processor,
                                             image_layout="longllava")
    # single resolution: the tiling settings do not matter; per-call tiling is still checked
    processor = HybridVLMProcessor.from_model_config(model.config, tokenizer, image_layout="longllava")
    with pytest.raises(ValueError, match="image_newline=False, anyres_unpad=False"):
        processor(text="<image>", images=[WIDE], anyres=True, max_tiles=4)


def test_layout_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"does not know '<\|vision_start\|>'.*qwen2vl"):
        build("qwen2vl")
    with pytest.raises(ValueError, match="layout_markers='text'"):
        build("longllava", plain_text_marker_tokenizer(tmp_path))
    with pytest.raises(ValueError, match="unknown image_layout 'tiles'"):
        HybridVLMProcessor.from_model_config(
            hybrid_vlm.preset_config("llava-tiny"), load_tiny_tokenizer(), image_layout="tiles"
        )
    with pytest.raises(ValueError, match="unknown layout_markers"):
        HybridVLMProcessor.from_model_config(
            hybrid_vlm.preset_config("llava-tiny"), load_tiny_tokenizer(), layout_markers="bold"
        )


def test_plain_text_markers_for_converted_checkpoints(tmp_path, clip):
    """LongLLaVA's markers as plain text: several tokens each, measured, so counts with markers stay exact."""
    tokenizer = plain_text_marker_tokenizer(tmp_path)
    assert len(tokenizer.encode("</img><t><img>", add_special_tokens=False)) > 3
    model, processor = build("longllava", tokenizer, markers="text", num_frames=3)
    out = processor(text="<image><video>", images=[WIDE], videos=[str(clip)], return_text_replacement_offsets=True,
                    return_tensors="pt")
    image, video = (r["replacement"] for r in out["text_replacement_offsets"][0])
    assert compress(image) == "<img><image>x16\n<image>x32</img>"
    assert compress(video) == "<vid><img><video>x16</img><t><img><video>x16</img><t><img><video>x16</img></vid>"
    image_ids = tokenizer(image, add_special_tokens=False)["input_ids"]
    video_ids = tokenizer(video, add_special_tokens=False)["input_ids"]
    assert len(image_ids) == processor.image_token_count(90, 200) > 48 + 3
    assert len(video_ids) == processor.num_video_tokens(3, TILE, TILE) > 48 + 10
    assert len(out["input_ids"][0]) == len(image_ids) + len(video_ids)
    with torch.no_grad():
        assert model(**out).logits.shape[1] == len(out["input_ids"][0])
    # a token budget for frames counts the measured markers too
    ids = list(processor(text="<video>", videos=[str(clip)], num_frames=None, max_visual_tokens=70)["input_ids"][0])
    kept = ids.count(processor.video_token_id) // PER_VIEW
    assert len(ids) == processor.num_video_tokens(kept, TILE, TILE) <= 70 < processor.num_video_tokens(kept + 1, TILE, TILE)


def test_longllava_chat_video_layout_writes_the_reference_prompt(tmp_path):
    """'longllava-chat' is LongLLaVA's chat code byte for byte: the last frame closes with '</img' (its
    rstrip('<t>') eats the '>'), one frame is wrapped twice; counts with markers follow what is written."""
    assert layout_pieces("longllava-chat", "video", [4, 4]) == ["<vid><img>", 4, "</img><t><img>", 4, "</img</vid>"]
    assert layout_pieces("longllava-chat", "video", [4]) == ["<vid><img><img>", 4, "</img></img</vid>"]
    assert layout_pieces("longllava-chat", "image", [4]) == layout_pieces("longllava", "image", [4])
    tokenizer = plain_text_marker_tokenizer(tmp_path)
    _, processor = build("longllava", tokenizer, markers="text", max_tiles=None)
    processor = HybridVLMProcessor.from_model_config(
        hybrid_vlm.preset_config("llava-tiny", text_config={"vocab_size": len(tokenizer)}, **LONGLLAVA_MODEL),
        tokenizer, image_processor=processor.image_processor, image_layout="longllava", video_layout="longllava-chat",
        layout_markers="text",
    )
    for count, expected in ((1, "<vid><img><img><video>x16</img></img</vid>"),
                            (3, "<vid><img><video>x16</img><t><img><video>x16</img><t><img><video>x16</img</vid>")):
        out = processor(text="<video>Q", videos=[frames(count)], return_text_replacement_offsets=True)
        assert compress(out["text_replacement_offsets"][0][0]["replacement"]) == expected
        ids = tokenizer(expected.replace("<video>x16", "<video>" * 16) + "Q", add_special_tokens=False)["input_ids"]
        assert list(out["input_ids"][0]) == ids
        assert processor.num_video_tokens(count, TILE, TILE) == len(ids) - len(tokenizer("Q")["input_ids"])
    with pytest.raises(ValueError, match="layout_markers='text'"):
        HybridVLMProcessor.from_model_config(hybrid_vlm.preset_config("llava-tiny"), load_tiny_tokenizer(),
                                             video_layout="longllava-chat")


# ----------------------------------------------------------------------------------------------- chat templates


CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A red box."}]},
    {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "And these?"}]},
    {"role": "assistant", "content": "A clip and a box."},
]


@pytest.mark.parametrize("layout", ["llava", "longllava", "qwen2vl"])
def test_chat_template_per_layout_multi_turn_with_images_and_videos(layout, clip):
    tokenizer = tokenizer_with_vision_markers()
    tokenizer.chat_template = None  # the processor then takes its layout's template
    _, processor = build(layout, tokenizer, max_tiles=None, num_frames=2)
    assert processor.chat_template == CHAT_TEMPLATES[layout]
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    expected = {
        "llava": "<|im_start|>user\n<image>What is this?<|im_end|>\n<|im_start|>assistant\nA red box.<|im_end|>\n"
        "<|im_start|>user\n<video><image>And these?<|im_end|>\n<|im_start|>assistant\nA clip and a box.<|im_end|>\n",
        # LongLLaVA's chat code: a newline after each image, none after a video
        "longllava": "<|startoftext|><|User|>\n<image>\nWhat is this?\n<|startoftext|><|Assistant|>\nA red box."
        "<|endoftext|><|startoftext|><|User|>\n<video><image>\nAnd these?\n<|startoftext|><|Assistant|>\n"
        "A clip and a box.<|endoftext|>",
        "qwen2vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>What is this?"
        "<|im_end|>\n<|im_start|>assistant\nA red box.<|im_end|>\n<|im_start|>user\n<video><image>And these?"
        "<|im_end|>\n<|im_start|>assistant\nA clip and a box.<|im_end|>\n",
    }[layout]
    assert text == expected
    out = processor.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, images=[WIDE, WIDE],
        videos=[str(clip)], num_frames=2,
    )
    ids, mask = list(out["input_ids"][0]), list(out["assistant_masks"][0])
    assert ids == list(processor(text=text, images=[WIDE, WIDE], videos=[str(clip)], num_frames=2)["input_ids"][0])
    answer = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    end = "<|endoftext|>" if layout == "longllava" else "<|im_end|>"
    assert answer == f"A red box.{end}A clip and a box.{end}"
    assert ids.count(processor.image_token_id) == 2 * PER_VIEW
    assert ids.count(processor.video_token_id) == 2 * PER_VIEW


def test_chat_template_by_layout_name_overrides_the_tokenizers():
    _, processor = build("llava", max_tiles=None)
    assert processor.chat_template == CHAT_TEMPLATE
    config = hybrid_vlm.preset_config("llava-tiny")
    named = HybridVLMProcessor.from_model_config(config, load_tiny_tokenizer(), chat_template="longllava")
    assert named.chat_template == CHAT_TEMPLATES["longllava"]
    prompt = named.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|startoftext|><|Assistant|>\n")


# ----------------------------------------------------------------------------------------------- saved folders


def test_auto_processor_round_trip_restores_layouts(tmp_path, clip):
    tokenizer = plain_text_marker_tokenizer(tmp_path)
    _, processor = build("longllava", tokenizer, markers="text", sampling="middle", num_frames=3, max_frames=16)
    processor.chat_template = CHAT_TEMPLATES["longllava"]
    processor.save_pretrained(tmp_path / "saved")
    loaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(loaded) is HybridVLMProcessor
    for name in ("image_layout", "video_layout", "layout_markers", "visual_token_spec"):
        assert getattr(loaded, name) == getattr(processor, name), name
    assert loaded._image_token_layout == processor._image_token_layout
    assert loaded._video_token_layout == processor._video_token_layout
    assert loaded.chat_template == CHAT_TEMPLATES["longllava"]
    assert loaded.image_processor.max_tiles == 4
    assert (loaded.video_processor.sampling, loaded.video_processor.num_frames) == ("middle", 3)
    kwargs = dict(text="<image> then <video>", images=[WIDE], videos=[str(clip)], return_tensors="pt")
    before, after = processor(**kwargs), loaded(**kwargs)
    assert torch.equal(before["input_ids"], after["input_ids"])
    torch.testing.assert_close(before["pixel_values_videos"], after["pixel_values_videos"])
