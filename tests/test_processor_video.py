"""HybridVLMProcessor with videos: `<video>` expands to exactly `count_video_tokens` tokens in either layout, video
keywords reach the video processor, chat templates take video content blocks, and saved folders (with or without a
video processor, from either transformers line) load back with their layout and sampling settings.

The cross-version test needs ``HYBRID_VLM_OTHER_PYTHON`` (the other line's interpreter), which runs this file as a
script (see ``__main__``) so both sides process the same generated video with the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, CLIPVisionConfig, LlamaConfig

from hybrid_vlm.configuration_hybrid_vlm import HybridVLMConfig
from hybrid_vlm.image_processing_hybrid_vlm import HybridVLMImageProcessor
from hybrid_vlm.processing_hybrid_vlm import HybridVLMProcessor
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import VisualTokenSpec, count_video_tokens
from hybrid_vlm.video_processing_hybrid_vlm import HybridVLMVideoProcessor, uniform_indices

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
TOKENS_PER_FRAME = 4  # (28 / 14) ** 2 patch tokens, CLS dropped ("default" strategy)


def register_auto_classes() -> None:
    """What the package's __init__ does on import; tolerant of running twice. (No AutoVideoProcessor: the processor
    loads its video processor itself.)"""
    try:
        AutoConfig.register("hybrid_vlm", HybridVLMConfig)
    except ValueError:
        pass
    AutoImageProcessor.register(HybridVLMConfig, slow_image_processor_class=HybridVLMImageProcessor, exist_ok=True)
    AutoProcessor.register(HybridVLMConfig, HybridVLMProcessor, exist_ok=True)


register_auto_classes()


def tiny_config(tokenizer: Any) -> HybridVLMConfig:
    return HybridVLMConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION),
        text_config=LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_TEXT),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )


def build_processor(layout: str = "plain", **video_settings: Any) -> HybridVLMProcessor:
    tokenizer = load_tiny_tokenizer()
    config = tiny_config(tokenizer)
    image_processor = HybridVLMImageProcessor.from_vision_config(config.vision_config)
    video_processor = HybridVLMVideoProcessor.from_image_processor(image_processor, **video_settings)
    return HybridVLMProcessor.from_model_config(
        config, tokenizer, image_processor=image_processor, video_processor=video_processor, video_layout=layout
    )


def write_video(path: Path, num_frames: int, rate: int = 10) -> Path:
    """Frame i is a flat grey of level 4 * i (so frames are told apart after decoding)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 4 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {"long": write_video(root / "long.mkv", 40), "short": write_video(root / "short.mkv", 5)}


@pytest.fixture(scope="module")
def processor() -> HybridVLMProcessor:
    return build_processor()


@pytest.fixture(scope="module")
def longllava() -> HybridVLMProcessor:
    return build_processor("longllava")


def frames(count: int, side: int = 20) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(np.full((side, side, 3), 10 * i, np.uint8)) for i in range(count)]


def video_token_counts(processor: HybridVLMProcessor, input_ids: Any) -> list[int]:
    return [list(row).count(processor.video_token_id) for row in input_ids]


# ------------------------------------------------------------------------------------------------ expansion


@pytest.mark.parametrize("layout", ["plain", "longllava"])
def test_expansion_is_count_video_tokens(layout, clips):
    processor = build_processor(layout)
    spec = processor.visual_token_spec
    out = processor(
        text=["<video> then <video>", "only <image> and <video>"],
        videos=[clips["long"], clips["short"], frames(3)],
        images=[frames(1)[0]],
        num_frames=8,
        padding=True,
        return_tensors="pt",
        return_text_replacement_offsets=True,
    )
    counts = [8, 5, 3]  # the short clip has 5 frames; in-memory frames are kept as given
    assert [tuple(v.shape) for v in out["pixel_values_videos"]] == [(n, 3, 28, 28) for n in counts]
    # Video tokens (what the model fills with frame features) per sample:
    features = [count_video_tokens(spec, n, 28, 28, layout, include_markers=False) for n in counts]
    assert features == [TOKENS_PER_FRAME * n for n in counts]
    assert video_token_counts(processor, out["input_ids"]) == [features[0] + features[1], features[2]]
    # And each whole expansion, markers included, is exactly count_video_tokens long.
    videos = [r for sample in out["text_replacement_offsets"] for r in sample if r["type"] == "video"]
    for replacement, n in zip(videos, counts):
        ids = processor.tokenizer(replacement["replacement"], add_special_tokens=False)["input_ids"]
        assert len(ids) == count_video_tokens(spec, n, 28, 28, layout) == processor.num_video_tokens(n, 28, 28)
        markers = 0 if layout == "plain" else 3 * n + 1
        assert len(ids) == TOKENS_PER_FRAME * n + markers
    assert out["input_ids"][1].tolist().count(processor.image_token_id) == TOKENS_PER_FRAME


