"""Visual token counts of the papers' inputs (frames, AnyRes resolutions) and the sweep points built from them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..anyres import anyres_token_count
from ..token_counts import VisualTokenSpec

# Visual tokens per frame of the papers' video settings: LongLLaVA pools each 24x24 CLIP grid to 12x12.
LONGLLAVA_TOKENS_PER_FRAME = 144
# AnyRes as MMJamba/LLaVA-NeXT count it: 336 px CLIP tiles of 14 px patches, a global view, newline tokens, unpadding.
ANYRES_TILE = 336
ANYRES_PATCH = 14


def frames_to_tokens(frames: int, tokens_per_frame: int = LONGLLAVA_TOKENS_PER_FRAME) -> int:
    """Visual tokens of a video of `frames` frames (every frame is encoded like an image)."""
    return int(frames) * int(tokens_per_frame)


def anyres_resolution_tokens(resolution: int, tile: int = ANYRES_TILE, patch: int = ANYRES_PATCH) -> int:
    """Visual tokens of a square `resolution` px image under AnyRes, tiled whole (MMJamba's "infer long": no tile
    cap), with the global view, newline tokens and unpadding, via the library's one token-count function."""
    side = max(1, math.ceil(resolution / tile))
    spec = VisualTokenSpec(patch_size=patch, num_prefix_tokens=1)
    return anyres_token_count(spec, (resolution, resolution), (side, side), (tile, tile))


@dataclass(frozen=True)
class SweepPoint:
    """One visual input size: a label for tables ("frames=64", "672px", "tokens=256") and its token count."""

    label: str
    visual_tokens: int
    frames: int | None = None


def token_points(tokens: Iterable[int]) -> list[SweepPoint]:
    return [SweepPoint(f"tokens={n}", int(n)) for n in tokens]


def frame_points(frames: Iterable[int], tokens_per_frame: int = LONGLLAVA_TOKENS_PER_FRAME) -> list[SweepPoint]:
    return [SweepPoint(f"frames={f}", frames_to_tokens(f, tokens_per_frame), int(f)) for f in frames]


def resolution_points(resolutions: Iterable[int]) -> list[SweepPoint]:
    return [SweepPoint(f"{r}px", anyres_resolution_tokens(r)) for r in resolutions]
