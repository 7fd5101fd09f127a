"""`hybrid-vlm generate`: answer a prompt about an image or a video (a saved model, an adapter, a preset, a Hub id)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .chat import chat_inputs
from .loading import load_model
from .model_args import resolve_model_source
from .registry import command_help


def add_generate_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    generate = subparsers.add_parser("generate", help=command_help("generate"))
    generate.add_argument(
        "model", help="a saved model folder, a LoRA adapter folder from `train --lora`, a preset name or a Hub id"
    )
    media = generate.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="an image file")
    media.add_argument("--video", help="a video file (.mp4, ...)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    return generate


def open_image(path: str) -> Image.Image:
    """An RGB image from a file, with one-line errors for the usual mistakes (missing, a folder, not an image)."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--image {path!r} is a folder; pass one image file (PNG, JPEG, ...).")
    if not file.is_file():
        raise FileNotFoundError(f"--image file not found: {path}")
    try:
        with Image.open(file) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"--image {path!r} is not an image Pillow can read ({type(error).__name__}).") from None


def _check_prompt(prompt: str, processor: Any) -> None:
    for token in dict.fromkeys([processor.image_token, processor.video_token, "<image>", "<video>"]):
        if token and token in prompt:
            raise ValueError(
                f"--prompt contains {token!r}: leave it out; the CLI adds the image/video block for --image/--video "
                "itself, before the prompt."
            )


def run_generate(args: argparse.Namespace) -> int:
    """Answer `prompt` about an image or a video with a saved folder, a LoRA adapter folder, a preset or a Hub id."""
    model_path, prompt, max_new_tokens = args.model, args.prompt, args.max_new_tokens
    image_path, video_path = args.image, args.video
    resolve_model_source(model_path)  # a bad model argument fails first, and at once
    if (image_path is None) == (video_path is None):
        raise ValueError("generate needs exactly one of --image FILE or --video FILE.")
    image = open_image(image_path) if image_path is not None else None
    video = None
    if video_path is not None:
        video = Path(video_path)
        if video.is_dir():
            raise ValueError(f"--video {video_path!r} is a folder; pass one video file (.mp4, ...).")
        if not video.is_file():
            raise FileNotFoundError(f"--video file not found: {video_path}")
    model, processor, kind = load_model(model_path)
    model.eval()
    _check_prompt(prompt, processor)
    try:
        inputs = chat_inputs(processor, image, prompt, video)
    except (ValueError, RuntimeError, OSError) as error:
        if video is None:
            raise
        raise ValueError(f"--video {video_path!r} could not be decoded: {str(error).splitlines()[0]}") from None
    if kind == "preset":
        print(f"note: {model_path!r} is a preset: random weights, so the answer is noise.", file=sys.stderr)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)
    print(processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return 0