def test_longllava_layout_for_three_frames(longllava):
    out = longllava(text="Q: <video>?", videos=[frames(3)], return_text_replacement_offsets=True)
    frame = "<video>" * TOKENS_PER_FRAME
    expected = f"<vid><img>{frame}</img><t><img>{frame}</img><t><img>{frame}</img></vid>"
    assert out["text_replacement_offsets"][0][0]["replacement"] == expected
    assert longllava.decode(out["input_ids"][0]) == f"Q: {expected}?"
    # Every marker is one special token; the frame features go to the <video> positions between <img> and </img>.
    tokens = longllava.tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert tokens[3:9] == ["<vid>", "<img>", "<video>", "<video>", "<video>", "<video>"]
    assert tokens.count("<t>") == 2 and tokens.count("<img>") == tokens.count("</img>") == 3


def test_plain_layout_is_one_run_of_video_tokens(processor):
    out = processor(text="<video>!", videos=[frames(2)], return_text_replacement_offsets=True)
    assert out["text_replacement_offsets"][0][0]["replacement"] == "<video>" * (2 * TOKENS_PER_FRAME)
    assert processor.decode(out["input_ids"][0]) == "<video>" * 8 + "!"


def test_offsets_map_back_to_the_callers_text(processor):
    text = "a <image> b <video> c"
    out = processor(text=text, images=frames(1), videos=[frames(2)], return_offsets_mapping=True)
    spans = {
        tok: {tuple(span) for t, span in zip(out["input_ids"][0], out["offset_mapping"][0]) if t == tok}
        for tok in (processor.image_token_id, processor.video_token_id)
    }
    assert spans[processor.image_token_id] == {(2, 9)} and spans[processor.video_token_id] == {(12, 19)}
    type_ids = processor(text=text, images=frames(1), videos=[frames(2)], return_mm_token_type_ids=True)
    assert sorted(set(type_ids["mm_token_type_ids"][0])) == [0, 1, 2]
    assert type_ids["mm_token_type_ids"][0].count(2) == 2 * TOKENS_PER_FRAME


def test_video_keywords_reach_the_video_processor(processor, clips):
    out = processor(text="<video>", videos=clips["long"], num_frames=3, return_metadata=True)
    assert out["video_metadata"][0]["frame_indices"] == uniform_indices(40, 3)
    assert "video_metadata" not in processor(text="<video>", videos=clips["long"])  # no model input: only on request
    out = processor(text="<video>", videos=clips["long"], videos_kwargs={"fps": 1}, return_metadata=True)
    assert out["video_metadata"][0]["frame_indices"] == [0, 10, 20, 30]
    out = processor(text="<video>", videos=clips["long"], sampling="middle", num_frames=2, return_metadata=True)
    assert out["video_metadata"][0]["frame_indices"] == [10, 30]
    # A frame-pipeline keyword applies to images and video frames alike.
    out = processor(
        text="<image><video>",
        images=frames(1),
        videos=[frames(2)],
        size={"height": 14, "width": 14},
        crop_size={"height": 14, "width": 14},
        return_tensors="pt",
    )
    assert out["pixel_values"].shape[-2:] == out["pixel_values_videos"].shape[-2:] == (14, 14)
    with pytest.raises(TypeError, match="`num_frames` was passed both as a keyword and in videos_kwargs"):
        processor(text="<video>", videos=clips["long"], num_frames=2, videos_kwargs={"num_frames": 3})


def test_token_budget_through_the_processor(longllava, clips):
    out = longllava(text="<video>", videos=clips["long"], num_frames=None, max_visual_tokens=50, return_metadata=True)
    count = len(out["video_metadata"][0]["frame_indices"])
    assert count == 7  # 7 frames: 28 video tokens + 22 markers = 50
    assert len(out["input_ids"][0]) == count_video_tokens(longllava.visual_token_spec, 7, 28, 28, "longllava")


