"""`VideoSFTCollator`: chats with video and/or image blocks into model inputs with labels, never cutting visual tokens.

TRL has no video column; this collator takes chats whose content blocks carry videos (and/or images), applies the chat
template through the processor, and keeps or drops over-long samples by `apply_overflow_policy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

OVERFLOW_POLICIES = ("error", "drop", "truncate")


def apply_overflow_policy(
    total_tokens: Sequence[int],
    visual_tokens: Sequence[int],
    max_length: int | None,
    overflow: str = "error",
    visual_end: Sequence[int] | None = None,
    descriptions: Sequence[str] | None = None,
) -> list[int]:
    """Indices of the samples to keep under `max_length`, never cutting visual tokens.

    Args:
        total_tokens: tokens per sample (text + visual), untruncated.
        visual_tokens: image/video placeholder tokens per sample.
        max_length: the limit; None keeps everything.
        overflow: `"error"`: a ValueError naming the first sample that does not fit, with its numbers;
            `"drop"`: leave such samples out (the caller logs the count); `"truncate"`: keep a sample when cutting it
            to `max_length` removes only text after its last visual token (needs `visual_end`), else error.
        visual_end: per sample, the position just after its last visual token (0 when it has none).
        descriptions: short labels for error messages (e.g. the start of the prompt).
    """
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}.")
    if len(total_tokens) != len(visual_tokens):
        raise ValueError("total_tokens and visual_tokens must have one entry per sample.")
    if overflow == "truncate" and visual_end is None:
        raise ValueError("overflow='truncate' needs visual_end (where each sample's last visual token ends).")
    if max_length is None:
        return list(range(len(total_tokens)))
    keep = []
    for index, (total, visual) in enumerate(zip(total_tokens, visual_tokens)):
        total, visual = int(total), int(visual)
        if total <= max_length:
            keep.append(index)
            continue
        if overflow == "drop":
            continue
        if overflow == "truncate" and visual_end is not None and int(visual_end[index]) <= max_length:
            keep.append(index)
            continue
        what = f" ({descriptions[index]})" if descriptions is not None else ""
        cut = "cutting it would remove visual tokens" if overflow == "truncate" else "visual tokens are never cut"
        raise ValueError(
            f"Sample {index} of this batch{what} needs {total} tokens ({total - visual} text + {visual} visual) but "
            f"max_length={max_length}; {cut}. Raise max_length to at least {total}, use fewer/smaller images or "
            "frames, or pass overflow='drop' to skip such samples."
        )
    return keep


_IMAGE_PAYLOAD_KEYS = ("image", "url", "path", "base64")
_VIDEO_PAYLOAD_KEYS = ("video", "url", "path")
# Per-token outputs of a processor (sliced when truncating); everything else is per image/video.
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "assistant_masks", "mm_token_type_ids", "token_type_ids")


def _media(example: dict[str, Any], kind: str) -> list[Any]:
    """An example's images or videos: the plural column (a list), else the singular one (one item; for a video that
    item may itself be a list of frames)."""
    plural = example.get(f"{kind}s")
    if plural is not None:
        return list(plural) if isinstance(plural, (list, tuple)) else [plural]
    single = example.get(kind)
    return [] if single is None else [single]


def _flush_right(output: dict[str, Any]) -> dict[str, Any]:
    """Move left padding to the right in every per-token tensor (each row keeps its tokens, in order)."""
    mask = torch.as_tensor(output["attention_mask"])
    pads = (mask == 0).sum(-1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    if not bool(pads.any()) or not bool(torch.equal(mask.bool(), positions >= pads)):
        return output  # nothing to move, or not left-padded (already right-padded): leave as is
    index = (positions + pads) % mask.shape[1]
    for key in _PER_TOKEN_KEYS:
        if output.get(key) is not None:
            value = torch.as_tensor(output[key])
            if value.shape == mask.shape:
                output[key] = value.gather(1, index)
    return output


def _bare_blocks(messages: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The `{"type": kind}` blocks that carry no media of their own, in order (filled from the media columns)."""
    keys = _VIDEO_PAYLOAD_KEYS if kind == "video" else _IMAGE_PAYLOAD_KEYS
    return [
        block
        for message in messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == kind and not any(k in block for k in keys)
    ]


