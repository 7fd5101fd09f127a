"""`hybrid-vlm demo`: a tiny preset answers about a generated image and video, is saved, reloaded and compared."""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..presets import from_preset
from ..processing_hybrid_vlm import HybridVLMProcessor
from ..version import __version__
from .chat import chat_inputs
from .registry import command_help


def add_demo_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    demo = subparsers.add_parser("demo", help=command_help("demo"))
    demo.add_argument("--preset", default="jamba-llava-tiny")
    demo.add_argument("--output", default=None, help="folder to keep the saved model in (default: a temp folder)")
    demo.add_argument("--max-new-tokens", type=int, default=12)
    demo.add_argument("--question", default="What is in this image?")
    return demo


@contextmanager
def _step(label: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    timings.append((label, elapsed))
    print(f"[{elapsed:7.2f}s] {label}")


def demo_image(size: int = 96) -> Image.Image:
    """A deterministic test picture: a colour gradient with a dark square, so no file or download is needed."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    pixels[size // 4 : size // 2, size // 4 : size // 2] = 20
    return Image.fromarray(pixels, mode="RGB")


def demo_video(path: Path, num_frames: int = 24, fps: int = 8, side: int = 32) -> Path:
    """A deterministic test clip written with PyAV: a dark square moving across a gradient."""
    import av

    y, x = np.mgrid[0:side, 0:side]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            pixels = np.stack([x * 255 // side, y * 255 // side, np.full_like(x, 128)], axis=-1).astype(np.uint8)
            left = i * (side - 8) // max(num_frames - 1, 1)
            pixels[side // 2 - 4 : side // 2 + 4, left : left + 8] = 20
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def expanded_layout(processor, input_ids, limit: int = 400) -> str:
    """The prompt after placeholder expansion, shortened: runs of a placeholder as `<image>×144`, repeated frame
    groups as `[...]×7`, newlines as `\\n`, and the middle cut when it is still longer than `limit` characters."""
    text = processor.tokenizer.decode(list(input_ids), skip_special_tokens=False)
    for token in dict.fromkeys([processor.image_token, processor.video_token]):
        text = re.sub(f"(?:{re.escape(token)})+", lambda m, t=token: f"{t}×{len(m.group(0)) // len(t)}", text)
    text = re.sub(r"((?:<img>|<\|vision_start\|>)[^\n]*?(?:</img>|<\|vision_end\|>)(?:<t>)?)\1+",
                  lambda m: f"[{m.group(1)}]×{len(m.group(0)) // len(m.group(1))}", text)
    text = text.replace("\n", "\\n")
    if len(text) > limit:
        text = f"{text[: limit // 2]} … {text[-limit // 2 :]}"
    return text


def run_demo(args: argparse.Namespace) -> int:
    """Build a tiny preset, answer a question about a generated image and one about a generated video (showing the
    expanded prompt layouts), save, reload through the Auto classes and check the reload changes nothing."""
    preset, output, max_new_tokens, question = args.preset, args.output, args.max_new_tokens, args.question
    timings: list[tuple[str, float]] = []
    print(f"hybrid_vlm {__version__} demo with preset '{preset}' (random weights: the text is noise)")
    with _step(f"build preset {preset}", timings):
        model, processor = from_preset(preset)
    print(f"          {model.num_parameters():,} parameters; LM: {model.config.text_config.model_type}")
    image = demo_image()
    with _step("process chat turn (1 image)", timings):
        inputs = chat_inputs(processor, image, question)
    print(f"          {inputs['input_ids'].shape[1]} tokens, pixel_values {tuple(inputs['pixel_values'].shape)}")
    print(f"          prompt layout ({processor.image_layout}): {expanded_layout(processor, inputs['input_ids'][0])}")
    with _step(f"generate {max_new_tokens} tokens (greedy)", timings), torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    print(f"          answer: {processor.decode(new_tokens, skip_special_tokens=True)!r}")

    with tempfile.TemporaryDirectory() as scratch:
        video = demo_video(Path(scratch) / "clip.mp4")
        video_question = "What moves in this video?"
        with _step("process chat turn (1 generated video)", timings):
            video_inputs = chat_inputs(processor, None, video_question, video)
        frames = tuple(video_inputs["pixel_values_videos"].shape)
        print(f"          {video_inputs['input_ids'].shape[1]} tokens, pixel_values_videos {frames}")
        print(f"          prompt layout ({processor.video_layout}): "
              f"{expanded_layout(processor, video_inputs['input_ids'][0])}")
        with _step(f"generate {max_new_tokens} tokens about the video (greedy)", timings), torch.no_grad():
            video_generated = model.generate(**video_inputs, max_new_tokens=max_new_tokens)
        video_answer = video_generated[0, video_inputs["input_ids"].shape[1] :]
        print(f"          answer: {processor.decode(video_answer, skip_special_tokens=True)!r}")
        # The same turn in LongLLaVA's layout (markers around images and frames), to show what a layout changes.
        longllava = HybridVLMProcessor.from_model_config(
            model.config, processor.tokenizer, image_processor=processor.image_processor,
            video_processor=processor.video_processor, layout="longllava",
        )
        shown = chat_inputs(longllava, None, video_question, video)["input_ids"][0]
        print(f"          the same turn in the longllava layout: {expanded_layout(longllava, shown)}")

        folder = Path(output) if output else Path(scratch) / "model"
        with _step(f"save to {folder}", timings):
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        with _step("reload with AutoModelForImageTextToText / AutoProcessor", timings):
            reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
            reloaded_processor = AutoProcessor.from_pretrained(folder)
        with _step("reload check (same inputs, logits and tokens)", timings), torch.no_grad():
            again = chat_inputs(reloaded_processor, image, question)
            video_again = chat_inputs(reloaded_processor, None, video_question, video)
            same_inputs = torch.equal(again["input_ids"], inputs["input_ids"]) and torch.equal(
                video_again["input_ids"], video_inputs["input_ids"]
            )
            diff = max(
                (model(**inputs).logits - reloaded(**again).logits).abs().max().item(),
                (model(**video_inputs).logits - reloaded(**video_again).logits).abs().max().item(),
            )
            regenerated = reloaded.generate(**again, max_new_tokens=max_new_tokens)
            video_regenerated = reloaded.generate(**video_again, max_new_tokens=max_new_tokens)
    same_tokens = torch.equal(regenerated, generated) and torch.equal(video_regenerated, video_generated)
    ok = same_inputs and same_tokens and diff == 0.0
    print(
        f"reload check: {type(reloaded).__name__}; identical inputs: {same_inputs}; max |logit diff|: {diff:.3g}; "
        f"identical tokens: {same_tokens} -> {'OK' if ok else 'FAILED'}"
    )
    print(f"total {sum(t for _, t in timings):.2f}s")
    return 0 if ok else 1