def test_placeholder_and_video_counts_must_match(processor, clips):
    with pytest.raises(
        ValueError, match=r"the text has 1 <video> placeholder\(s\) \(per sample: \[1\]\) but no videos"
    ):
        processor(text="what happens in <video>?")
    with pytest.raises(ValueError, match=r"the text has 1 <video> placeholder\(s\) .* but 2 video\(s\) were given"):
        processor(text="<video>", videos=[clips["long"], clips["short"]])
    with pytest.raises(ValueError, match=r"sample 1 has 0 <video> placeholder\(s\) in its text but 1 video\(s\)"):
        processor(text=["<video>", "none"], videos=[[clips["long"]], [clips["short"]]])
    with pytest.raises(ValueError, match="holds 1 per-sample video lists but there are 2 text sample"):
        processor(text=["<video>", "x"], videos=[[clips["long"]]])
    with pytest.raises(TypeError, match=r"cannot read videos\[0\] \(a int\) as a video"):
        processor(text="<video>", videos=[7])


def test_truncation_that_cuts_video_tokens_is_an_error(processor):
    with pytest.raises(ValueError) as error:
        processor(text="intro <video> outro", videos=[frames(4)], truncation=True, max_length=10)
    message = str(error.value)
    assert "max_length=10 would cut visual tokens of sample 0" in message
    assert "of its 16 video tokens (1 video(s))" in message and "sample fewer frames" in message


def test_unknown_video_token_is_explained(clips):
    tokenizer = load_tiny_tokenizer()
    processor = HybridVLMProcessor.from_model_config(tiny_config(tokenizer), tokenizer, video_token="<clip>")
    assert processor(text="no video here")["input_ids"]  # image/text use still works
    with pytest.raises(ValueError, match="does not know the video token '<clip>'"):
        processor(text="<clip>", videos=clips["short"])
    config = tiny_config(tokenizer)
    config.video_token_id = 3
    with pytest.raises(ValueError, match="the model config has video_token_id=3"):
        HybridVLMProcessor.from_model_config(config, tokenizer)
    with pytest.raises(ValueError, match="unknown video_layout 'qwen'"):
        HybridVLMProcessor.from_model_config(tiny_config(tokenizer), tokenizer, video_layout="qwen")


def test_num_multimodal_tokens_for_videos(longllava):
    data = longllava._get_num_multimodal_tokens(image_sizes=[(50, 40)], video_sizes=[(8, 16, 16), (3, 90, 60)])
    spec = VisualTokenSpec(14, 1)
    assert data.num_video_tokens == [count_video_tokens(spec, n, 28, 28, "longllava") for n in (8, 3)]
    assert data.num_image_tokens == [TOKENS_PER_FRAME]


@pytest.mark.parametrize("layout", ["plain", "longllava"])
def test_model_consumes_what_the_processor_expands(layout, clips):
    """Processor and model agree on every count: videos of different lengths, mixed with an image, in a batch."""
    from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    processor = build_processor(layout)
    torch.manual_seed(0)
    model = HybridVLMForConditionalGeneration(tiny_config(processor.tokenizer)).eval()
    batch = processor(
        text=["<video> and <image>", "two: <video><video>"],
        videos=[clips["long"], frames(3), clips["short"]],
        images=frames(1),
        num_frames=4,
        padding=True,
        return_tensors="pt",
    )
    assert [tuple(v.shape) for v in batch["pixel_values_videos"]] == [(4, 3, 28, 28), (3, 3, 28, 28), (4, 3, 28, 28)]
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


# ------------------------------------------------------------------------------------------------ chat template


def conversation(video: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What moves?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A grey square."}]},
    ]


@pytest.mark.parametrize("layout", ["plain", "longllava"])
def test_chat_template_with_video_blocks(layout, clips):
    processor = build_processor(layout)
    batch = [conversation(str(clips["long"])), conversation(frames(3))]
    out = processor.apply_chat_template(
        batch,
        tokenize=True,
        return_dict=True,
        num_frames=2,
        padding=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
    )
    # num_frames reaches the decoded file; the in-memory frames are sampled too (apply_chat_template asks for it).
    assert out["pixel_values_videos"].shape == (2, 2, 3, 28, 28)
    per_video = count_video_tokens(processor.visual_token_spec, 2, 28, 28, layout, include_markers=False)
    assert video_token_counts(processor, out["input_ids"]) == [per_video, per_video]
    for row, mask in zip(out["input_ids"], out["assistant_masks"]):
        answer = [t for t, m in zip(row.tolist(), mask.tolist()) if m]
        assert processor.decode(answer) == "A grey square.<|im_end|>"
    rendered = processor.apply_chat_template(batch[:1], tokenize=False)
    assert rendered[0].startswith("<|im_start|>user\n<video>What moves?")


