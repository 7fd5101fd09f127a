"""The tiny tokenizer shipped with the package (a 500-token BPE plus the special tokens below), for tests, demos
and the tiny presets: it loads offline, with the ChatML chat template and left padding."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .chat_templates import CHAT_TEMPLATE, IMAGE_TOKEN, VIDEO_TOKEN
from .compat import special_tokens_kwargs

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IMAGE_END_TOKEN",
    "IMAGE_START_TOKEN",
    "IMAGE_TOKEN",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "NAMED_SPECIAL_TOKENS",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TIMESTAMP_TOKEN",
    "VIDEO_END_TOKEN",
    "VIDEO_START_TOKEN",
    "VIDEO_TOKEN",
    "load_tiny_tokenizer",
    "tiny_tokenizer_path",
]

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
VIDEO_START_TOKEN = "<vid>"
VIDEO_END_TOKEN = "</vid>"
TIMESTAMP_TOKEN = "<t>"

# Order matters: build_tiny_tokenizer.py appends these after the BPE vocabulary, so a token's id is 500 + its index.
# Append new tokens at the end only, never reorder: that keeps every existing id stable.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_END_TOKEN,
    VIDEO_START_TOKEN,
    VIDEO_END_TOKEN,
    TIMESTAMP_TOKEN,
)
# Named special tokens beyond bos/eos/pad: they become ``tokenizer.image_token`` / ``tokenizer.image_token_id``.
NAMED_SPECIAL_TOKENS: dict[str, str] = {"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN}

TINY_MODEL_MAX_LENGTH = 32768


def tiny_tokenizer_path() -> Path:
    """Folder of the shipped tiny tokenizer (package data, so it works from a wheel as well as from a checkout)."""
    return Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Load the tiny tokenizer offline, with special tokens, left padding and the chat template set.

    Left padding because batched prompts are for generation: every row must end at the next token to predict.
    """
    tokenizer_file = tiny_tokenizer_path() / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{tokenizer_file} is missing; regenerate it with src/hybrid_vlm/assets/build_tiny_tokenizer.py"
        )
    extra = [t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)]
    # transformers releases spell "unnamed extra tokens" and "named extra tokens" differently (see compat).
    special_kwargs = special_tokens_kwargs(extra, NAMED_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=TINY_MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        **special_kwargs,
    )
