"""One chat turn about an image or a video, through the processor's chat template (what demo and generate send)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image


def chat_inputs(processor: Any, image: Image.Image | None, question: str, video: Path | None = None) -> Any:
    """Model inputs of one user turn: an image (or video) block, then `question`, with the generation prompt."""
    block = {"type": "image"} if video is None else {"type": "video"}
    messages = [{"role": "user", "content": [block, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if video is not None:
        return processor(text=text, videos=[str(video)], return_tensors="pt")
    return processor(text=text, images=[image], return_tensors="pt")
