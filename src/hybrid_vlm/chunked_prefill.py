"""Chunked prefill of long videos: frames are encoded, projected and fed to the language model a chunk at a time,
with the cache carried from chunk to chunk.

A one-pass prefill holds every frame's pixels, vision-tower activations and projected features, and the LM's
activations over the whole sequence, at once: memory grows with the video. Fed in chunks of `chunk_frames`
frames, the peak is bounded by one chunk, the attention layers' KV cache and the SSM states (constant in the
sequence length), which is the linear-memory promise of a hybrid.

How the sequence is cut depends on the decoder:

* Interleaved decoders (LLaVA-style, Jamba, Mamba, Mamba-2 and the other stateful LMs): the token sequence is cut
  right after the placeholders of every `chunk_frames` frames and each piece is a cache continuation, in order.
  The last piece also holds the text after the video. Causal LMs see exactly what the one-pass forward sees.
* Vamba with its reference semantics (every text token reads every visual token of its sample, text positions count
  text tokens only): text tokens before or between frames must see frames that come later, so the visual tokens are
  fed first, chunk by chunk (the visual stream's SSM state and the cross-attention keys/values accumulate in the
  cache), and then every text token in one final forward. With `cross_attention_visibility="causal"` the sequence
  is cut in order, as for interleaved decoders.

One sample at a time (a batch of one): the point is a video too long for memory, and cutting padded rows of
different layouts at the same columns is not well defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .compat import CACHE_NAMES, GENERATE_CACHE_NAME, output_cache
from .token_counts import video_frame_tokens, video_groups

__all__ = ["generate_with_chunked_prefill", "plan_prefill_chunks", "prefill_in_chunks"]


@dataclass
class PrefillChunk:
    """One forward of a chunked prefill: its token ids and the frames whose placeholders are among them."""

    input_ids: torch.LongTensor  # (1, n)
    videos: list[torch.Tensor]  # sub-videos (frames, 3, H, W), in order; empty for a text-only piece


def _check_inputs(model: Any, input_ids: Any, attention_mask: Any, chunk_frames: Any, extra: dict[str, Any]) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TypeError("Chunked prefill needs input_ids as a (1, seq) tensor (inputs_embeds are not supported).")
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"Chunked prefill takes one sample at a time; got a batch of {input_ids.shape[0]}. Prefill each "
            "sample separately (or use a plain forward for short inputs)."
        )
    if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
        raise ValueError("Chunked prefill of one sample needs no padding: drop the padded positions from input_ids.")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive integer (frames per chunk), got {chunk_frames!r}.")
    patch = model.model.visual_token_spec.video_temporal_patch
    if chunk_frames % patch:
        raise ValueError(
            f"This model encodes {patch} consecutive frames together, so chunk_frames must be a multiple of {patch}; "
            f"got {chunk_frames}."
        )
    if model.model.visual_token_spec.video_newline:
        raise ValueError(
            "This model appends a learned newline after each whole video (video_newline), which a chunk of frames "
            "cannot place; prefill it in one forward."
        )
    if extra.get("pixel_values") is not None:
        raise ValueError(
            "Chunked prefill streams video frames; images are not supported in the same call. Run the image turn "
            "with a plain forward and continue with its cache, or pass the image as a one-frame video."
        )
    for key in ("image_sizes", "image_grids", "num_patches", "inputs_embeds", "position_ids"):
        if extra.get(key) is not None:
            raise ValueError(f"Chunked prefill does not take {key}; build inputs with the processor (videos only).")


def _frame_groups(model: Any, input_ids: torch.LongTensor, videos: list[torch.Tensor]) -> list[tuple[int, int, int]]:
    """(video index, first frame, end position in input_ids) of every token grid (frame, or temporal patch), in
    order; the end position is one past the group's last placeholder."""
    spec = model.model.visual_token_spec
    token_id = model.config.video_token_id
    positions = (input_ids[0] == token_id).nonzero().flatten().tolist()
    groups: list[tuple[int, int, int]] = []
    used = 0
    for index, video in enumerate(videos):
        per_group = video_frame_tokens(spec, int(video.shape[-2]), int(video.shape[-1]))
        for group in range(video_groups(spec, int(video.shape[0]))):
            used += per_group
            if used > len(positions):
                break
            groups.append((index, group * spec.video_temporal_patch, positions[used - 1] + 1))
    if used != len(positions):
        raise ValueError(
            f"The input has {len(positions)} video placeholder tokens (id {token_id}) but the videos give {used} "
            "feature tokens. Build inputs with HybridVLMProcessor, which expands each <video> with the same "
            "token-count function."
        )
    return groups


def _videos_of(
    groups: list[tuple[int, int, int]], videos: list[torch.Tensor], patch: int
) -> list[torch.Tensor]:
    """The frames of `groups` (consecutive token grids) as one sub-video per source video."""
    pieces: dict[int, list[int]] = {}
    for index, first, _ in groups:
        pieces.setdefault(index, []).append(first)
    return [videos[index][firsts[0] : firsts[-1] + patch] for index, firsts in pieces.items()]


