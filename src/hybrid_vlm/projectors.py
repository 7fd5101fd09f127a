"""Projectors: map vision-encoder features to the language model's width (and, for some, to fewer tokens).

Every projector is built as ``cls(vision_hidden_size, text_hidden_size, **options)`` and called as
``projector(features, grid=None)``:

* ``features``: ``(N, tokens, D)`` per view (one encoder, or Cobra's channel fusion: one tensor of the summed width),
  or, for several encoders fused along the *sequence* (MambaVLM's "visual long sequence"), a tuple with one
  ``(N, tokens, D_i)`` tensor per encoder, in encoder order. A single ``(N, maps * tokens, D)`` tensor is accepted
  too when the widths agree: it is split into ``num_maps`` equal parts, which is the same thing.
* ``grid``: ``(height, width)`` of one map's patch grid; ``None`` means square. Only grid-aware projectors use it.
* returns ``(N, output_tokens(tokens), text_hidden_size)``; with several maps, the maps' outputs in encoder order.

``output_tokens(in_tokens)`` gives the output length from the input length, and :func:`projector_output_grid` is the
pure arithmetic behind it (no tensors): the token-count function uses it, so the model and the processor never keep
a second copy.

``build_projector(config, vision_hidden_size)`` is the seam the model calls; ``vision_hidden_size`` is an int, or a
tuple of per-encoder widths for sequence fusion. The four cross-scan orders of the Mamba projector are plain
functions (:func:`scan_orders`, :func:`inverse_permutation`, :func:`fused_scan_order`) so they can be tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .anyres import pool_2d
from .config_options import (
    SCAN_FUSIONS,
    SCAN_MERGES,
    check_ssm_options,
    selected_prefix_tokens,
    setting,
    validate_projector_settings,
)
from .ssm import Mamba1Mixer, Mamba2Mixer, Mamba2RMSNormGated, RMSNorm, SSMBlock
from .token_counts import (  # the token arithmetic lives with the token-count function
    GRID_ONLY_PROJECTORS,
    POOLING_PROJECTORS,
    TOKEN_PRESERVING_PROJECTORS,
    _positive_int,
    projector_output_grid,
)

__all__ = [
    "GRID_ONLY_PROJECTORS",
    "POOLING_PROJECTORS",
    "PROJECTOR_CLASSES",
    "SCAN_FUSIONS",
    "SCAN_MERGES",
    "TOKEN_PRESERVING_PROJECTORS",
    "Conv2dAdapterProjector",
    "IdentityProjector",
    "MLP2xGeluProjector",
    "MLP3xGeluProjector",
    "MambaProjector",
    "Pool1dMLPProjector",
    "Pool2dMLPProjector",
    "build_projector",
    "fused_scan_order",
    "init_projector_module",
    "inverse_permutation",
    "projector_output_grid",
    "scan_orders",
    "validate_projector_settings",
]


Features = torch.Tensor | Sequence[torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Cross-scan orders (pure)
# ---------------------------------------------------------------------------------------------------------------


def scan_orders(height: int, width: int, device: torch.device | str | None = None) -> list[torch.LongTensor]:
    """VMamba's four cross-scan orders of an ``height x width`` grid, as permutations of row-major patch indices.

    ``order[i]`` is the patch visited at step ``i``: row-major, column-major, row-major reversed, column-major
    reversed. ``sequence[:, order]`` scans; ``scanned[:, inverse_permutation(order)]`` puts it back.
    """
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    row_major = torch.arange(height * width, device=device)
    column_major = row_major.view(height, width).t().reshape(-1)
    return [row_major, column_major, row_major.flip(0), column_major.flip(0)]


def inverse_permutation(perm: torch.Tensor) -> torch.LongTensor:
    """The permutation that undoes `perm`: ``x[perm][inverse_permutation(perm)] == x``. Checks it is one."""
    if perm.dim() != 1 or perm.is_floating_point() or perm.is_complex():
        raise ValueError(f"A permutation is a 1-D integer tensor, got {perm.dtype} of shape {tuple(perm.shape)}.")
    length = perm.numel()
    perm = perm.long()
    if length and (int(perm.min()) < 0 or int(perm.max()) >= length):
        raise ValueError(f"Not a permutation: indices must lie in 0..{length - 1}.")
    inverse = torch.full((length,), -1, dtype=torch.long, device=perm.device)
    inverse[perm] = torch.arange(length, device=perm.device)
    if bool((inverse < 0).any()):
        raise ValueError("Not a permutation: every index 0..n-1 must occur exactly once.")
    return inverse


def fused_scan_order(order: torch.Tensor, num_maps: int, fusion: str = "cross_stitch") -> torch.LongTensor:
    """One cross-scan order applied to `num_maps` maps concatenated along the sequence (map m at ``m*T .. m*T+T-1``).

    ``"cross_stitch"`` (MambaVLM's default) interleaves the maps token by token: ``a[o0], b[o0], a[o1], b[o1], ...``;
    ``"cross_cat"`` (its Table 3 ablation) scans each map in the order and concatenates: ``a[o0..], b[o0..]``.
    Returns a permutation of ``num_maps * T`` indices.
    """
    if fusion not in SCAN_FUSIONS:
        raise ValueError(f"Unknown scan fusion '{fusion}'. Choose one of {list(SCAN_FUSIONS)}.")
    num_maps = _positive_int(num_maps, "num_maps")
    tokens = order.numel()
    per_map = torch.stack([order + m * tokens for m in range(num_maps)])  # (maps, T)
    return per_map.t().reshape(-1) if fusion == "cross_stitch" else per_map.reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------------------------------------------


def _map_widths(vision_hidden_size: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(vision_hidden_size, Sequence) and not isinstance(vision_hidden_size, str):
        widths = tuple(vision_hidden_size)
        if not widths:
            raise ValueError("vision_hidden_size is an empty sequence; give one width per encoder.")
    else:
        widths = (vision_hidden_size,)
    return tuple(_positive_int(w, "vision_hidden_size") for w in widths)


class _Projector(nn.Module):
    """Input handling every projector shares: one map or several (sequence fusion), optional prefix tokens."""

    projector_type = ""

    def __init__(self, vision_hidden_size: int | Sequence[int], num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.map_widths = _map_widths(vision_hidden_size)
        self.num_maps = len(self.map_widths)
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}.")
        self.num_prefix_tokens = num_prefix_tokens

    def _require_equal_widths(self) -> int:
        if len(set(self.map_widths)) != 1:
            raise ValueError(
                f"{type(self).__name__} needs every encoder to have the same width, got {list(self.map_widths)}; "
                "fuse the encoders along channels, or use projector_type='mamba' (one input projection per encoder)."
            )
        return self.map_widths[0]

    def _split_maps(self, features: Features) -> list[torch.Tensor]:
        """The input as a list of ``(N, tokens, D_i)`` maps, checked against the widths this projector was built for."""
        if isinstance(features, torch.Tensor):
            if features.dim() != 3:
                raise ValueError(f"features must be (N, tokens, dim), got shape {tuple(features.shape)}.")
            if features.shape[1] % self.num_maps:
                raise ValueError(
                    f"{features.shape[1]} tokens cannot be split into {self.num_maps} equal maps (one per encoder)."
                )
            maps = list(features.chunk(self.num_maps, dim=1)) if self.num_maps > 1 else [features]
        else:
            maps = list(features)
            if len(maps) != self.num_maps:
                raise ValueError(f"{type(self).__name__} was built for {self.num_maps} map(s), got {len(maps)}.")
        for index, (tensor, width) in enumerate(zip(maps, self.map_widths)):
            if tensor.dim() != 3 or tensor.shape[-1] != width:
                raise ValueError(
                    f"map {index} must be (N, tokens, {width}), got shape {tuple(tensor.shape)}; the projector was "
                    f"built for vision widths {list(self.map_widths)}."
                )
            if tensor.shape[:2] != maps[0].shape[:2]:
                raise ValueError(
                    f"All maps need the same (N, tokens); got {tuple(maps[0].shape[:2])} and {tuple(tensor.shape[:2])}."
                )
        return maps

    def _map_grid(self, tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
        """(height, width) of one map's patch grid (tokens without the prefix); square unless `grid` says otherwise."""
        patches = tokens - self.num_prefix_tokens
        if grid is None:
            side = math.isqrt(max(patches, 0))
            if patches < 1 or side * side != patches:
                raise ValueError(
                    f"{type(self).__name__}: {patches} patch tokens per map are not a square grid; pass grid=(h, w)."
                )
            return side, side
        height, width = (int(v) for v in grid)
        if height * width != patches:
            raise ValueError(f"{type(self).__name__}: grid {height}x{width} does not hold {patches} patch tokens.")
        return height, width

    def output_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of one map's tokens after this projector (prefix tokens not included)."""
        return projector_output_grid(self.projector_type, grid, **self._grid_options())

    def _grid_options(self) -> dict[str, Any]:
        return {}

    def output_tokens(self, in_tokens: int, grid: tuple[int, int] | None = None) -> int:
        """Output length for an input of `in_tokens` tokens (all maps together), as `forward` produces it."""
        in_tokens = int(in_tokens)
        if in_tokens % self.num_maps:
            raise ValueError(f"{in_tokens} tokens cannot be split into {self.num_maps} equal maps.")
        per_map = in_tokens // self.num_maps
        out_h, out_w = self.output_grid(self._map_grid(per_map, grid))
        return self.num_maps * (self.num_prefix_tokens + out_h * out_w)


# ---------------------------------------------------------------------------------------------------------------
# MLPs
# ---------------------------------------------------------------------------------------------------------------


class MLP2xGeluProjector(_Projector):
    """LLaVA-1.5's ``mlp2x_gelu``: linear -> GELU -> linear, per token. LongLLaVA's and MMJamba's image projector.

    Weights: ``linear_1`` (vision -> text width), ``linear_2`` (text -> text). LLaVA/LongLLaVA checkpoints name them
    ``mm_projector.0`` / ``mm_projector.2``; Cobra's ``gelu-mlp`` names them ``projector.0`` / ``projector.2``.
    """

    projector_type = "mlp2x_gelu"

    def __init__(
        self,
        vision_hidden_size: int | Sequence[int],
        text_hidden_size: int,
        act: str = "gelu",
        bias: bool = True,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__(vision_hidden_size, num_prefix_tokens)
        width = self._require_equal_widths()
        self.linear_1 = nn.Linear(width, text_hidden_size, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=bias)

    def _mlp(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))

    def _reduce(self, tensor: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        return tensor

    def forward(self, features: Features, grid: tuple[int, int] | None = None) -> torch.Tensor:
        maps = [self._reduce(m, grid) for m in self._split_maps(features)]
        return self._mlp(maps[0] if len(maps) == 1 else torch.cat(maps, dim=1))

    def output_tokens(self, in_tokens: int, grid: tuple[int, int] | None = None) -> int:
        return int(in_tokens)


class MLP3xGeluProjector(MLP2xGeluProjector):
    """Cobra's (Prismatic's) ``fused-gelu-mlp``: linear -> GELU -> linear -> GELU -> linear, for fused encoder features.

    Cobra feeds DINOv2 and SigLIP concatenated along *channels* (1024 + 1152 = 2176) and widens first to
    ``4 * vision width`` (``intermediate_size``), then to the LM width, then LM -> LM. Weights ``linear_1``
    (vision -> intermediate), ``linear_2`` (intermediate -> text), ``linear_3`` (text -> text); Cobra's checkpoints
    hold them as ``projector.0`` / ``projector.2`` / ``projector.4`` (an ``nn.Sequential``), so conversion is a rename.
    """

    projector_type = "mlp3x_gelu"

    def __init__(
        self,
        vision_hidden_size: int | Sequence[int],
        text_hidden_size: int,
        act: str = "gelu",
        bias: bool = True,
        num_prefix_tokens: int = 0,
        intermediate_size: int | None = None,
    ) -> None:
        _Projector.__init__(self, vision_hidden_size, num_prefix_tokens)
        width = self._require_equal_widths()
        intermediate = 4 * width if intermediate_size is None else _positive_int(intermediate_size, "intermediate_size")
        self.linear_1 = nn.Linear(width, intermediate, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(intermediate, text_hidden_size, bias=bias)
        self.linear_3 = nn.Linear(text_hidden_size, text_hidden_size, bias=bias)

    def _mlp(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_3(self.act(self.linear_2(self.act(self.linear_1(features)))))


class Pool2dMLPProjector(MLP2xGeluProjector):
    """LongLLaVA (arXiv:2409.02889, §3.1 and Table 4): bilinear 2-D pooling of each view's patch grid, then
    ``mlp2x_gelu``.

    24x24 -> 12x12 (576 -> 144 tokens per view) with ``pooled_grid=12``; pooling runs before the MLP, as in the
    paper, through :func:`hybrid_vlm.anyres.pool_2d` (the same function the model's ``vision_pooled_grid`` uses).
    Prefix tokens (CLS with ``vision_feature_select_strategy="full"``) are not pooled; they stay in front of each map.
    Weights as ``mlp2x_gelu`` (``linear_1``, ``linear_2``), so LongLLaVA's ``mm_projector.{0,2}`` rename onto them.
    """

    projector_type = "pool2d_mlp"

    def __init__(
        self,
        vision_hidden_size: int | Sequence[int],
        text_hidden_size: int,
        pooled_grid: int = 12,
        act: str = "gelu",
        bias: bool = True,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__(vision_hidden_size, text_hidden_size, act, bias, num_prefix_tokens)
        self.pooled_grid = _positive_int(pooled_grid, "pooled_grid")

    def _grid_options(self) -> dict[str, Any]:
        return {"pooled_grid": self.pooled_grid}

    def _pool(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        self.output_grid(grid)  # clear error when the grid is smaller than the pooled side
        return pool_2d(patches, self.pooled_grid, grid)

    def _reduce(self, tensor: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        map_grid = self._map_grid(tensor.shape[1], grid)
        prefix, patches = tensor[:, : self.num_prefix_tokens], tensor[:, self.num_prefix_tokens :]
        pooled = self._pool(patches, map_grid)
        return pooled if self.num_prefix_tokens == 0 else torch.cat([prefix, pooled], dim=1)

    def output_tokens(self, in_tokens: int, grid: tuple[int, int] | None = None) -> int:
        return _Projector.output_tokens(self, in_tokens, grid)


class Pool1dMLPProjector(Pool2dMLPProjector):
    """LongLLaVA's 1-D pooling ablation (arXiv:2409.02889, Table 4: "+1D Pooling", 144 tokens): average pooling
    along the row-major token sequence to ``pooled_grid ** 2`` tokens, then ``mlp2x_gelu``.

    Each output token is the mean of consecutive tokens (4 at 576 -> 144: a 1x4 strip of a row) instead of a 2x2
    block, which is the point of the ablation (the paper reports 2-D pooling 0.1-1.5 points better). The output is a
    sequence, not a grid. Weights as ``mlp2x_gelu``.
    """

    projector_type = "pool1d_mlp"

    def _pool(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        self.output_grid(grid)
        pooled = F.adaptive_avg_pool1d(patches.transpose(1, 2), self.pooled_grid * self.pooled_grid)
        return pooled.transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# MMJamba's video adapter
# ---------------------------------------------------------------------------------------------------------------


class Conv2dAdapterProjector(_Projector):
    """MMJamba's video adapter ("Multimodal Instruction Tuning with Hybrid State Space Models", §5 "Implementation
    Details": "a 2D convolution layer as the vision-language adapter"; images there use ``mlp2x_gelu``, and image
    and video adapters are trained separately).

    Our reading, since the paper gives no sizes (and has no public code): one ``nn.Conv2d`` from the vision width to
    the LM width over each frame's patch grid, ``kernel_size`` x ``kernel_size`` with stride ``stride`` (default: the
    kernel, i.e. non-overlapping windows) and no padding. The default kernel 2 turns a 24x24 CLIP grid into 12x12,
    576 -> 144 tokens per frame, which is what lets "AnyFrame" inference run 64 frames; ``kernel_size=1`` is a
    per-token linear map with no compression. Weights: ``conv.weight`` ``(text, vision, k, k)``, ``conv.bias``.
    """

    projector_type = "conv2d_adapter"

    def __init__(
        self,
        vision_hidden_size: int | Sequence[int],
        text_hidden_size: int,
        kernel_size: int = 2,
        stride: int | None = None,
        bias: bool = True,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__(vision_hidden_size, num_prefix_tokens)
        if num_prefix_tokens:
            raise ValueError(
                "conv2d_adapter convolves the patch grid; a CLS/register prefix has no place in it. Use "
                "vision_feature_select_strategy='default'."
            )
        width = self._require_equal_widths()
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _positive_int(stride, "stride")
        self.conv = nn.Conv2d(width, text_hidden_size, self.kernel_size, stride=self.stride, bias=bias)

    def _grid_options(self) -> dict[str, Any]:
        return {"conv_kernel": self.kernel_size, "conv_stride": self.stride}

    def forward(self, features: Features, grid: tuple[int, int] | None = None) -> torch.Tensor:
        outputs = []
        for tensor in self._split_maps(features):
            height, width = self._map_grid(tensor.shape[1], grid)
            self.output_grid((height, width))
            maps = tensor.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], height, width)
            outputs.append(self.conv(maps).flatten(2).transpose(1, 2))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# MambaVLM's Mamba projector
# ---------------------------------------------------------------------------------------------------------------


class MambaProjector(_Projector):
    """MambaVLM's Mamba projector with cross-stitch scanning ("Unleashing the Power of Selective State Space Models
    in Vision-Language Models", §3.2, Eq. 6-8, Fig. 3, Table 3).

    Per encoder map ``R`` (``N x T x D_i`` on an ``h x w`` grid):

    1. ``x = in_proj(R)`` (the paper's ``W_1``), then a depthwise ``conv2d`` (``dwconv_kernel``, same padding) over
       the patch grid and SiLU: ``H = DWConv(W_1 R)``.
    2. The maps are concatenated along the sequence (the "visual long sequence") and scanned in VMamba's four
       cross-scan orders (:func:`scan_orders`: row-major, column-major, both reversed); with two maps each order is
       "cross-stitched" (token-by-token interleaving, the default) or "cross-cat" (concatenated per order), see
       :func:`fused_scan_order`.
    3. Each of the four sequences goes through its own ``SSMBlock`` (``ssm.{k}``; the library's one SSM, Mamba-2 by
       default: mamba-ssm kernels on CUDA, the torch path elsewhere) and is put back into patch order with
       :func:`inverse_permutation`.
    4. The four are merged (``merge="sum"``, as VMamba's cross-merge; ``"mean"`` divides by 4), normalised
       (``out_norm``, LayerNorm), gated by ``silu(gate_proj(R))`` (``W_2``), and projected to the LM width by
       ``out_proj`` (``W_3``).

    Eq. 8 is lost in our copy of the paper; what survives says "W_1, W_2, W_3 are three independent linear layers, we
    omit layer norm for brevity" and cites VMamba for cross-scan. Steps 1 and 4 are VMamba's SS2D block around
    that (in_proj -> DWConv -> SiLU -> cross-scan/merge -> LayerNorm -> gate -> out_proj), our reading; set
    ``gate=False`` to drop ``W_2``. Output: ``(N, maps * T, text)`` in patch order, maps in encoder order (MambaVLM:
    2 x 729 = 1458 tokens). Weights: ``in_proj`` and ``gate_proj`` (``nn.Linear``, or a list ``in_proj.{i}`` when the
    encoders' widths differ, e.g. DINOv2 1024 / SigLIP 1152), ``conv2d`` (depthwise), ``ssm.{0..3}.norm.weight``,
    ``ssm.{k}.mixer.{in_proj,conv1d,dt_bias,A_log,D,norm,out_proj}``, ``out_norm``, ``out_proj``. The scan orders are
    not parameters: they are rebuilt (and cached) per grid.
    """

    projector_type = "mamba"

    def __init__(
        self,
        vision_hidden_size: int | Sequence[int],
        text_hidden_size: int,
        hidden_size: int | None = None,
        scan_fusion: str = "cross_stitch",
        merge: str = "sum",
        ssm: dict[str, Any] | None = None,
        dwconv_kernel: int = 3,
        gate: bool = True,
        bias: bool = True,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__(vision_hidden_size, num_prefix_tokens)
        if num_prefix_tokens:
            raise ValueError(
                "The Mamba projector scans the patch grid; a CLS/register prefix has no place in it. Use "
                "vision_feature_select_strategy='default'."
            )
        if scan_fusion not in SCAN_FUSIONS:
            raise ValueError(f"Unknown scan_fusion '{scan_fusion}'. Choose one of {list(SCAN_FUSIONS)}.")
        if merge not in SCAN_MERGES:
            raise ValueError(f"Unknown scan merge '{merge}'. Choose one of {list(SCAN_MERGES)}.")
        dwconv_kernel = _positive_int(dwconv_kernel, "dwconv_kernel")
        if dwconv_kernel % 2 == 0:
            raise ValueError(f"dwconv_kernel must be odd (same padding keeps the grid), got {dwconv_kernel}.")
        hidden = max(self.map_widths) if hidden_size is None else _positive_int(hidden_size, "hidden_size")
        self.hidden_size = hidden
        self.scan_fusion = scan_fusion
        self.merge = merge
        self.ssm_options = check_ssm_options(ssm)

        def per_map() -> nn.Module:
            if len(set(self.map_widths)) == 1:
                return nn.Linear(self.map_widths[0], hidden, bias=bias)
            return nn.ModuleList(nn.Linear(width, hidden, bias=bias) for width in self.map_widths)

        self.in_proj = per_map()
        self.conv2d = nn.Conv2d(hidden, hidden, dwconv_kernel, padding=dwconv_kernel // 2, groups=hidden)
        self.ssm = nn.ModuleList(SSMBlock(hidden, **self.ssm_options) for _ in range(4))
        self.out_norm = nn.LayerNorm(hidden)
        self.gate_proj = per_map() if gate else None
        self.out_proj = nn.Linear(hidden, text_hidden_size, bias=bias)
        self._orders: dict[tuple[int, int, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @staticmethod
    def _project_maps(projection: nn.Module, maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-map input projection (shared, or one per encoder width), concatenated along the sequence."""
        if isinstance(projection, nn.ModuleList):
            return torch.cat([layer(m) for layer, m in zip(projection, maps)], dim=1)
        return projection(torch.cat(maps, dim=1) if len(maps) > 1 else maps[0])

    def _scan_permutations(
        self, grid: tuple[int, int], device: torch.device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(scan, unscan) index pairs of the four orders over the fused sequence, cached per grid and device."""
        key = (grid[0], grid[1], str(device))
        if key not in self._orders:
            pairs = []
            for order in scan_orders(*grid, device=device):
                fused = fused_scan_order(order, self.num_maps, self.scan_fusion)
                pairs.append((fused, inverse_permutation(fused)))
            self._orders[key] = pairs
        return self._orders[key]

    def forward(self, features: Features, grid: tuple[int, int] | None = None) -> torch.Tensor:
        maps = self._split_maps(features)
        num, tokens = maps[0].shape[:2]
        height, width = self._map_grid(tokens, grid)
        x = self._project_maps(self.in_proj, maps)  # (N, maps * T, hidden)
        x = x.reshape(num * self.num_maps, height, width, self.hidden_size).permute(0, 3, 1, 2)  # each map on its grid
        x = F.silu(self.conv2d(x)).permute(0, 2, 3, 1).reshape(num, self.num_maps * tokens, self.hidden_size)
        merged = None
        for block, (scan, unscan) in zip(self.ssm, self._scan_permutations((height, width), x.device)):
            restored = block(x[:, scan])[:, unscan]
            merged = restored if merged is None else merged + restored
        if self.merge == "mean":
            merged = merged / len(self.ssm)
        merged = self.out_norm(merged)
        if self.gate_proj is not None:
            merged = merged * F.silu(self._project_maps(self.gate_proj, maps))
        return self.out_proj(merged)


class IdentityProjector(_Projector):
    """No projector: the vision tower already outputs LM-width tokens (Qwen2-VL's tower ends in its PatchMerger,
    which is Qwen2-VL's projector). No weights; the width is checked so a wrong config fails here, not in the LM."""

    projector_type = "identity"

    def __init__(
        self, vision_hidden_size: int | Sequence[int], text_hidden_size: int, num_prefix_tokens: int = 0
    ) -> None:
        super().__init__(vision_hidden_size, num_prefix_tokens)
        width = self._require_equal_widths()
        if width != text_hidden_size:
            raise ValueError(
                f"projector_type='identity' needs vision features as wide as the language model ({text_hidden_size}), "
                f"got {width}. Use a projector that maps the width (mlp2x_gelu), or a tower whose output is LM-wide."
            )

    def forward(self, features: Features, grid: tuple[int, int] | None = None) -> torch.Tensor:
        maps = self._split_maps(features)
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)

    def output_tokens(self, in_tokens: int, grid: tuple[int, int] | None = None) -> int:
        return int(in_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Registry, config seam, init
# ---------------------------------------------------------------------------------------------------------------

PROJECTOR_CLASSES: dict[str, type[_Projector]] = {
    "mlp2x_gelu": MLP2xGeluProjector,
    "mlp3x_gelu": MLP3xGeluProjector,
    "pool2d_mlp": Pool2dMLPProjector,
    "pool1d_mlp": Pool1dMLPProjector,
    "conv2d_adapter": Conv2dAdapterProjector,
    "mamba": MambaProjector,
    "identity": IdentityProjector,
}


def build_projector(config: Any, vision_hidden_size: int | Sequence[int]) -> nn.Module:
    """Build the projector named by `config.projector_type` from the config's `projector_*` fields.

    `vision_hidden_size`: the width the model feeds in; a tuple of per-encoder widths when encoders are fused along
    the sequence (the projector then takes one map per encoder).
    """
    validate_projector_settings(config)
    projector_type = setting(config, "projector_type", "mlp2x_gelu")
    text_hidden_size = config.text_config.hidden_size
    act = setting(config, "projector_hidden_act", "gelu")
    bias = setting(config, "multimodal_projector_bias", True)
    prefix = selected_prefix_tokens(config)
    if projector_type == "mlp2x_gelu":
        return MLP2xGeluProjector(vision_hidden_size, text_hidden_size, act, bias, prefix)
    if projector_type == "mlp3x_gelu":
        intermediate = setting(config, "projector_intermediate_size")
        return MLP3xGeluProjector(vision_hidden_size, text_hidden_size, act, bias, prefix, intermediate)
    if projector_type in POOLING_PROJECTORS:
        cls = PROJECTOR_CLASSES[projector_type]
        return cls(vision_hidden_size, text_hidden_size, config.projector_pooled_grid, act, bias, prefix)
    if projector_type == "identity":
        return IdentityProjector(vision_hidden_size, text_hidden_size, prefix)
    if projector_type == "conv2d_adapter":
        kernel = setting(config, "projector_conv_kernel", 2)
        stride = setting(config, "projector_conv_stride")
        return Conv2dAdapterProjector(vision_hidden_size, text_hidden_size, kernel, stride, bias, prefix)
    return MambaProjector(
        vision_hidden_size,
        text_hidden_size,
        hidden_size=setting(config, "projector_hidden_size"),
        scan_fusion=setting(config, "projector_scan_fusion", "cross_stitch"),
        merge=setting(config, "projector_scan_merge", "sum"),
        ssm=setting(config, "projector_ssm"),
        bias=bias,
        num_prefix_tokens=prefix,
    )


@torch.no_grad()
def init_projector_module(module: nn.Module, std: float = 0.02) -> bool:
    """Per-module init hook for the model's `_init_weights` (weights a checkpoint did not provide). True if handled.

    Linear: normal(0, std), zero bias (as LLaVA). Conv: PyTorch's default init. Norms: 1 / 0. An ``SSMBlock`` as a
    fresh Mamba block (in_proj/conv1d default init, A/dt/D as mamba-ssm, out_proj kaiming): transformers visits
    children before parents, so the block's own init has the last word over its Linear children.
    """
    if isinstance(module, SSMBlock):
        module.norm.weight.fill_(1.0)
        mixer = module.mixer
        for name in ("in_proj", "x_proj", "conv1d", "out_proj"):
            child = getattr(mixer, name, None)
            if child is not None:
                child.reset_parameters()
                if isinstance(child, nn.Linear) and child.bias is not None:
                    child.bias.zero_()
        mixer.init_ssm_parameters()
        return True
    if isinstance(module, nn.Linear):
        module.weight.normal_(mean=0.0, std=std)
        if module.bias is not None:
            module.bias.zero_()
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        module.reset_parameters()
        return True
    if isinstance(module, (nn.LayerNorm, RMSNorm, Mamba2RMSNormGated)):
        if getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
        return True
    return isinstance(module, (Mamba1Mixer, Mamba2Mixer))  # parameters handled with their SSMBlock