def test_chat_template_with_videos_given_separately(processor, clips):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, videos=[clips["short"]], images=frames(1), return_tensors="pt"
    )
    assert out["pixel_values_videos"].shape == (1, 5, 3, 28, 28) and out["pixel_values"].shape[0] == 1
    with pytest.raises(ValueError, match="has 1 video block\\(s\\) without video data but 2 video\\(s\\)"):
        processor.apply_chat_template(messages, tokenize=True, videos=[clips["short"], clips["long"]], images=frames(1))


# ------------------------------------------------------------------------------------------------ saving, loading


def save_folder(processor: HybridVLMProcessor, directory: Path) -> None:
    processor.save_pretrained(directory)
    tiny_config(processor.tokenizer).save_pretrained(directory)


def describe(processor: HybridVLMProcessor, video: str) -> dict[str, Any]:
    """What must survive saving and loading (and crossing transformers lines), as plain JSON."""
    out = processor(
        text=["<video> x", "<image>"],
        videos=[video],
        images=frames(1),
        padding=True,
        return_tensors="pt",
        return_metadata=True,
    )
    return {
        "input_ids": out["input_ids"].tolist(),
        "pixel_sum": round(float(out["pixel_values_videos"].double().sum()), 3),
        "frame_indices": out["video_metadata"][0]["frame_indices"],
        "layout": processor.video_layout,
        "video_processor": processor.video_processor.to_dict(),
        "classes": [type(processor).__name__, type(processor.video_processor).__name__],
    }


def test_save_and_auto_load_round_trip(tmp_path, clips):
    processor = build_processor("longllava", sampling="middle", num_frames=6, max_frames=32, temporal_patch_size=2)
    save_folder(processor, tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["video_layout"] == "longllava"
    assert (tmp_path / "video_preprocessor_config.json").is_file()
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.video_processor, HybridVLMVideoProcessor)
    assert describe(loaded, str(clips["long"])) == describe(processor, str(clips["long"]))
    assert loaded.video_processor.sampling == "middle" and loaded.video_processor.temporal_patch_size == 2
    assert AutoProcessor.from_pretrained(tmp_path, num_frames=4).video_processor.num_frames == 4


def test_folder_saved_without_a_video_processor_still_loads(processor, tmp_path, clips):
    """Folders written before processors had a video processor (or by other tools): sensible defaults."""
    save_folder(processor, tmp_path)
    (tmp_path / "video_preprocessor_config.json").unlink()
    config = json.loads((tmp_path / "processor_config.json").read_text())
    for key in ("video_processor", "video_layout", "video_token"):
        config.pop(key, None)
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.video_layout == "plain" and loaded.video_token == "<video>"
    assert loaded.video_processor.crop_size == processor.image_processor.crop_size  # the image settings
    assert loaded.video_processor.num_frames == 8
    assert describe(loaded, str(clips["long"])) == describe(processor, str(clips["long"]))


def _run_other(other: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [other, str(Path(__file__).resolve()), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, f"other interpreter failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_folders_cross_transformers_lines(tmp_path, clips, other_python):
    processor = build_processor("longllava", num_frames=3)
    saved_here, saved_there = tmp_path / "here", tmp_path / "there"
    save_folder(processor, saved_here)
    report = _run_other(other_python, str(saved_there), str(saved_here), str(clips["long"]))
    assert report["transformers"] != transformers.__version__, "HYBRID_VLM_OTHER_PYTHON runs the same line"
    mine = describe(processor, str(clips["long"]))
    assert report["loaded"] == mine, f"loaded by transformers {report['transformers']}"
    assert describe(AutoProcessor.from_pretrained(saved_there), str(clips["long"])) == report["own"] == mine


def _main(save_directory: str, load_directory: str, video: str) -> None:
    """Entry point for the other interpreter: save our processor, describe it and the folder saved by the caller."""
    processor = build_processor("longllava", num_frames=3)
    save_folder(processor, Path(save_directory))
    report = {
        "own": describe(processor, video),
        "loaded": describe(AutoProcessor.from_pretrained(load_directory), video),
        "transformers": transformers.__version__,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    _main(*sys.argv[1:])