def _text_last(model: Any) -> bool:
    """Whether the decoder needs every visual token before any text token (Vamba's reference semantics)."""
    if model.config.decoder_type != "vamba":
        return False
    options = model.model.language_model.options
    if options.cross_attention_visibility != "all":
        return False
    if options.text_positions != "text":
        raise ValueError(
            "Chunked prefill of Vamba with cross_attention_visibility='all' feeds the visual tokens before the text, "
            "which keeps results exact only when text positions count text tokens (text_positions='text')."
        )
    return True


def plan_prefill_chunks(
    model: Any,
    input_ids: torch.LongTensor,
    pixel_values_videos: torch.Tensor | list[torch.Tensor],
    chunk_frames: int,
    attention_mask: torch.Tensor | None = None,
    **extra: Any,
) -> list[PrefillChunk]:
    """The forwards a chunked prefill runs, in order (see the module docstring for how the sequence is cut)."""
    _check_inputs(model, input_ids, attention_mask, chunk_frames, extra)
    videos = list(pixel_values_videos)
    if any(v.dim() != 4 for v in videos):
        raise ValueError("pixel_values_videos must be (num_videos, frames, 3, H, W) or a list of (frames, 3, H, W).")
    groups = _frame_groups(model, input_ids, videos)
    patch = model.model.visual_token_spec.video_temporal_patch
    per_chunk = chunk_frames // patch
    batches = [groups[i : i + per_chunk] for i in range(0, len(groups), per_chunk)]
    if _text_last(model):
        is_visual = input_ids[0] == model.config.video_token_id
        chunks, start = [], 0
        for batch in batches:
            end = batch[-1][2]
            piece = input_ids[:, start:end][:, is_visual[start:end]]
            chunks.append(PrefillChunk(piece, _videos_of(batch, videos, patch)))
            start = end
        text = input_ids[:, ~is_visual]
        if text.shape[1]:
            chunks.append(PrefillChunk(text, []))
        return chunks
    chunks, start = [], 0
    for number, batch in enumerate(batches):
        end = input_ids.shape[1] if number == len(batches) - 1 else batch[-1][2]
        chunks.append(PrefillChunk(input_ids[:, start:end], _videos_of(batch, videos, patch)))
        start = end
    if not chunks:
        chunks.append(PrefillChunk(input_ids, []))
    return chunks


@torch.no_grad()
def prefill_in_chunks(
    model: Any,
    input_ids: torch.LongTensor,
    pixel_values_videos: torch.Tensor | list[torch.Tensor],
    chunk_frames: int = 16,
    attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
    logits_to_keep: int = 1,
    progress: bool = False,
    **extra: Any,
) -> Any:
    """Prefill a (1, seq) prompt with its videos `chunk_frames` frames at a time; returns the last forward's output
    (its logits cover the last `logits_to_keep` tokens fed) with the cache of the whole prompt.

    The cache continues like any other: `model.generate(input_ids=prompt_and_more, past_key_values=out.past_key_values)`
    or `generate(..., prefill_chunk_frames=n)`, which does both. `past_key_values` continues an earlier turn's cache.
    """
    chunks = plan_prefill_chunks(model, input_ids, pixel_values_videos, chunk_frames, attention_mask, **extra)
    from tqdm.auto import tqdm

    cache = past_key_values
    out = None
    for number, chunk in enumerate(tqdm(chunks, desc="prefill chunks", disable=not progress)):
        last = number == len(chunks) - 1
        out = model(
            input_ids=chunk.input_ids.to(model.device),
            pixel_values_videos=chunk.videos or None,
            **{GENERATE_CACHE_NAME: cache},
            use_cache=True,
            logits_to_keep=logits_to_keep if last else 1,
            **extra,
        )
        cache = output_cache(out)
    return out


def generate_with_chunked_prefill(model: Any, prefill_chunk_frames: int, *args: Any, **kwargs: Any) -> Any:
    """`model.generate(...)` whose prompt is prefilled `prefill_chunk_frames` frames at a time.

    Every prompt token but the last goes through :func:`prefill_in_chunks`; `generate` then starts from that cache
    with the last token, so decoding, stopping criteria and the returned sequences are generate's own.
    """
    if args:
        if "input_ids" in kwargs or len(args) > 1:
            raise TypeError("Pass input_ids once (positionally or by keyword) and the rest by keyword.")
        kwargs["input_ids"] = args[0]
    input_ids = kwargs.pop("input_ids", None)
    videos = kwargs.pop("pixel_values_videos", None)
    attention_mask = kwargs.pop("attention_mask", None)
    for key in CACHE_NAMES:
        if kwargs.get(key) is not None:
            raise ValueError("generate(prefill_chunk_frames=...) builds its own cache; do not pass one.")
        kwargs.pop(key, None)
    if kwargs.get("use_cache") is False:
        raise ValueError("prefill_chunk_frames needs use_cache=True: the chunks hand their state over in the cache.")
    if videos is None:
        raise ValueError("prefill_chunk_frames streams video frames: pass pixel_values_videos (or drop the option).")
    _check_inputs(model, input_ids, attention_mask, prefill_chunk_frames, kwargs)
    if int(input_ids[0, -1]) == model.config.video_token_id:
        raise ValueError("The prompt ends inside a video; end it with text (the chat template's assistant prefix).")
    prefilled = prefill_in_chunks(model, input_ids[:, :-1], videos, prefill_chunk_frames)
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{GENERATE_CACHE_NAME: output_cache(prefilled)},
        **kwargs,
    )

