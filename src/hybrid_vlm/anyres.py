"""AnyRes: a high-resolution image as one global view plus a grid of tiles at the vision encoder's resolution.

Everything AnyRes needs lives here as plain functions, so that the image processor (pixels, placeholder counts)
and the model (feature packing) share one copy of each piece of arithmetic:

- grid choice, for the two policies the papers use: LLaVA-NeXT's ``image_grid_pinpoints`` (a list of allowed
  resolutions, best fit by transformers' ``select_best_resolution``) and MMJamba's "at most N tiles" (every grid with
  1..N tiles, closest aspect ratio);
- pixel tiling: aspect-preserving resize into the grid's resolution, centered zero padding, split into tiles;
- the token count of one AnyRes image (:func:`anyres_token_count`), built on ``count_image_tokens``;
- the model-side packing (:func:`pack_anyres_features`) whose output length is that count by construction, and the
  2-D bilinear pooling LongLLaVA applies per view (:func:`pool_2d`).

Sizes are always ``(height, width)`` in pixels; grids are ``(rows, cols)`` in tiles.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from .config_options import anyres_positive_int, as_size, check_pinpoints
from .token_counts import VisualTokenSpec, capped_feature_size, count_image_tokens, projector_output_grid

# Far beyond any real use (8000 x 8000 px at 336 px tiles is 24 x 24 = 576 tiles) but keeps the candidate list
# (about N log N grids) and a mistyped value from eating memory.
MAX_TILES_LIMIT = 4096
MERGE_MODES = ("spatial", "flat")


class AnyResLayout(NamedTuple):
    """What the processor makes of one image: the tile grid, the number of views and the view size."""

    grid: tuple[int, int]  # (rows, cols) of tiles
    num_patches: int  # views fed to the encoder: the global view + rows * cols tiles (LLaVA-NeXT's "patches")
    tile_size: tuple[int, int]  # (height, width) of every view, in pixels


# ---------------------------------------------------------------------------------------------- validation helpers


def _as_grid(grid: Any) -> tuple[int, int]:
    return as_size(grid, "grid (rows, cols)")


def grid_resolution(grid: Any, tile_size: Any) -> tuple[int, int]:
    """(height, width) in pixels that a grid of tiles covers."""
    (rows, cols), (tile_h, tile_w) = _as_grid(grid), as_size(tile_size, "tile_size")
    return rows * tile_h, cols * tile_w


def check_max_tiles(max_tiles: Any) -> int:
    """Validate the "at most N tiles" setting."""
    max_tiles = anyres_positive_int(max_tiles, "max_tiles")
    if max_tiles > MAX_TILES_LIMIT:
        raise ValueError(f"AnyRes: max_tiles={max_tiles} is above the supported limit of {MAX_TILES_LIMIT}.")
    return max_tiles


# ------------------------------------------------------------------------------------------------- grid choice


def max_tiles_grids(max_tiles: int) -> list[tuple[int, int]]:
    """MMJamba's candidates: every (rows, cols) grid with at most ``max_tiles`` tiles.

    Ordered by tile count, then rows, so that a complete tie in :func:`best_grid_max_tiles` goes to fewer tiles.
    ``max_tiles=4`` gives the paper's 8 grids: 1x1, 1x2, 2x1, 1x3, 3x1, 1x4, 2x2, 4x1.
    """
    max_tiles = check_max_tiles(max_tiles)
    grids = [(rows, cols) for rows in range(1, max_tiles + 1) for cols in range(1, max_tiles // rows + 1)]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def pinpoint_grids(image_grid_pinpoints: Any, tile_size: Any) -> list[tuple[int, int]]:
    """The tile grids that LLaVA-NeXT pinpoints stand for."""
    tile_h, tile_w = as_size(tile_size, "tile_size")
    return [(h // tile_h, w // tile_w) for h, w in check_pinpoints(image_grid_pinpoints, (tile_h, tile_w))]


def best_grid_pinpoints(image_size: Any, image_grid_pinpoints: Any, tile_size: Any) -> tuple[int, int]:
    """LLaVA-NeXT's choice: transformers' ``select_best_resolution`` (most image pixels kept, then least padding)."""
    tile_h, tile_w = as_size(tile_size, "tile_size")
    pins = check_pinpoints(image_grid_pinpoints, (tile_h, tile_w))
    height, width = select_best_resolution(as_size(image_size, "image_size"), pins)
    return height // tile_h, width // tile_w


def llava_next_layouts(
    image_sizes: Any, image_grid_pinpoints: Any, tile_side: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """Each image's tile grid and view count from its original ``(height, width)`` alone, computed by transformers'
    LLaVA-NeXT helpers (``get_anyres_image_grid_shape``, ``image_size_to_num_patches``), as its model does for the
    ``image_sizes`` that ``LlavaNextProcessor`` returns without any grid."""
    pins = check_pinpoints(image_grid_pinpoints, (tile_side, tile_side))
    sizes = [list(as_size(s, f"image_sizes[{i}]")) for i, s in enumerate(image_sizes)]
    grids = [tuple(int(v) for v in get_anyres_image_grid_shape(s, pins, tile_side)) for s in sizes]
    views = [int(image_size_to_num_patches(s, pins, tile_side)) for s in sizes]
    return grids, views


def best_grid_max_tiles(image_size: Any, max_tiles: int, tile_size: Any) -> tuple[int, int]:
    """MMJamba's choice: the grid whose aspect ratio is closest to the image's, among grids of 1..max_tiles tiles.

    Aspect ratio is width / height in pixels (the grid's is ``cols * tile_w / (rows * tile_h)``), compared by absolute
    difference, in exact fractions so that equal ratios really tie. Ties are frequent (1x1, 2x2, 3x3, ... all have
    ratio 1) and are broken by transformers' ``select_best_resolution`` over the tied grids' resolutions: the grid that
    keeps most of the image's own pixels wins, then the one with the least padding, then the one with fewest tiles.
    So a 672x672 image with max_tiles=4 gets 2x2 (a 336x336 one keeps 1x1), and 2688x2688 with max_tiles=64 gets 8x8.
    """
    height, width = as_size(image_size, "image_size")
    tile_h, tile_w = as_size(tile_size, "tile_size")
    aspect = Fraction(width, height)
    grids = max_tiles_grids(max_tiles)
    differences = [abs(aspect - Fraction(cols * tile_w, rows * tile_h)) for rows, cols in grids]
    smallest = min(differences)
    tied = [grid for grid, difference in zip(grids, differences) if difference == smallest]
    if len(tied) == 1:
        return tied[0]
    resolutions = [grid_resolution(grid, (tile_h, tile_w)) for grid in tied]
    chosen = select_best_resolution((height, width), resolutions)
    return tied[resolutions.index(tuple(chosen))]


def best_grid(
    image_size: Any,
    tile_size: Any,
    *,
    max_tiles: int | None = None,
    image_grid_pinpoints: Any = None,
) -> tuple[int, int]:
    """The tile grid for an image of ``image_size`` under exactly one policy (``max_tiles`` or pinpoints)."""
    if (max_tiles is None) == (image_grid_pinpoints is None):
        raise ValueError(
            "AnyRes: give exactly one grid policy, max_tiles=N (MMJamba: every grid of 1..N tiles) or "
            "image_grid_pinpoints=[[h, w], ...] (LLaVA-NeXT)."
        )
    if max_tiles is not None:
        return best_grid_max_tiles(image_size, max_tiles, tile_size)
    return best_grid_pinpoints(image_size, image_grid_pinpoints, tile_size)


# ------------------------------------------------------------------------------------------------- pixel side


def fit_size(image_size: Any, target: Any) -> tuple[int, int]:
    """(height, width) of the image resized to fit inside ``target`` keeping its aspect ratio (LLaVA-NeXT's rule).

    The side that limits the scale fills the target exactly; the other is rounded up (never past the target), which
    is what transformers' ``get_patch_output_size`` does, so the tiles match LLaVA-NeXT's.
    """
    height, width = as_size(image_size, "image_size")
    target_h, target_w = as_size(target, "target")
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def pad_to(image: np.ndarray, target: Any, value: float = 0) -> np.ndarray:
    """Center an (H, W, C) image on a ``target``-sized canvas of ``value`` (odd remainders go to the bottom/right)."""
    target_h, target_w = as_size(target, "target")
    height, width = image.shape[:2]
    if height > target_h or width > target_w:
        raise ValueError(f"AnyRes: cannot pad a {height}x{width} image to the smaller {target_h}x{target_w}.")
    top, left = (target_h - height) // 2, (target_w - width) // 2
    padding = ((top, target_h - height - top), (left, target_w - width - left)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, padding, mode="constant", constant_values=value)


def split_tiles(image: np.ndarray, grid: Any, tile_size: Any) -> np.ndarray:
    """(rows*th, cols*tw, C) image -> (rows*cols, th, tw, C) tiles, row by row from the top left."""
    (rows, cols), (tile_h, tile_w) = _as_grid(grid), as_size(tile_size, "tile_size")
    if tuple(image.shape[:2]) != (rows * tile_h, cols * tile_w):
        raise ValueError(
            f"AnyRes: a {rows}x{cols} grid of {tile_h}x{tile_w} tiles needs a {rows * tile_h}x{cols * tile_w} image, "
            f"got {image.shape[0]}x{image.shape[1]}."
        )
    tiles = image.reshape(rows, tile_h, cols, tile_w, *image.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(tiles.reshape(rows * cols, tile_h, tile_w, *image.shape[2:]))


def merge_tiles(tiles: np.ndarray, grid: Any) -> np.ndarray:
    """Inverse of :func:`split_tiles`."""
    rows, cols = _as_grid(grid)
    if tiles.shape[0] != rows * cols:
        raise ValueError(f"AnyRes: a {rows}x{cols} grid needs {rows * cols} tiles, got {tiles.shape[0]}.")
    tile_h, tile_w = tiles.shape[1:3]
    merged = tiles.reshape(rows, cols, tile_h, tile_w, *tiles.shape[3:]).swapaxes(1, 2)
    return merged.reshape(rows * tile_h, cols * tile_w, *tiles.shape[3:])


# ------------------------------------------------------------------------------------------------- token counts


def view_feature_grid(spec: VisualTokenSpec, tile_size: Any, pooled_grid: Any = None) -> tuple[int, tuple[int, int]]:
    """(prefix tokens kept, (height, width) of the patch-feature grid) of one view as the LM sees it.

    The counts come from ``count_image_tokens``: the grid holds its "default" (patch-only) count and the prefix is
    what the spec's own strategy keeps on top (CLS/registers with "full"). ``pooled_grid`` (default: the spec's)
    replaces the grid's shape.
    """
    tile_h, tile_w = as_size(tile_size, "tile_size")
    if pooled_grid is None:
        pooled_grid = spec.pooled_grid
    unpooled = dataclasses.replace(spec, pooled_grid=None, projector_conv=None)
    total = count_image_tokens(unpooled, tile_h, tile_w)
    patch_spec = dataclasses.replace(unpooled, vision_feature_select_strategy="default")
    patches = count_image_tokens(patch_spec, tile_h, tile_w)
    grid = (tile_h // spec.patch_size, tile_w // spec.patch_size)
    if grid[0] * grid[1] != patches:
        raise ValueError(
            f"AnyRes: count_image_tokens gives {patches} patch tokens for a {tile_h}x{tile_w} view, which is not a "
            f"{grid[0]}x{grid[1]} grid; AnyRes needs a plain patch grid per view."
        )
    if pooled_grid is not None:
        pooled = as_size(pooled_grid, "pooled_grid")
        if pooled[0] > grid[0] or pooled[1] > grid[1]:
            raise ValueError(
                f"AnyRes: pooled_grid {pooled[0]}x{pooled[1]} is larger than the {grid[0]}x{grid[1]} patch grid of a "
                f"{tile_h}x{tile_w} view; pooling only reduces."
            )
        grid = pooled
    if spec.projector_conv is not None:
        kernel, stride = spec.projector_conv
        grid = projector_output_grid("conv2d_adapter", grid, conv_kernel=kernel, conv_stride=stride)
    return total - patches, grid


def view_token_count(spec: VisualTokenSpec, tile_size: Any, pooled_grid: Any = None) -> int:
    """LM tokens of one view on its own (the global view; or a tile in a layout that keeps tiles separate)."""
    prefix, (grid_h, grid_w) = view_feature_grid(spec, tile_size, pooled_grid)
    return prefix + grid_h * grid_w


def unpadded_size(feature_size: Any, image_size: Any) -> tuple[int, int]:
    """(height, width) left of a stitched (rows*h, cols*w) feature map once the padding is cut away.

    Runs transformers' LLaVA-NeXT ``unpad_image`` on an empty tensor, so the rule (and its rounding) is the one
    :func:`pack_anyres_features` applies to real features, and LLaVA-NeXT's own.
    """
    feature_h, feature_w = as_size(feature_size, "feature_size")
    empty = torch.empty((0, feature_h, feature_w), device="meta")
    return tuple(unpad_image(empty, list(as_size(image_size, "image_size"))).shape[1:])


def anyres_token_count(
    spec: VisualTokenSpec,
    image_size: Any,
    grid: Any,
    tile_size: Any,
    pooled_grid: Any = None,
    newline: bool = True,
    base_view: bool = True,
    unpad: bool = True,
) -> int:
    """THE number of LM tokens one AnyRes image becomes; processor and model both call this.

    Args:
        spec: the encoder's token spec (patch size, prefix tokens, feature select strategy).
        image_size: original (height, width) of the image, before any resizing.
        grid: (rows, cols) of tiles chosen for it (:func:`best_grid`).
        tile_size: (height, width) of every view fed to the encoder.
        pooled_grid: side (or (h, w)) each view's patch grid is pooled to (LongLLaVA: 12); None for no pooling.
        newline: one newline token after every row of the stitched tile features (LLaVA-NeXT's learned newline).
        base_view: the global view's tokens come first.
        unpad: cut the rows/columns that only cover padding from the stitched tile features.

    A "flat" packing (tiles kept separate, as LongLLaVA's layout does) is ``newline=False, unpad=False``.
    """
    rows, cols = _as_grid(grid)
    prefix, (grid_h, grid_w) = view_feature_grid(spec, tile_size, pooled_grid)
    height, width = rows * grid_h, cols * grid_w
    if unpad:
        height, width = unpadded_size((height, width), image_size)
    height, width = capped_feature_size(height, width, spec.anyres_max_feature_tiles, grid_h * grid_w)
    total = height * width + (height if newline else 0)
    if base_view:
        total += prefix + grid_h * grid_w
    return total


def check_flat_anyres_packing(spec: VisualTokenSpec) -> None:
    """The ``longllava`` image layout puts plain-text newlines between an AnyRes image's global view and tile rows, so
    the model must pack every tile whole, row by row, with no learned newline and no un-padding (``merge="flat"``)."""
    if spec.image_newline or spec.anyres_unpad or spec.anyres_merge != "flat":
        raise ValueError(
            "HybridVLMProcessor: the 'longllava' image layout writes an AnyRes image as the global view, then its tile "
            "rows separated by a '\\n' text token, so the model must pack whole tiles row by row without its own "
            f"newline or un-padding; got image_newline={spec.image_newline}, anyres_unpad={spec.anyres_unpad}, "
            f"anyres_merge={spec.anyres_merge!r}. Set image_newline=False, anyres_unpad=False, anyres_merge='flat' "
            "in the model config (and build the processor with from_model_config), or use image_layout='llava'."
        )


def image_runs(
    spec: VisualTokenSpec, layout: str, tile_size: Any, image_size: Any = None, grid: Any = None
) -> list[int]:
    """Placeholder runs of one image in ``layout`` (``token_counts.layout_pieces`` writes them), in feature order.

    Single resolution (``grid`` None): one run of ``count_image_tokens`` for the ``tile_size`` fed to the encoder.
    AnyRes: :func:`anyres_token_count` with the spec's packing, the count the model checks its features against; the
    ``longllava`` layout splits that count into the global view and then one run per tile row.
    """
    tile_h, tile_w = as_size(tile_size, "tile_size")
    if grid is None:
        return [count_image_tokens(spec, tile_h, tile_w)]
    size, grid = as_size(image_size, "image_size"), _as_grid(grid)
    if layout != "longllava":
        return [anyres_token_count(spec, size, grid, (tile_h, tile_w), newline=spec.image_newline,
                                   unpad=spec.anyres_unpad)]
    check_flat_anyres_packing(spec)
    total = anyres_token_count(spec, size, grid, (tile_h, tile_w), newline=False, unpad=False)
    tiles = anyres_token_count(spec, size, grid, (tile_h, tile_w), newline=False, unpad=False, base_view=False)
    rows = grid[0]
    return [total - tiles] + [tiles // rows] * rows


# ------------------------------------------------------------------------------------------------- model side


def pool_2d(features: torch.Tensor, out_side: Any, in_grid: Any = None) -> torch.Tensor:
    """Bilinear 2-D pooling of patch features: (N, h*w, D) -> (N, out_h*out_w, D).

    LongLLaVA's token compression (24x24 -> 12x12, i.e. 576 -> 144 tokens per view). ``in_grid`` is the input's
    (h, w); by default the token count must be a square. Bilinear without corner alignment at an exact factor of 2 is
    the mean of each 2x2 block.
    """
    if features.dim() != 3:
        raise ValueError(f"pool_2d: features must be (N, tokens, dim), got shape {tuple(features.shape)}.")
    num, tokens, dim = features.shape
    if in_grid is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"pool_2d: {tokens} tokens are not a square grid; pass in_grid=(height, width).")
        in_grid = (side, side)
    in_h, in_w = as_size(in_grid, "in_grid")
    if in_h * in_w != tokens:
        raise ValueError(f"pool_2d: in_grid {in_h}x{in_w} does not hold {tokens} tokens.")
    out_h, out_w = as_size(out_side, "out_side")
    if out_h > in_h or out_w > in_w:
        raise ValueError(f"pool_2d: cannot pool a {in_h}x{in_w} grid up to {out_h}x{out_w}.")
    if (out_h, out_w) == (in_h, in_w):
        return features
    maps = features.transpose(1, 2).reshape(num, dim, in_h, in_w)
    pooled = F.interpolate(maps, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return pooled.flatten(2).transpose(1, 2)


def _split_prefix(features: torch.Tensor, num_prefix_tokens: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if features.shape[-2] < num_prefix_tokens:
        raise ValueError(f"pack_anyres_features: {what} has fewer tokens than num_prefix_tokens={num_prefix_tokens}.")
    return features[..., :num_prefix_tokens, :], features[..., num_prefix_tokens:, :]


def pack_anyres_features(
    base_features: torch.Tensor | None,
    tile_features: torch.Tensor,
    grid: Any,
    image_size: Any,
    *,
    newline_embedding: torch.Tensor | None = None,
    pooled_grid: Any = None,
    unpad: bool = True,
    num_prefix_tokens: int = 0,
    feature_grid: Any = None,
    merge: str = "spatial",
    max_feature_tiles: int | None = None,
) -> torch.Tensor:
    """Pack one AnyRes image's view features into the LM token sequence, in LLaVA-NeXT's order.

    Global view first; then the tiles stitched into one feature map (rows x cols of patch grids), cut back to the
    image's aspect ratio (``unpad``), with ``newline_embedding`` appended after every row when given. ``pooled_grid``
    pools every view first (pool before the projector to match LongLLaVA exactly: call :func:`pool_2d` there and leave
    this None). ``merge="flat"`` keeps each tile's tokens together instead (no un-padding, no newlines).

    Args:
        base_features: (T, D) features of the global view, or None when the layout has no global view.
        tile_features: (rows*cols, T, D) features of the tiles, row by row from the top left.
        grid: (rows, cols) of tiles, as the processor returned it in ``image_grids``.
        image_size: original (height, width), as in ``image_sizes``.
        num_prefix_tokens: leading non-grid tokens in every view (CLS/registers with strategy "full"); kept for the
            global view, dropped for tiles (they have no place on the grid).
        feature_grid: (h, w) of each view's patch grid; None means square.
        max_feature_tiles: LLaVA-OneVision's anyres_max_N: after un-padding, a map larger than 1.1x N views' tokens
            is scaled down bilinearly (:func:`token_counts.capped_feature_size` says to what).

    Returns:
        (tokens, D), with ``tokens == anyres_token_count(...)`` for the same settings (newline = a newline embedding
        was given, base_view = base_features is not None).
    """
    if merge not in MERGE_MODES:
        raise ValueError(f"pack_anyres_features: merge must be one of {MERGE_MODES}, got {merge!r}.")
    rows, cols = _as_grid(grid)
    if tile_features.dim() != 3 or tile_features.shape[0] != rows * cols:
        raise ValueError(
            f"pack_anyres_features: a {rows}x{cols} grid needs tile features of shape ({rows * cols}, tokens, dim), "
            f"got {tuple(tile_features.shape)}."
        )
    dim = tile_features.shape[-1]
    _, tiles = _split_prefix(tile_features, num_prefix_tokens, "tile_features")
    if feature_grid is None:
        side = math.isqrt(tiles.shape[1])
        if side * side != tiles.shape[1]:
            raise ValueError(
                f"pack_anyres_features: {tiles.shape[1]} patch tokens per tile are not a square grid; pass "
                "feature_grid=(height, width)."
            )
        feature_grid = (side, side)
    grid_h, grid_w = as_size(feature_grid, "feature_grid")
    if pooled_grid is not None:
        tiles = pool_2d(tiles, pooled_grid, (grid_h, grid_w))
        out_grid = as_size(pooled_grid, "pooled_grid")
    else:
        out_grid = (grid_h, grid_w)

    if merge == "flat":
        if unpad or newline_embedding is not None:
            raise ValueError("pack_anyres_features: merge='flat' keeps tiles whole; use unpad=False, no newline.")
        packed = tiles.reshape(-1, dim)
    else:
        out_h, out_w = out_grid
        stitched = tiles.reshape(rows, cols, out_h, out_w, dim).permute(4, 0, 2, 1, 3)
        stitched = stitched.reshape(dim, rows * out_h, cols * out_w)
        if unpad:
            stitched = unpad_image(stitched, list(as_size(image_size, "image_size")))
        capped = capped_feature_size(*stitched.shape[1:], max_feature_tiles, out_grid[0] * out_grid[1])
        if capped != tuple(stitched.shape[1:]):
            stitched = F.interpolate(stitched[None], size=capped, mode="bilinear", align_corners=False)[0]
        if newline_embedding is not None:
            if newline_embedding.shape != (dim,):
                raise ValueError(
                    f"pack_anyres_features: newline_embedding must have shape ({dim},), got "
                    f"{tuple(newline_embedding.shape)}."
                )
            newline = newline_embedding.to(stitched.device, stitched.dtype)[:, None, None]
            stitched = torch.cat([stitched, newline.expand(dim, stitched.shape[1], 1)], dim=2)
        packed = stitched.flatten(1).transpose(0, 1)

    if base_features is None:
        return packed
    if base_features.dim() != 2 or base_features.shape[-1] != dim:
        raise ValueError(
            f"pack_anyres_features: base_features must be (tokens, {dim}), got {tuple(base_features.shape)}."
        )
    prefix, base = _split_prefix(base_features, num_prefix_tokens, "base_features")
    if base.shape[0] != grid_h * grid_w:
        raise ValueError(
            f"pack_anyres_features: base_features hold {base.shape[0]} patch tokens but the tiles' grid is "
            f"{grid_h}x{grid_w}; every view must have the same size."
        )
    if pooled_grid is not None:
        base = pool_2d(base[None], pooled_grid, (grid_h, grid_w))[0]
    return torch.cat([prefix, base, packed], dim=0)


def select_real_views(pixel_values: torch.Tensor, num_patches: Any) -> torch.Tensor:
    """(num_images, max_views, C, H, W) padded processor output -> (sum of real views, C, H, W), padding dropped."""
    if pixel_values.dim() != 5:
        raise ValueError(
            f"AnyRes pixel_values must be (num_images, max_views, channels, height, width), got "
            f"{tuple(pixel_values.shape)}."
        )
    counts = [int(n) for n in (num_patches.tolist() if hasattr(num_patches, "tolist") else num_patches)]
    if len(counts) != pixel_values.shape[0] or any(not 1 <= n <= pixel_values.shape[1] for n in counts):
        raise ValueError(
            f"num_patches {counts} does not fit pixel_values of shape {tuple(pixel_values.shape)} (one count per "
            f"image, each 1..{pixel_values.shape[1]})."
        )
    return torch.cat([pixel_values[i, :n] for i, n in enumerate(counts)], dim=0)


__all__ = [
    "AnyResLayout",
    "MAX_TILES_LIMIT",
    "anyres_token_count",
    "as_size",
    "best_grid",
    "best_grid_max_tiles",
    "best_grid_pinpoints",
    "check_flat_anyres_packing",
    "check_max_tiles",
    "check_pinpoints",
    "fit_size",
    "grid_resolution",
    "image_runs",
    "llava_next_layouts",
    "max_tiles_grids",
    "merge_tiles",
    "pack_anyres_features",
    "pad_to",
    "pinpoint_grids",
    "pool_2d",
    "select_real_views",
    "split_tiles",
    "unpadded_size",
    "view_feature_grid",
    "view_token_count",
]
