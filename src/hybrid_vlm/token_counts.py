"""The one place that says how many LM tokens a picture becomes.

The processor uses it to expand each `<image>` placeholder; the model uses it to check the features it produced.
Keeping a single copy of this arithmetic is what stops processor and model from disagreeing (CLS token or not,
register tokens, pooling), which otherwise surfaces as a shape error deep inside the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral
from typing import Any

from transformers import PretrainedConfig

from .model_types import VISION_ENCODER_TYPES, vision_encoder_type


def vision_token_patch_size(vision_config: PretrainedConfig) -> int:
    """Pixels per side of the picture that one output token of the encoder covers (28 for Qwen2-VL's merged tokens)."""
    patch = int(vision_config.patch_size)
    row = VISION_ENCODER_TYPES.get(vision_config.model_type)
    merge_field = row.merge_size_field if row else None
    return patch * int(getattr(vision_config, merge_field)) if merge_field else patch


def vision_temporal_patch(vision_config: PretrainedConfig) -> int:
    """Video frames one output token grid covers: Qwen2-VL's `temporal_patch_size` (2), else 1."""
    row = VISION_ENCODER_TYPES.get(vision_config.model_type)
    temporal_field = row.temporal_patch_field if row else None
    return int(getattr(vision_config, temporal_field, 2) or 1) if temporal_field else 1


def vision_prefix_token_count(vision_config: PretrainedConfig) -> int:
    """Tokens a vision encoder emits before its patch grid: CLS for CLIP/DINOv2, plus DINOv2's register tokens."""
    return vision_encoder_type(vision_config.model_type).prefix_tokens(vision_config)


# ---------------------------------------------------------------------------------------------------------------
# Token arithmetic (pure: no torch). The projectors (projectors.py) that change token counts.
# ---------------------------------------------------------------------------------------------------------------

# Projectors whose output has one token per input token.
TOKEN_PRESERVING_PROJECTORS = ("mlp2x_gelu", "mlp3x_gelu", "mamba", "identity")
# Projectors that pool each view's patch grid to a fixed side.
POOLING_PROJECTORS = ("pool2d_mlp", "pool1d_mlp")
# Projectors that need a plain patch grid (no CLS/register prefix in the way).
GRID_ONLY_PROJECTORS = ("conv2d_adapter", "mamba")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def projector_output_grid(
    projector_type: str,
    grid: tuple[int, int],
    *,
    pooled_grid: int | None = None,
    conv_kernel: int = 2,
    conv_stride: int | None = None,
) -> tuple[int, int]:
    """(height, width) of one map's tokens after the projector, from its patch grid (prefix tokens not included).

    MLPs and the Mamba projector keep the grid; ``pool2d_mlp`` / ``pool1d_mlp`` give ``pooled_grid`` squared (for
    1-D pooling that is a token count, not a spatial layout); ``conv2d_adapter`` gives the output of a convolution
    without padding: ``(side - kernel) // stride + 1``.
    """
    height, width = (_positive_int(int(v), "grid side") for v in grid)
    if projector_type in POOLING_PROJECTORS:
        if pooled_grid is None:
            raise ValueError(f"projector_type '{projector_type}' needs a pooled grid side (LongLLaVA: 12).")
        side = _positive_int(pooled_grid, "pooled_grid")
        if side > min(height, width):
            raise ValueError(
                f"pooled_grid {side} is larger than the {height}x{width} patch grid; pooling only reduces."
            )
        return side, side
    if projector_type == "conv2d_adapter":
        kernel = _positive_int(conv_kernel, "conv_kernel")
        stride = kernel if conv_stride is None else _positive_int(conv_stride, "conv_stride")
        if kernel > min(height, width):
            raise ValueError(f"conv2d_adapter: kernel {kernel} is larger than the {height}x{width} patch grid.")
        return (height - kernel) // stride + 1, (width - kernel) // stride + 1
    if projector_type in TOKEN_PRESERVING_PROJECTORS:
        return height, width
    known = [*TOKEN_PRESERVING_PROJECTORS, *POOLING_PROJECTORS, "conv2d_adapter"]
    raise ValueError(f"Unknown projector_type '{projector_type}'. Choose one of {known}.")



# vision_feature_select_strategy: "default" drops the encoder's prefix tokens (CLS, registers), "full" keeps them.
FEATURE_SELECT_STRATEGIES = ("default", "full")
# anyres_merge: "spatial" stitches an AnyRes image's tiles into one feature map (LLaVA-NeXT); "flat" keeps every tile
# whole, the global view first, then tile after tile row by row (LongLLaVA).
ANYRES_MERGES = ("spatial", "flat")


@dataclass(frozen=True)
class VisualTokenSpec:
    """Everything the token count of one image or video depends on; the model derives it from its config
    (:meth:`from_config`), the processor stores it (saved as a nested dict in ``processor_config.json``).

    A new token rule is a field here (with a default that means "off"), read from the config in :meth:`from_config`
    and used by the counting functions of this module; the processor saves, loads and passes the spec as a whole.
    """

    patch_size: int
    num_prefix_tokens: int
    vision_feature_select_strategy: str = "default"
    # Side each view's patch grid is pooled to, whoever pools it: the model before the projector (the config's
    # `vision_pooled_grid`) or the projector itself (`pool2d_mlp` / `pool1d_mlp`: the config's `projector_pooled_grid`).
    # LongLLaVA: 24x24 -> 12x12. None: no pooling.
    pooled_grid: int | None = None
    # (kernel, stride) of the `conv2d_adapter` projector, which shrinks each view's grid; None for other projectors.
    projector_conv: tuple[int, int] | None = None
    # Patch maps per image that reach the LM one after another: the number of encoders with
    # `vision_fusion="sequence"` (MambaVLM's visual long sequence), else 1.
    num_maps: int = 1
    # AnyRes packing (the config's fields of the same name): a learned newline after every row of stitched tile
    # features, un-padding of the stitched map, and how tiles are merged (ANYRES_MERGES).
    image_newline: bool = False
    anyres_unpad: bool = True
    anyres_merge: str = "spatial"
    # LLaVA-OneVision's "anyres_max_N": the un-padded tile feature map is scaled down (bilinear) to about N views'
    # worth of tokens when it is more than 1.1x larger. None: no cap.
    anyres_max_feature_tiles: int | None = None
    # LLaVA-OneVision's videos: every frame's projected grid pooled to ceil(side / stride) (bilinear), and one
    # learned newline after each video's tokens. None / False: frames are counted like images.
    video_pool_stride: int | None = None
    video_newline: bool = False
    # Consecutive video frames encoded together as one temporal patch (Qwen2-VL's tower, and so Vamba: 2): a video
    # gets one token grid per group, and its frame count must be a multiple of this.
    video_temporal_patch: int = 1

    def __post_init__(self) -> None:
        for name, low in (("patch_size", 1), ("num_prefix_tokens", 0), ("num_maps", 1), ("video_temporal_patch", 1)):
            _check_int(getattr(self, name), name, low)
        for name in ("pooled_grid", "anyres_max_feature_tiles", "video_pool_stride"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 1)
        if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"VisualTokenSpec: unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}; "
                f"use one of {list(FEATURE_SELECT_STRATEGIES)}."
            )
        if self.anyres_merge not in ANYRES_MERGES:
            raise ValueError(
                f"VisualTokenSpec: unknown anyres_merge {self.anyres_merge!r}; use one of {list(ANYRES_MERGES)}."
            )
        if self.projector_conv is not None:
            conv = tuple(self.projector_conv)  # a JSON list when loaded
            if len(conv) != 2:
                raise ValueError(f"VisualTokenSpec: projector_conv is (kernel, stride), got {self.projector_conv!r}.")
            for value in conv:
                _check_int(value, "projector_conv", 1)
            object.__setattr__(self, "projector_conv", conv)
        for name in ("image_newline", "anyres_unpad", "video_newline"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def from_config(cls, config: Any) -> VisualTokenSpec:
        """Derive the spec from a `HybridVLMConfig`."""
        vision_config = config.vision_config
        projector_type = getattr(config, "projector_type", "mlp2x_gelu")
        pooled_grid = getattr(config, "vision_pooled_grid", None)
        if projector_type in POOLING_PROJECTORS:
            pooled_grid = config.projector_pooled_grid
        projector_conv = None
        if projector_type == "conv2d_adapter":
            kernel = config.projector_conv_kernel
            projector_conv = (kernel, config.projector_conv_stride or kernel)
        return cls(
            patch_size=vision_token_patch_size(vision_config),
            num_prefix_tokens=vision_prefix_token_count(vision_config),
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            pooled_grid=pooled_grid,
            projector_conv=projector_conv,
            num_maps=_sequence_maps(config),
            image_newline=bool(getattr(config, "image_newline", False)),
            anyres_unpad=bool(getattr(config, "anyres_unpad", True)),
            anyres_merge=getattr(config, "anyres_merge", "spatial"),
            anyres_max_feature_tiles=getattr(config, "anyres_max_feature_tiles", None),
            video_pool_stride=getattr(config, "video_pool_stride", None),
            video_newline=bool(getattr(config, "video_newline", False)),
            video_temporal_patch=vision_temporal_patch(vision_config),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisualTokenSpec:
        """The spec from :meth:`to_dict`'s output (as read back from JSON); unknown keys are an error."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"VisualTokenSpec.from_dict needs a dict, got {type(data).__name__}.")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"VisualTokenSpec: unknown field(s) {unknown}; known: {[f.name for f in fields(cls)]}. Was it saved by "
                "a newer hybrid_vlm?"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (``projector_conv`` as a list)."""
        data = asdict(self)
        if data["projector_conv"] is not None:
            data["projector_conv"] = list(data["projector_conv"])
        return data


def _check_int(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"VisualTokenSpec: {name} must be an int >= {low}, got {value!r}.")


def _sequence_maps(config: Any) -> int:
    configs = getattr(config, "vision_configs", None) or [config.vision_config]
    return len(configs) if getattr(config, "vision_fusion", "channel") == "sequence" else 1


def count_image_tokens(spec: VisualTokenSpec, height: int, width: int) -> int:
    """Number of LM tokens one image of `height` x `width` pixels (as fed to the encoder) turns into."""
    if height <= 0 or width <= 0:
        raise ValueError(f"Image size must be positive, got {height}x{width}.")
    if height < spec.patch_size or width < spec.patch_size:
        raise ValueError(f"Image size {height}x{width} is smaller than the encoder's patch size {spec.patch_size}.")
    # A ViT's patch convolution covers whole patches only: trailing pixels are not seen (Cobra's 384 px on 14 px
    # patches is a 27x27 grid).
    grid = (height // spec.patch_size, width // spec.patch_size)
    if spec.pooled_grid is not None:
        grid = projector_output_grid("pool2d_mlp", grid, pooled_grid=spec.pooled_grid)
    if spec.projector_conv is not None:
        kernel, stride = spec.projector_conv
        grid = projector_output_grid("conv2d_adapter", grid, conv_kernel=kernel, conv_stride=stride)
    patches = grid[0] * grid[1]
    if spec.vision_feature_select_strategy == "full":
        patches += spec.num_prefix_tokens
    return patches * spec.num_maps


# ---------------------------------------------------------------------------------------------------------------
# Layouts: where an image's or a video's visual tokens sit in the prompt and which markers surround them. The
# processor writes what `layout_pieces` says; the model fills the placeholder runs with features in the same order.
# ---------------------------------------------------------------------------------------------------------------

# llava:     <image> x n                                  (AnyRes: LLaVA-NeXT's packing, learned newlines included)
#            <video> x (frames * tokens per frame)
# longllava: <img> <image> x n </img>
#            <img> [global view] \n [tile row 1] \n ... \n [tile row R] </img>   (AnyRes; arXiv:2409.02889 §3.2)
#            <vid> <img>[frame 1]</img> <t> <img>[frame 2]</img> ... <img>[frame F]</img> </vid>
# qwen2vl:   <|vision_start|> <image> x n <|vision_end|>, and the same around a video's frames (Vamba, Qwen2-VL)
# longllava-chat (videos only): the video prompt LongLLaVA's chat code writes, byte for byte. It joins
#            `<img><image></img><t>` per frame and strips the characters '<', 't', '>' from the right (a
#            `str.rstrip('<t>')`), which also eats the last `</img>`'s `>`:
#            <vid> <img>[frame 1]</img> <t> ... <img>[frame F]</img </vid>
#            and then wraps a lone `<image>` again when no `</img>` is left, so a one-frame video is
#            <vid><img> <img>[frame]</img> </img</vid>
LAYOUTS: tuple[str, ...] = ("llava", "longllava", "qwen2vl")
VIDEO_ONLY_LAYOUTS: tuple[str, ...] = ("longllava-chat",)
# "plain" is the first name of the llava video layout; saved processors still use it.
VIDEO_LAYOUTS: tuple[str, ...] = ("plain", *LAYOUTS, *VIDEO_ONLY_LAYOUTS)
IMAGE_LAYOUTS: tuple[str, ...] = LAYOUTS
# "special": every marker is one token of the tokenizer (new models). "text": markers are plain text that the tokenizer
# splits into several tokens, as in LongLLaVA's reference code (converted checkpoints); their costs are measured.
MARKER_STYLES: tuple[str, ...] = ("special", "text")

# (before the first run, between two runs, after the last run) of one image / one video. Runs are: for an image, all
# its tokens, or for a longllava AnyRes image the global view then one run per tile row; for a video, one per frame.
# An empty "between" joins the runs into one.
_IMAGE_SEGMENTS: dict[str, tuple[str, str, str]] = {
    "llava": ("", "", ""),
    "longllava": ("<img>", "\n", "</img>"),
    "qwen2vl": ("<|vision_start|>", "", "<|vision_end|>"),
}
_VIDEO_SEGMENTS: dict[str, tuple[str, str, str]] = {
    "llava": ("", "", ""),
    "longllava": ("<vid><img>", "</img><t><img>", "</img></vid>"),
    "qwen2vl": ("<|vision_start|>", "", "<|vision_end|>"),
    "longllava-chat": ("<vid><img>", "</img><t><img>", "</img</vid>"),
}
# Layouts whose one-run (one-frame) video differs from the general rule: (start, end) for that case.
_SINGLE_RUN_VIDEO_SEGMENTS: dict[str, tuple[str, str]] = {
    "longllava-chat": ("<vid><img><img>", "</img></img</vid>"),
}
# Every marker a layout writes; "\n" is ordinary text (one token in the tokenizers these models use).
LAYOUT_MARKERS: dict[str, tuple[str, ...]] = {
    "llava": (),
    "longllava": ("<img>", "</img>", "<vid>", "</vid>", "<t>"),
    "qwen2vl": ("<|vision_start|>", "<|vision_end|>"),
    "longllava-chat": ("<img>", "</img>", "<vid>", "</vid>", "<t>"),
}
_ALL_MARKERS = tuple(dict.fromkeys(m for markers in LAYOUT_MARKERS.values() for m in markers)) + ("\n",)


def canonical_layout(name: Any, what: str = "layout") -> str:
    """A layout name as one of `LAYOUTS` or `VIDEO_ONLY_LAYOUTS` ("plain" -> "llava"), or a ValueError listing the
    choices."""
    if name == "plain":
        return "llava"
    if name not in LAYOUTS and name not in VIDEO_ONLY_LAYOUTS:
        choices = list(VIDEO_LAYOUTS) if what == "video_layout" else list(LAYOUTS)
        raise ValueError(f"Unknown {what} {name!r}; use one of {choices}.")
    return name


def _default_segment_cost(segment: str) -> int:
    """Tokens of a segment when every marker is one token: the markers it is made of."""
    cost, rest = 0, segment
    while rest:
        marker = next((m for m in _ALL_MARKERS if rest.startswith(m)), None)
        if marker is None:
            raise ValueError(f"{segment!r} is not made of layout markers; measure its cost with the tokenizer.")
        cost += 1
        rest = rest[len(marker) :]
    return cost


@dataclass(frozen=True)
class TokenLayout:
    """A layout and what its text segments cost in LM tokens.

    ``segment_costs`` holds the costs measured with the tokenizer (the processor measures every segment of
    :func:`layout_segments` where it sits, between placeholder tokens); a segment not listed costs one token per
    marker, which is right for special-token markers.
    """

    name: str = "llava"
    markers: str = "special"
    segment_costs: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_layout(self.name))
        if self.markers not in MARKER_STYLES:
            raise ValueError(f"Unknown layout marker style {self.markers!r}; use one of {list(MARKER_STYLES)}.")

    def cost(self, segment: str) -> int:
        for known, tokens in self.segment_costs:
            if known == segment:
                return tokens
        return _default_segment_cost(segment)


def as_token_layout(layout: str | TokenLayout) -> TokenLayout:
    return layout if isinstance(layout, TokenLayout) else TokenLayout(canonical_layout(layout))


def layout_segments(layout: str | TokenLayout, kind: str, num_runs: int | None = None) -> tuple[str, str, str]:
    """(start, between, end) text segments of one image (``kind="image"``) or video (``"video"``) in ``layout``.

    ``num_runs`` (the frames of a video) picks a layout's own segments for a one-frame video where it has them
    (``longllava-chat``); a video-only layout's images are laid out like its family's (``longllava``).
    """
    name = as_token_layout(layout).name
    if kind == "image":
        return _IMAGE_SEGMENTS["longllava" if name == "longllava-chat" else name]
    if kind == "video":
        start, between, end = _VIDEO_SEGMENTS[name]
        if num_runs == 1 and name in _SINGLE_RUN_VIDEO_SEGMENTS:
            start, end = _SINGLE_RUN_VIDEO_SEGMENTS[name]
        return start, between, end
    raise ValueError(f"kind must be 'image' or 'video', got {kind!r}.")


def all_layout_segments(layout: str | TokenLayout, kind: str) -> list[tuple[str, str, str]]:
    """Every (start, between, end) triple ``layout`` can write for ``kind``: the general one, then any one-run
    variant (the processor measures the token cost of each)."""
    triples = [layout_segments(layout, kind)]
    single = layout_segments(layout, kind, num_runs=1)
    return triples + ([single] if single != triples[0] else [])


def _check_runs(runs: Any) -> list[int]:
    runs = list(runs)
    if not runs or any(isinstance(r, bool) or not isinstance(r, Integral) or r < 1 for r in runs):
        raise ValueError(f"runs must be a non-empty list of positive token counts, got {runs!r}.")
    return [int(r) for r in runs]


def layout_pieces(layout: str | TokenLayout, kind: str, runs: Any) -> list[str | int]:
    """One image's or video's expansion in prompt order: text segments (str) and runs of placeholder tokens (int).

    The model fills the placeholder positions with features in order, so the runs must follow the order of the
    features: for a video one run per frame; for an image all its tokens in one run, except a ``longllava`` AnyRes
    image, whose runs are the global view and then each tile row (the model's ``anyres_merge="flat"`` packing).
    """
    runs = _check_runs(runs)
    start, between, end = layout_segments(layout, kind, len(runs))
    pieces: list[str | int] = [start] if start else []
    for index, run in enumerate(runs):
        if index and between:
            pieces.append(between)
        if pieces and isinstance(pieces[-1], int):
            pieces[-1] += run
        else:
            pieces.append(run)
    if end:
        pieces.append(end)
    return pieces


def count_layout_tokens(
    layout: str | TokenLayout, kind: str, runs: Any, include_markers: bool = True
) -> int:
    """Tokens of one image's or video's expansion (:func:`layout_pieces`), with or without the layout's markers.

    Without markers this is the number of placeholder tokens, i.e. the features the model produces for it.
    """
    runs = _check_runs(runs)
    return sum(runs) + (_marker_tokens(as_token_layout(layout), kind, len(runs)) if include_markers else 0)


def _marker_tokens(layout: TokenLayout, kind: str, num_runs: int) -> int:
    """Tokens of the text segments around and between `num_runs` runs of one image or video."""
    start, between, end = layout_segments(layout, kind, num_runs)
    return sum(times * layout.cost(segment) for segment, times in ((start, 1), (between, num_runs - 1), (end, 1))
               if segment and times)


# ---------------------------------------------------------------------------------------------------------------
# Layouts against a tokenizer: what each marker segment costs, and the single-token checks.
# ---------------------------------------------------------------------------------------------------------------


def measure_token_layout(tokenizer: Any, layout: str, kind: str, markers: str, placeholder: str | None) -> TokenLayout:
    """The layout with the token cost of each of its text segments measured where it sits, next to placeholder
    tokens (the tokenizer splits text at special tokens, so that is exactly what the expansion costs on its own).

    With `markers="special"` (and always for qwen2vl, whose markers every Qwen2-VL tokenizer has) each marker must be
    one token of the tokenizer.
    """
    name = canonical_layout(layout)
    if name == "longllava-chat" and markers != "text":
        raise ValueError(
            "HybridVLMProcessor: the 'longllava-chat' video layout reproduces LongLLaVA's chat prompt, whose markers "
            "are plain text (and one of them, '</img', is cut short); use it with layout_markers='text', or use the "
            "'longllava' layout for special-token markers."
        )
    if markers == "special" or name == "qwen2vl":
        for marker in LAYOUT_MARKERS[name]:
            try:
                single_token_id(tokenizer, marker, f"a marker of the {name!r} {kind} layout")
            except ValueError as error:
                hint = ""
                if name == "longllava":
                    hint = " (A converted LongLLaVA checkpoint, whose markers were plain text: layout_markers='text'.)"
                raise ValueError(f"{error}{hint}") from None
    if placeholder is None:  # no placeholder token to measure against: videos are refused later anyway
        return TokenLayout(name, markers)
    costs: dict[str, int] = {}
    for segments in all_layout_segments(name, kind):
        for segment, text in zip(segments, ("{s}{p}", "{p}{s}{p}", "{p}{s}")):
            if segment and segment not in costs:
                probe = text.format(s=segment, p=placeholder)
                costs[segment] = len(tokenizer.encode(probe, add_special_tokens=False)) - probe.count(placeholder)
    return TokenLayout(name, markers, tuple(costs.items()))


def token_id_or_none(tokenizer: Any, token: str) -> int | None:
    """The id of `token`, or None when the tokenizer does not know it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def single_token_id(tokenizer: Any, token: str, role: str) -> int:
    """The id of `token`, which must be one never-split token of the tokenizer (a special token)."""
    token_id = token_id_or_none(tokenizer, token)
    if token_id is None:
        raise ValueError(
            f"HybridVLMProcessor: the tokenizer does not know {token!r} ({role}). Add it as a special token "
            "(tokenizer.add_special_tokens) and resize the model's embeddings."
        )
    if tokenizer.encode(token, add_special_tokens=False) != [token_id]:
        raise ValueError(
            f"HybridVLMProcessor: the tokenizer splits {token!r} ({role}) into several tokens; make it special."
        )
    return token_id


def capped_feature_size(height: int, width: int, max_tiles: int | None, view_tokens: int) -> tuple[int, int]:
    """LLaVA-OneVision's anyres_max_N cap of an un-padded (height, width) tile feature map.

    When the map holds more than 1.1x the tokens of `max_tiles` views (`view_tokens` each), it is scaled down by the
    square root of that factor, each side floored, exactly as the reference packing computes it.
    """
    if max_tiles is None:
        return height, width
    ratio = math.sqrt(height * width / (max_tiles * view_tokens))
    if ratio > 1.1:
        return int(height // ratio), int(width // ratio)
    return height, width


def video_frame_tokens(spec: VisualTokenSpec, height: int, width: int) -> int:
    """Features one video frame of `height` x `width` pixels (as fed to the encoder) becomes."""
    if spec.video_pool_stride is None:
        return count_image_tokens(spec, height, width)
    grid_h, grid_w = height // spec.patch_size, width // spec.patch_size
    count_image_tokens(spec, height, width)  # the same size checks as for images
    stride = spec.video_pool_stride
    return math.ceil(grid_h / stride) * math.ceil(grid_w / stride) * spec.num_maps


def video_groups(spec: VisualTokenSpec, num_frames: int) -> int:
    """Token grids a video of `num_frames` frames gets: one per frame, or per temporal patch of frames."""
    patch = spec.video_temporal_patch
    if num_frames % patch:
        raise ValueError(
            f"This model encodes {patch} consecutive frames together (Qwen2-VL's temporal patches), so a video needs a "
            f"multiple of {patch} frames, got {num_frames}; set the video processor's temporal_patch_size={patch}."
        )
    return num_frames // patch


def video_runs(spec: VisualTokenSpec, num_frames: int, height: int, width: int) -> list[int]:
    """Video tokens per frame (per temporal patch of frames), in order; the last run also holds the video's newline
    when there is one."""
    runs = [video_frame_tokens(spec, height, width)] * video_groups(spec, int(num_frames))
    if spec.video_newline and runs:
        runs[-1] += 1
    return runs


def count_video_tokens(
    spec: VisualTokenSpec,
    num_frames: int,
    height: int,
    width: int,
    layout: str | TokenLayout = "plain",
    include_markers: bool = True,
) -> int:
    """Number of LM tokens one video of `num_frames` frames of `height` x `width` pixels (as fed to the encoder) is.

    Every frame is encoded like an image, so the feature count is `num_frames * count_image_tokens(...)`: that is what
    the model scatters into the video-token positions, and what `include_markers=False` returns for any layout. With
    `include_markers=True` (the default) the layout's markers are added, i.e. the length of the whole expansion of one
    `<video>` placeholder (:func:`layout_pieces`): `longllava` adds `<vid>`, `</vid>`, `<img>`/`</img>` per frame and
    a `<t>` between consecutive frames (3 * num_frames + 1 special tokens); `qwen2vl` adds its two vision markers;
    `llava` ("plain") none. The processor uses both numbers, the model the first.
    """
    token_layout = as_token_layout(layout) if not isinstance(layout, str) or layout in VIDEO_LAYOUTS else None
    if token_layout is None:
        raise ValueError(f"Unknown video layout {layout!r}; use one of {list(VIDEO_LAYOUTS)}.")
    if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1:
        raise ValueError(f"A video needs at least one frame, got num_frames={num_frames!r}.")
    groups = video_groups(spec, int(num_frames))
    features = groups * video_frame_tokens(spec, height, width) + int(spec.video_newline)
    if not include_markers:
        return features
    # count_layout_tokens without building a list of runs: token budgets search over large frame counts
    return features + _marker_tokens(token_layout, "video", groups)
