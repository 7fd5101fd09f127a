"""How callers hand images and videos to the processor: one item, a flat list, or one list per text sample, and
media placed into chat messages (`apply_chat_template(..., images=..., videos=...)`, video blocks given as frames).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .video_processing_hybrid_vlm import is_video, make_video_list

_NAME = "HybridVLMProcessor"


def _is_single_image(item: Any) -> bool:
    """What the image processor treats as one image (a 4-D array or tensor is a batch of them)."""
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim in (2, 3)
    return not isinstance(item, (list, tuple))


def _image_items(item: Any) -> list[Any]:
    """One user-level item -> the images it contains (a 4-D array/tensor holds several)."""
    if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
        return list(item)
    return [item]


def flatten_sample_images(images: Any, num_samples: int) -> tuple[list[Any], list[list[Any]] | None]:
    """Flat list of images, and the per-sample lists when `images` was nested (one list per text)."""
    if images is None:
        return [], None
    if _is_single_image(images) or isinstance(images, (np.ndarray, torch.Tensor)):
        return _image_items(images), None
    items = list(images)
    nested = [isinstance(item, (list, tuple)) for item in items]
    if any(nested) and not all(nested):
        raise ValueError(
            f"{_NAME}: `images` mixes single images and lists. Pass either a flat list of images or one list of "
            "images per text sample (use [] for a sample without images)."
        )
    if items and all(nested):
        if len(items) != num_samples:
            raise ValueError(
                f"{_NAME}: `images` holds {len(items)} per-sample image lists but there are {num_samples} text "
                "sample(s). Pass one list per text (use [] for a sample without images)."
            )
        per_sample = [[image for item in sample for image in _image_items(item)] for sample in items]
        return [image for sample in per_sample for image in sample], per_sample
    return [image for item in items for image in _image_items(item)], None


def _copy_conversation(conversation: list[dict[str, Any]], blocks_for_strings: bool) -> list[dict[str, Any]]:
    """Copies of the messages (the caller's dicts are never modified); optionally string content -> a text block."""
    copied = []
    for message in conversation:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str) and blocks_for_strings:
            message["content"] = [{"type": "text", "text": content}]
        elif isinstance(content, (list, tuple)):
            message["content"] = [_frames_block(block) if isinstance(block, dict) else block for block in content]
        copied.append(message)
    return copied


def _frames_block(block: dict[str, Any]) -> dict[str, Any]:
    """A copy of a content block; a video block given as ``"frames"`` (images or image paths, in order) becomes one
    whose ``"video"`` is that list of frames (transformers' loaders know no ``frames`` key)."""
    block = dict(block)
    if block.get("type") != "video" or "frames" not in block:
        return block
    if any(key in block for key in ("video", "url", "path")):
        raise ValueError(f'{_NAME}: a video block has both "frames" and a video source; give one of them.')
    frames = block.pop("frames")
    if isinstance(frames, (str, os.PathLike)) or not isinstance(frames, (list, tuple)) or not frames:
        raise ValueError(f'{_NAME}: a video block\'s "frames" must be a non-empty list of images or image paths.')
    loaded = []
    for frame in frames:
        if isinstance(frame, (str, os.PathLike)):
            from PIL import Image

            with Image.open(frame) as opened:
                frame = opened.convert("RGB")
        loaded.append(frame)
    block["video"] = loaded
    return block


def has_frame_blocks(conversation: Any) -> bool:
    """Whether any message (of one conversation or a batch) has a video block given as ``"frames"``."""
    stack = [conversation]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "video" and "frames" in item:
                return True
            content = item.get("content")
            if isinstance(content, (list, tuple)):
                stack.extend(content)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def prepare_conversations(conversation: Any, images: Any, blocks_for_strings: bool, videos: Any = None) -> Any:
    """Put separately given images (videos) into the image (video) blocks that carry none; keep the batch shape."""
    is_batched = (
        isinstance(conversation, (list, tuple))
        and bool(conversation)
        and (isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "content"))
    )
    conversations = [
        _copy_conversation(c, blocks_for_strings) for c in (conversation if is_batched else [conversation])
    ]
    if images is not None:
        _fill_bare_blocks(conversations, "image", flatten_sample_images(images, len(conversations)))
    if videos is not None:
        _fill_bare_blocks(conversations, "video", flatten_sample_videos(videos, len(conversations)))
    return conversations if is_batched else conversations[0]


# Keys of a content block that already carry its image / video.
_MEDIA_KEYS = {"image": ("image", "url", "path", "base64"), "video": ("video", "url", "path")}


def _fill_bare_blocks(
    conversations: list[list[dict[str, Any]]], kind: str, media: tuple[list[Any], list[list[Any]] | None]
) -> None:
    """Give every `{"type": kind}` block without data the next of the media, per conversation when given so."""
    flat, per_conversation = media
    bare = [
        [
            block
            for message in conv
            for block in (message.get("content") if isinstance(message.get("content"), list) else [])
            if isinstance(block, dict)
            and block.get("type") == kind
            and not any(key in block for key in _MEDIA_KEYS[kind])
        ]
        for conv in conversations
    ]
    groups = per_conversation if per_conversation is not None else [flat]
    targets = bare if per_conversation is not None else [[b for blocks in bare for b in blocks]]
    for index, (blocks, given) in enumerate(zip(targets, groups)):
        if len(blocks) != len(given):
            where = f"conversation {index}" if per_conversation is not None else "the conversation(s)"
            raise ValueError(
                f"{_NAME}: {where} has {len(blocks)} {kind} block(s) without {kind} data but {len(given)} {kind}(s) "
                f'were passed with {kind}s=. Give one {kind} per {{"type": "{kind}"}} block.'
            )
        for block, item in zip(blocks, given):
            block[kind] = item


def flatten_sample_videos(videos: Any, num_samples: int) -> tuple[list[Any], list[list[Any]] | None]:
    """Flat list of videos, and the per-sample lists when `videos` was nested (one list of videos per text).

    A list of frames is one video, not a sample: a nested list is per-sample only when its items are lists of videos.
    """
    if videos is None:
        return [], None
    if not isinstance(videos, (list, tuple)) or is_video(videos):
        return make_video_list(videos), None
    items = list(videos)
    if items and all(isinstance(item, (list, tuple)) and not is_video(item) for item in items):
        if len(items) != num_samples:
            raise ValueError(
                f"{_NAME}: `videos` holds {len(items)} per-sample video lists but there are {num_samples} text "
                "sample(s). Pass one list per text (use [] for a sample without videos)."
            )
        per_sample = [make_video_list(sample) if sample else [] for sample in items]
        return [video for sample in per_sample for video in sample], per_sample
    return make_video_list(items), None


__all__ = ["flatten_sample_images", "flatten_sample_videos", "has_frame_blocks", "prepare_conversations"]
