"""The expanded prompt: each `<image>` / `<video>` placeholder replaced by the text of its layout pieces, the offsets
that map token positions of the expanded text back to the caller's text, and the checks that every image and video has
its placeholder and keeps all its tokens through tokenization.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from .token_counts import TokenLayout, layout_segments

_NAME = "HybridVLMProcessor"


def render(pieces: Sequence[str | int], placeholder: str) -> str:
    """Layout pieces -> text: a run of n placeholder tokens is the placeholder n times."""
    return "".join(piece if isinstance(piece, str) else placeholder * piece for piece in pieces)


def expand_placeholders(
    texts: list[str], kinds: Sequence[tuple[str, str, Sequence[str], TokenLayout]]
) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Replace the i-th placeholder of each kind in the batch by that kind's i-th replacement, in one pass over each
    text; record where (transformers 5's offset format), so offsets map back to the caller's text.

    ``kinds``: (placeholder, kind name, replacements in placeholder order, the kind's layout) per kind.
    """
    active = [(token, kind, iter(pending), layout) for token, kind, pending, layout in kinds if pending]
    expanded: list[str] = []
    all_offsets: list[list[dict[str, Any]]] = []
    for sample in texts:
        pieces: list[str] = []
        offsets: list[dict[str, Any]] = []
        last = new_length = 0
        next_at = [sample.find(token) for token, _, _, _ in active]
        while any(at != -1 for at in next_at):
            start, which = min((at, k) for k, at in enumerate(next_at) if at != -1)
            token, kind, pending, layout = active[which]
            end = start + len(token)
            replacement = _unwrapped(next(pending), sample, start, end, layout, kind)
            pieces.append(sample[last:start])
            new_start = new_length + (start - last)
            offsets.append(
                {
                    "type": kind,
                    "span": (start, end),
                    "new_span": (new_start, new_start + len(replacement)),
                    "text": token,
                    "replacement": replacement,
                }
            )
            pieces.append(replacement)
            new_length = new_start + len(replacement)
            last = end
            next_at = [sample.find(t, end) if at != -1 else -1 for (t, _, _, _), at in zip(active, next_at)]
        pieces.append(sample[last:])
        expanded.append("".join(pieces))
        all_offsets.append(offsets)
    return expanded, all_offsets


def _unwrapped(replacement: str, sample: str, start: int, end: int, layout: TokenLayout, kind: str) -> str:
    """In the qwen2vl layout, a placeholder the prompt already wraps in `<|vision_start|>`/`<|vision_end|>`
    (Qwen2-VL's own templates write `<|vision_start|><|image_pad|><|vision_end|>`) gets the expansion without those
    markers, not twice."""
    if layout.name != "qwen2vl":
        return replacement
    first, _, last = layout_segments(layout, kind)
    if not (replacement.startswith(first) and replacement.endswith(last)):
        return replacement
    if sample.endswith(first, 0, start) and sample.startswith(last, end):
        return replacement[len(first) : len(replacement) - len(last)]
    return replacement


def map_offsets_to_input(
    offsets: Sequence[Sequence[int]], replacements: list[dict[str, Any]]
) -> list[tuple[int, int]]:
    """Token offsets into the expanded text -> offsets into the caller's text.

    Every token of an expanded placeholder maps to the placeholder's own span; other positions shift back by the
    characters the expansions before them added. Zero-width tokens (padding, added specials) stay zero-width.
    """
    if not replacements:
        return [(int(s), int(e)) for s, e in offsets]
    new_starts = [r["new_span"][0] for r in replacements]
    new_ends = [r["new_span"][1] for r in replacements]
    gained = [0]
    for r in replacements:
        gained.append(gained[-1] + (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))

    def position(pos: int, is_end: bool) -> int:
        char = pos - 1 if is_end else pos  # the character a start points at, or an end follows
        k = bisect.bisect_right(new_starts, char) - 1
        if k >= 0 and char < new_ends[k]:
            return replacements[k]["span"][1 if is_end else 0]
        return pos - gained[bisect.bisect_right(new_ends, pos)]

    mapped = []
    for start, end in offsets:
        start, end = int(start), int(end)
        if start == end:
            mapped.append((position(start, False),) * 2)
        else:
            mapped.append((position(start, False), position(end, True)))
    return mapped

def check_placeholders(
    counts: list[int], flat_items: list[Any], per_sample: list[list[Any]] | None, token: str, kind: str
) -> None:
    """One `token` placeholder per image (video): per sample when the items came per sample, else in total."""
    hint = (
        f"Put one {token} in the text where each {kind} goes (apply_chat_template does this for "
        f'{{"type": "{kind}"}} blocks), or pass exactly the {kind}s the text refers to.'
    )
    if per_sample is not None:
        for index, (count, sample_items) in enumerate(zip(counts, per_sample)):
            if count != len(sample_items):
                raise ValueError(
                    f"{_NAME}: sample {index} has {count} {token} placeholder(s) in its text but "
                    f"{len(sample_items)} {kind}(s) were given for it. {hint}"
                )
        return
    total = sum(counts)
    if total == len(flat_items):
        return
    if not flat_items and kind == "image":
        raise ValueError(
            f"{_NAME}: the text has {total} {token} placeholder(s) (per sample: {counts}) but no images were "
            f"given. Pass images=..., or remove the placeholders."
        )
    given = f"{len(flat_items)} {kind}(s) were given" if flat_items else f"no {kind}s were given"
    raise ValueError(f"{_NAME}: the text has {total} {token} placeholder(s) (per sample: {counts}) but {given}. {hint}")


def check_visual_tokens_kept(
    tokenizer: Any,
    input_ids: list[list[int]],
    expanded: list[str],
    texts: list[str],
    text_kwargs: dict[str, Any],
    token: str,
    kind: str,
) -> None:
    """Every sample must still hold all its image (or video) tokens after tokenization; truncation must not cut
    them."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    fewer = "drop images from this sample" if kind == "image" else (
        "sample fewer frames (num_frames=..., max_visual_tokens=...)"
    )
    for index, (ids, sample) in enumerate(zip(input_ids, expanded)):
        expected = sample.count(token)
        found = ids.count(token_id)
        if found == expected:
            continue
        num_items = texts[index].count(token)
        if text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
            untruncated = {k: v for k, v in text_kwargs.items() if k not in ("truncation", "max_length", "padding")}
            needed = len(tokenizer(sample, **untruncated)["input_ids"])
            limit = text_kwargs.get("max_length") or tokenizer.model_max_length
            raise ValueError(
                f"{_NAME}: truncation to max_length={limit} would cut visual tokens of sample {index}: it keeps "
                f"{found} of its {expected} {kind} tokens ({num_items} {kind}(s)); the sample needs {needed} "
                f"tokens. Raise max_length to at least that, {fewer}, or disable truncation."
            )
        raise ValueError(
            f"{_NAME}: sample {index} should hold {expected} {kind} tokens (id {token_id}) after "
            f"tokenization but holds {found}. Does the text contain the {kind} token in another form?"
        )


__all__ = [
    "check_placeholders",
    "check_visual_tokens_kept",
    "expand_placeholders",
    "map_offsets_to_input",
    "render",
]