def chat_as_blocks(
    messages: Sequence[dict[str, Any]], num_images: int = 0, num_videos: int = 0
) -> list[dict[str, Any]]:
    """A copy of a chat in which every string `content` is a list of content blocks.

    TRL accepts both forms (`"content": "text"` and `"content": [{"type": "text", "text": ...}]`), even mixed in one
    chat, but a `datasets`/Arrow column cannot hold strings and lists side by side. TRL's rule for media carries
    over: when no message has a bare image/video block and the first user turn is a string, the example's
    `num_videos` video and `num_images` image blocks are prepended to that turn.
    """
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    chat = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(
                f"message {index} must be a {{'role': ..., 'content': ...}} dict, got {type(message).__name__}."
            )
        message = dict(message)
        if isinstance(message.get("content"), (list, tuple)):
            message["content"] = [dict(block) if isinstance(block, dict) else block for block in message["content"]]
        chat.append(message)
    first_user = next((m for m in chat if m.get("role") == "user"), None)
    if (
        first_user is not None
        and isinstance(first_user.get("content"), str)
        and not _bare_blocks(chat, "video")
        and not _bare_blocks(chat, "image")
    ):
        new_blocks = [{"type": "video"} for _ in range(num_videos)] + [{"type": "image"} for _ in range(num_images)]
        first_user["content"] = [*new_blocks, {"type": "text", "text": first_user["content"]}]
    for message in chat:
        if isinstance(message.get("content"), str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    return chat


class VideoSFTCollator:
    """Collate chat examples with video and/or image content blocks into model inputs with `labels`.

    TRL's `SFTTrainer` has no video column and its vision collator only fills image blocks; use this collator with
    `SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})` and
    `data_collator=VideoSFTCollator(processor, max_length=...)`.

    Each example has `messages` (role/content; content a string or a list of `{"type": "text"|"image"|"video", ...}`
    blocks). Blocks carry their media (`{"type": "video", "video": "clip.mp4"}`) or are bare and filled, in order,
    from the example's `videos` / `images` lists (TRL's convention; a string-content first user turn gets the
    blocks prepended). The processor's `apply_chat_template(..., tokenize=True, return_dict=True)` does the rest, so
    whatever media the processor supports, this collator supports.

    Labels: padding and visual placeholder tokens are -100; with `assistant_only_loss=True` so is everything outside
    the chat template's `{% generation %}` spans. Sequences longer than `max_length` follow `overflow` (see
    `apply_overflow_policy`); visual tokens are never cut.
    """

    def __init__(
        self,
        processor: Any,
        max_length: int | None = None,
        overflow: str = "error",
        assistant_only_loss: bool = False,
        mask_visual_tokens: bool = True,
        pad_to_multiple_of: int | None = None,
        chat_template: str | None = None,
        messages_key: str = "messages",
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}.")
        if max_length is not None and (isinstance(max_length, bool) or int(max_length) < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}.")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or not callable(getattr(processor, "apply_chat_template", None)):
            raise TypeError("VideoSFTCollator needs a processor with a tokenizer and apply_chat_template.")
        if tokenizer.pad_token_id is None:
            raise ValueError("The processor's tokenizer has no pad token; set tokenizer.pad_token first.")
        self.processor = processor
        self.max_length = max_length
        self.overflow = overflow
        self.assistant_only_loss = assistant_only_loss
        self.mask_visual_tokens = mask_visual_tokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.chat_template = chat_template
        self.messages_key = messages_key
        self.visual_token_ids = sorted(self._visual_token_ids(processor))
        self.num_dropped = 0

    @staticmethod
    def _visual_token_ids(processor: Any) -> set[int]:
        tokenizer = processor.tokenizer
        ids = set()
        for kind in ("image", "video"):
            token_id = getattr(processor, f"{kind}_token_id", None)
            if token_id is None:
                token = getattr(processor, f"{kind}_token", None) or getattr(tokenizer, f"{kind}_token", None)
                if token:
                    token_id = tokenizer.convert_tokens_to_ids(str(token))
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(int(token_id))
        return ids

    # -------------------------------------------------------------- examples -> conversations

    def _conversation(self, example: dict[str, Any], index: int) -> list[dict[str, Any]]:
        if self.messages_key not in example:
            raise KeyError(
                f"Example {index} has no {self.messages_key!r} column (got {sorted(example)}). VideoSFTCollator takes "
                "chat examples; with SFTTrainer also set SFTConfig(remove_unused_columns=False)."
            )
        media = {"video": _media(example, "video"), "image": _media(example, "image")}
        messages = []
        for message in example[self.messages_key]:
            message = {key: value for key, value in dict(message).items() if value is not None}
            content = message.get("content")
            if isinstance(content, (list, tuple)):
                # datasets/Arrow gives every block every key of the column's struct, mostly None: drop those.
                message["content"] = [
                    {k: v for k, v in dict(block).items() if v is not None} if isinstance(block, dict) else block
                    for block in content
                ]
            messages.append(message)

        messages = chat_as_blocks(messages, num_images=len(media["image"]), num_videos=len(media["video"]))
        blocks = {"video": _bare_blocks(messages, "video"), "image": _bare_blocks(messages, "image")}
        for kind, keys in (("video", _VIDEO_PAYLOAD_KEYS), ("image", _IMAGE_PAYLOAD_KEYS)):
            if len(blocks[kind]) != len(media[kind]):
                raise ValueError(
                    f"Example {index}: {len(blocks[kind])} {kind} block(s) without data but {len(media[kind])} "
                    f"{kind}(s) in its '{kind}s' column. Give one {kind} per bare {{'type': '{kind}'}} block, or put "
                    f"the {kind} in the block itself ({{'type': '{kind}', '{keys[0]}': ...}})."
                )
            for block, item in zip(blocks[kind], media[kind]):
                block[keys[0]] = item
        return messages

    @staticmethod
    def _describe(conversation: list[dict[str, Any]]) -> str:
        """The start of the first text of the conversation, to recognise a sample in an error message."""
        for message in conversation:
            for block in message.get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                    text = " ".join(str(block["text"]).split())
                    return repr(text[:60] + ("..." if len(text) > 60 else ""))
        return "no text"

    # -------------------------------------------------------------- processing

    def _process(self, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "tokenize": True,
            "return_dict": True,
            "return_tensors": "pt",
            "padding": True,
            # Left here, flushed right below: transformers 4.57 computes assistant masks by bisecting token offsets,
            # which right padding's (0, 0) offsets unsort (wrong masks, IndexError with videos).
            "padding_side": "left",
            "add_special_tokens": False,  # the chat template already has every special token it wants
        }
        if self.pad_to_multiple_of is not None:
            kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        if self.assistant_only_loss:
            kwargs["return_assistant_tokens_mask"] = True
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        return _flush_right(dict(self.processor.apply_chat_template(conversations, **kwargs)))

    def _is_visual(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self.visual_token_ids, dtype=input_ids.dtype, device=input_ids.device)
        return torch.isin(input_ids, ids)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("VideoSFTCollator got an empty batch.")
        conversations = [self._conversation(example, i) for i, example in enumerate(examples)]
        output = self._process(conversations)
        input_ids, attention_mask = output["input_ids"], output["attention_mask"]

        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            visual = self._is_visual(input_ids) & attention_mask.bool()
            positions = torch.arange(1, input_ids.shape[1] + 1).expand_as(input_ids)
            keep = apply_overflow_policy(
                attention_mask.sum(-1).tolist(),
                visual.sum(-1).tolist(),
                self.max_length,
                self.overflow,
                visual_end=(positions * visual).amax(-1).tolist(),
                descriptions=[self._describe(c) for c in conversations],
            )
            if not keep:
                raise ValueError(
                    f"Every sample of this batch needs more than max_length={self.max_length} tokens (longest: "
                    f"{int(attention_mask.sum(-1).max())}); nothing is left to train on. Raise max_length."
                )
            if len(keep) < len(examples):
                dropped = len(examples) - len(keep)
                self.num_dropped += dropped
                logger.warning(
                    f"VideoSFTCollator: dropped {dropped} of {len(examples)} sample(s) of this batch that need more "
                    f"than max_length={self.max_length} tokens ({self.num_dropped} dropped so far)."
                )
                output = self._process([conversations[i] for i in keep])
            if output["input_ids"].shape[1] > self.max_length:  # overflow="truncate": only text after visuals goes
                for key in _PER_TOKEN_KEYS:
                    value = output.get(key)
                    if isinstance(value, torch.Tensor) and value.dim() >= 2:
                        output[key] = value[:, : self.max_length]
            input_ids, attention_mask = output["input_ids"], output["attention_mask"]

        labels = input_ids.clone()
        labels[attention_mask == 0] = -100
        if self.mask_visual_tokens and self.visual_token_ids:
            labels[self._is_visual(input_ids)] = -100
        if self.assistant_only_loss:
            assistant = output.pop("assistant_masks", None)
            if assistant is None:
                raise ValueError(
                    "assistant_only_loss=True but the processor returned no assistant_masks; the chat template needs "
                    "{% generation %} ... {% endgeneration %} around assistant turns."
                )
            assistant = torch.as_tensor(assistant)
            if not bool(assistant.any()):
                raise ValueError(
                    "assistant_only_loss=True but no token of this batch is marked as the assistant's; does the chat "
                    "template wrap assistant turns in {% generation %} ... {% endgeneration %}?"
                )
            labels[assistant == 0] = -100
        output["labels"] = labels
        return output
