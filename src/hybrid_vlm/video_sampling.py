"""Which frames of a video to keep: the sampling rules of the papers, exactly, and a frame budget from a token budget.

Pure index arithmetic on frame counts and timestamps; nothing is decoded here (that is `video_decoding`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from .token_counts import TokenLayout, VisualTokenSpec, count_video_tokens

_NAME = "HybridVLMVideoProcessor"


SAMPLING_MODES: tuple[str, ...] = ("uniform", "middle", "fps", "vamba_middle", "vamba_uniform")
# Modes whose rule pads a short video to the asked count with its last frame (instead of returning every frame).
PADDING_MODES = frozenset({"vamba_middle"})


def uniform_indices(total_frames: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread over ``total_frames``, first and last frame included (MMJamba, LongLLaVA).

    ``floor(i * (total - 1) / (num_frames - 1))`` for ``i = 0 .. num_frames - 1`` (``[0]`` for one frame): the
    integer-exact form of ``np.linspace(0, total - 1, num_frames).astype(int)``. Asking for at least as many frames as
    there are gives every frame once.
    """
    total, count = check_count(total_frames, "total_frames"), check_count(num_frames, "num_frames")
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return [i * (total - 1) // (count - 1) for i in range(count)]


def middle_indices(total_frames: int, num_frames: int) -> list[int]:
    """The middle frame of each of ``num_frames`` equal segments: ``floor((2i + 1) * total / (2 * count))``.

    Not Vamba's rules (they truncate their segment bounds first): those are `vamba_middle_indices` and
    `vamba_uniform_indices`.

    Asking for at least as many frames as there are gives every frame once.
    """
    total, count = check_count(total_frames, "total_frames"), check_count(num_frames, "num_frames")
    if count >= total:
        return list(range(total))
    return [(2 * i + 1) * total // (2 * count) for i in range(count)]


def vamba_middle_indices(total_frames: int, num_frames: int) -> list[int]:
    """Vamba's chat sampling ("middle"), exactly: the video is cut at ``np.linspace(0, total, count + 1)`` truncated
    to integers (float64 linspace, so a cut can land one below the exact ``k * total / count``, as in the reference),
    and each segment ``[a, b)`` gives frame ``(a + b - 1) // 2``. With fewer frames than asked, every frame once and
    then the last frame repeated up to ``num_frames``.

    E.g. 40 frames, 4 asked: ``[4, 14, 24, 34]``; 3 frames, 5 asked: ``[0, 1, 2, 2, 2]``.
    """
    total, count = check_count(total_frames, "total_frames"), check_count(num_frames, "num_frames")
    segments = min(count, total)
    cuts = np.linspace(0, total, segments + 1).astype(np.int64).tolist()
    indices = [(start + end - 1) // 2 for start, end in zip(cuts[:-1], cuts[1:])]
    return indices + [indices[-1]] * (count - len(indices))


def vamba_uniform_indices(total_frames: int, num_frames: int) -> list[int]:
    """Vamba's evaluation sampling, exactly: cuts ``torch.linspace(0, total, count + 1)`` in int64, and the integer
    mean ``(a + b) // 2`` of consecutive cuts; asking for at least as many frames as there are gives every frame once
    (no padding). E.g. 40 frames, 4 asked: ``[5, 15, 25, 35]``.
    """
    total, count = check_count(total_frames, "total_frames"), check_count(num_frames, "num_frames")
    if count >= total:
        return list(range(total))
    cuts = torch.linspace(0, total, count + 1, dtype=torch.int64)
    return ((cuts[:-1] + cuts[1:]) // 2).tolist()


SAMPLING_RULES = {
    "uniform": uniform_indices,
    "middle": middle_indices,
    "vamba_middle": vamba_middle_indices,
    "vamba_uniform": vamba_uniform_indices,
}


def fps_indices(
    timestamps: Sequence[Fraction | float],
    duration: Fraction | float,
    fps: float,
    max_frames: int | None = None,
) -> list[int]:
    """Frames on screen at ``0, 1/fps, 2/fps, ...`` (every sample time before ``duration``), at most ``max_frames``.

    Uses the frames' own timestamps (seconds from the first frame, sorted), so variable frame rate is handled: the
    frame for time ``t`` is the last one whose timestamp is ``<= t``. When ``ceil(duration * fps)`` samples would
    exceed ``max_frames``, exactly ``max_frames`` sample times spread evenly over the whole video are used instead
    (LongLLaVA's "1 fps, at most 128"). A frame is never returned twice, so asking for more fps than the video has
    returns every frame.
    """
    if not timestamps:
        raise ValueError("fps sampling needs at least one frame timestamp.")
    rate = positive_fraction(fps, "fps")
    length = Fraction(duration)
    if length <= 0:
        raise ValueError(f"fps sampling needs a positive duration, got {float(length)} s.")
    count = max(1, math.ceil(length * rate))
    if max_frames is not None and count > check_count(max_frames, "max_frames"):
        times = [j * length / max_frames for j in range(max_frames)]
    else:
        times = [j / rate for j in range(count)]
    chosen: list[int] = []
    for t in times:  # timestamps may be a lazy sequence: bisect reads only ~log2(n) of them per sample time
        index = max(0, bisect.bisect_right(timestamps, t) - 1)
        if not chosen or chosen[-1] != index:
            chosen.append(index)
    return chosen


def frames_for_token_budget(
    max_visual_tokens: int, spec: VisualTokenSpec, height: int, width: int, layout: str | TokenLayout = "plain"
) -> int:
    """The most frames of ``height`` x ``width`` (as fed to the encoder) whose whole expansion fits the budget.

    The count is ``count_video_tokens(spec, k, height, width, layout)`` (placeholders and the layout's markers), the
    same function the processor and the model use, searched over ``k``; no token arithmetic is repeated here.
    """
    budget = check_count(max_visual_tokens, "max_visual_tokens")
    step = getattr(spec, "video_temporal_patch", 1)  # frames come in groups the model encodes together
    one = count_video_tokens(spec, step, height, width, layout)
    if one > budget:
        raise ValueError(
            f"max_visual_tokens={budget} is less than one {height}x{width} frame needs ({one} tokens with the "
            f"{getattr(layout, 'name', layout)!r} layout); raise the budget or use smaller frames (size=...)."
        )
    low, high = 1, budget  # in groups: every group costs at least one token, so `budget` groups never fit more
    while low < high:
        mid = (low + high + 1) // 2
        if count_video_tokens(spec, mid * step, height, width, layout) <= budget:
            low = mid
        else:
            high = mid - 1
    return low * step


def check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{_NAME}: {name} must be an int >= 1, got {value!r}.")
    return int(value)


def positive_fraction(value: Any, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{_NAME}: {name} must be a positive number, got {value!r}.")
    return Fraction(value)

