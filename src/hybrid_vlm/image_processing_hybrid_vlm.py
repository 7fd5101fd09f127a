"""Image processor for hybrid_vlm: one resolution, or AnyRes (a global view plus encoder-sized tiles).

Built on transformers' ``BaseImageProcessor`` (present with the same role on 4.57 and 5.x) with its own
``preprocess`` pipeline, so that the behaviour is identical on both lines and never needs torchvision.
The pixel operations themselves (resize, center crop, rescale, normalize, channel reordering) are
transformers' NumPy/PIL functions, so outputs match CLIP's and SigLIP's own PIL processors.

AnyRes (LLaVA-NeXT's pinpoints or MMJamba's "at most N tiles") uses the grid choice and tiling of ``anyres.py``,
the module the model's feature packing and the token count also come from.
"""

import copy
import io
import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature, get_size_dict
from transformers.image_transforms import center_crop, normalize, rescale, resize, to_channel_dimension_format
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .anyres import AnyResLayout, best_grid, check_max_tiles, fit_size, pad_to, split_tiles
from .config_options import check_pinpoints
from .model_types import COMPOSITE_VISION_TYPES, QWEN2VL_VISION_MODEL_TYPES, VISION_ENCODER_TYPES, ImagePreset

# Not used here: transformers 4.57 copies only an entry module's *direct* relative imports when it loads a local folder
# with trust_remote_code, so every module anyres.py needs must be imported by this file too.
from .token_counts import count_image_tokens  # noqa: F401

logger = logging.get_logger(__name__)

_NAME = "HybridVLMImageProcessor"
_EXIF_ORIENTATION = 0x0112
# PIL modes that carry an alpha channel (straight or premultiplied); all are composited over white.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
# Standard ImagesKwargs that a ProcessorMixin may forward but that mean nothing for a fixed-size output.
_IGNORED_CALL_KWARGS = {"do_pad", "pad_size", "default_to_square", "device", "disable_grouping", "image_seq_length"}
# `image_aspect_ratio` values: None keeps the aspect ratio to the resize/crop steps; "pad" first pads the image to a
# centred square with the mean colour (LLaVA's `expand2square`, LongLLaVA's `image_aspect_ratio="pad"`).
ASPECT_RATIO_MODES: tuple[str | None, ...] = (None, "pad")
# Keys transformers itself puts into saved image processor configs (its base __init__ handles the last three).
_SERVICE_INIT_KWARGS = {"image_processor_type", "auto_map", "processor_class", "feature_extractor_type"}


class HybridVLMImageProcessorKwargs(ImagesKwargs, total=False):
    """Per-call keyword arguments; transformers 5 reads this TypedDict to route and validate processor kwargs.

    ``do_convert_rgb`` is not part of ``ImagesKwargs`` on transformers 4.57, hence declared here, as are the AnyRes
    keys: ``anyres`` (on/off), ``max_tiles`` (MMJamba's policy) and ``image_grid_pinpoints`` (LLaVA-NeXT's).
    """

    do_convert_rgb: bool | None
    image_aspect_ratio: str | None
    anyres: bool | None
    max_tiles: int | None
    image_grid_pinpoints: list[list[int]] | None


def _resample_from_any(value: Any) -> PILImageResampling:
    """Accept an enum, its int value or its name ("bicubic"), so configs and callers can use any of them."""
    if isinstance(value, str):
        try:
            return PILImageResampling[value.strip().upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in PILImageResampling)
            raise ValueError(f"{_NAME}: unknown resample {value!r}; use one of: {names}.") from None
    try:
        return PILImageResampling(int(value))
    except (TypeError, ValueError):
        raise ValueError(
            f"{_NAME}: resample must be a PILImageResampling, its int value or its name, got {value!r}."
        ) from None


# Qwen2-VL's dynamic resolution: ``size={"min_pixels": a, "max_pixels": b}`` (and the side multiple ``factor``).
_SMART_KEYS = frozenset({"min_pixels", "max_pixels"})
SMART_RESIZE_FACTOR = 28  # Qwen2-VL's patch 14 x merge 2


_EDGE_KEYS = frozenset({"shortest_edge", "longest_edge"})


def is_smart_size(size: Any) -> bool:
    """True for the ``{"min_pixels", "max_pixels"[, "factor"][, "shortest_edge", "longest_edge"]}`` size form
    (Qwen2-VL's dynamic resolution, optionally after Vamba's edge limits)."""
    if not isinstance(size, dict) or not _SMART_KEYS <= set(size) <= _SMART_KEYS | _EDGE_KEYS | {"factor"}:
        return False
    return len(_EDGE_KEYS & set(size)) in (0, 2)


def edge_limited_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """Vamba's chat loader resize, before its processor: the longer side capped at ``longest_edge`` (the other side
    scaled by the aspect ratio and truncated), then each side raised to at least ``shortest_edge``."""
    aspect = width / height
    if width >= height and width > longest_edge:
        width, height = longest_edge, int(longest_edge / aspect)
    elif height > width and height > longest_edge:
        height, width = longest_edge, int(longest_edge * aspect)
    return max(height, shortest_edge), max(width, shortest_edge)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's `smart_resize`: sides rounded to multiples of ``factor`` (Python's round, half to even), then scaled
    so the area lies in ``[min_pixels, max_pixels]``, keeping the aspect ratio as closely as possible.

    Images with a side under ``factor`` or an aspect ratio over 200 are refused, as Qwen2-VL refuses them.
    """
    if height < factor or width < factor:
        raise ValueError(
            f"{_NAME}: a {height}x{width} image is smaller than {factor} px on a side, which Qwen2-VL's dynamic "
            f"resolution cannot take; upscale it to at least {factor}x{factor} first."
        )
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"{_NAME}: a {height}x{width} image has an aspect ratio over 200; crop or pad it first.")
    new_height, new_width = round(height / factor) * factor, round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_height = math.floor(height / beta / factor) * factor
        new_width = math.floor(width / beta / factor) * factor
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_height, new_width


def _smart_size_dict(size: dict[str, Any]) -> dict[str, int]:
    out = {"factor": SMART_RESIZE_FACTOR, **size}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{_NAME}: size[{key!r}] must be a positive int, got {value!r}.")
    out = {key: int(value) for key, value in out.items()}
    if out["min_pixels"] > out["max_pixels"]:
        raise ValueError(f"{_NAME}: size['min_pixels'] ({out['min_pixels']}) exceeds size['max_pixels'].")
    if "longest_edge" in out and out["shortest_edge"] > out["longest_edge"]:
        raise ValueError(f"{_NAME}: size['shortest_edge'] ({out['shortest_edge']}) exceeds size['longest_edge'].")
    return out


def _size_dict(size: Any, param_name: str) -> dict[str, int]:
    """Normalise ``size``/``crop_size`` to one of the supported dict forms, with a clear error otherwise."""
    if param_name == "size" and is_smart_size(size):
        return _smart_size_dict(size)
    if param_name == "size":
        # An int means "shortest edge" (CLIP convention); a (height, width) pair means an exact size.
        size = get_size_dict(size, default_to_square=False, param_name=param_name)
        allowed = ({"shortest_edge"}, {"height", "width"})
    else:
        size = get_size_dict(size, default_to_square=True, param_name=param_name)
        allowed = ({"height", "width"},)
    if set(size) not in [set(a) for a in allowed]:
        forms = " or ".join(str(sorted(a)) for a in allowed)
        raise ValueError(f"{_NAME}: {param_name} must have the keys {forms}, got {dict(size)}.")
    out = {}
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{_NAME}: {param_name}[{key!r}] must be a positive int, got {value!r}.")
        out[key] = int(value)
    return out


def _derived_crop_size(size: dict[str, int]) -> dict[str, int]:
    """Crop that keeps a ``size`` result intact: a square of the shortest edge, or the exact size itself."""
    if "min_pixels" in size:  # no crop goes with a dynamic resolution; a placeholder of one token's size
        return {"height": size["factor"], "width": size["factor"]}
    if "shortest_edge" in size:
        return {"height": size["shortest_edge"], "width": size["shortest_edge"]}
    return {"height": size["height"], "width": size["width"]}


def _channel_stats(value: Any, name: str) -> list[float] | list[list[float]]:
    """Mean/std as a list of three floats (a scalar is broadcast), so configs save as plain JSON.

    A list of triples is one normalisation per vision encoder (several encoders): the output then has one
    normalised RGB copy per encoder, stacked on the channel axis.
    """
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [_channel_stats(v, name) for v in value]
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        values = [float(value)] * 3
    elif isinstance(value, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(value, str):
        values = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    else:
        raise TypeError(f"{_NAME}: {name} must be a float or three floats, got {value!r}.")
    if len(values) != 3:
        raise ValueError(f"{_NAME}: {name} must have 3 values (one per RGB channel), got {len(values)}: {values}.")
    if name == "image_std" and any(v == 0 for v in values):
        raise ValueError(f"{_NAME}: image_std must not contain zeros, got {values}.")
    return values


def pad_color(image_mean: Sequence[float], mode: str | None = "RGB") -> tuple[int, int, int]:
    """The fill colour of ``image_aspect_ratio="pad"`` for an input of PIL ``mode`` (None: an array or tensor).

    LLaVA's rule: each mean truncated to the 0..255 scale, ``int(m * 255)`` (CLIP's mean gives RGB (122, 116, 104)).
    It fills in the input's own mode, before the conversion to RGB, and with one number ``int(mean[0] * 255)`` when
    that mode is not RGB: a grayscale image (with or without alpha) gets that gray, an RGBA image red only (the
    number fills the first band, and the conversion drops the border's zero alpha).
    """
    first = int(float(image_mean[0]) * 255)
    if mode in ("L", "LA", "La"):
        return first, first, first
    if mode in ("RGBA", "RGBa"):
        return first, 0, 0
    r, g, b = (int(float(m) * 255) for m in image_mean)
    return r, g, b


def _source_mode(image: Any) -> str | None:
    """The PIL mode an input arrives in (a file is opened lazily, header only); None for arrays and tensors."""
    if isinstance(image, PIL.Image.Image):
        return image.mode
    if isinstance(image, (str, os.PathLike)):
        try:
            with PIL.Image.open(image) as opened:
                return opened.mode
        except OSError:
            return None  # the loader reports unreadable files
    return None


def expand_to_square(image: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """Pad an (H, W, C) image to a square of its longer side, the image centred (offset rounded down), the border in
    ``color``; a square image is returned as it is."""
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    out = np.empty((side, side, image.shape[2]), dtype=image.dtype)
    out[...] = np.asarray(color, dtype=image.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out


def _resize_target(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """Output (height, width) of the resize step; the one copy of this arithmetic (CLIP's truncation rule)."""
    if "min_pixels" in size:
        if "longest_edge" in size:
            height, width = edge_limited_size(height, width, size["shortest_edge"], size["longest_edge"])
        return smart_resize(height, width, size["factor"], size["min_pixels"], size["max_pixels"])
    if "shortest_edge" in size:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return size["height"], size["width"]


def _to_pixel_scale(array: np.ndarray, what: str, pil_mode: str | None = None) -> np.ndarray:
    """Bring any dtype to the 0..255 scale (uint8 kept as is, everything else float32).

    Doing this once at input time means ``do_rescale`` always means "divide 0..255 pixels by 255": a float image in
    [0, 1] is not rescaled twice, and 16-bit data is scaled down instead of clipped at 255.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16 or pil_mode in _SIXTEEN_BIT_MODES:
        return (array.astype(np.float32) / 257.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        if pil_mode == "I" and low >= 0 and high <= 65535:
            # 32-bit "I" images mostly come from 16-bit files (older Pillow opens 16-bit PNGs this way).
            return (array.astype(np.float32) / 257.0).astype(np.float32)
        raise ValueError(
            f"{_NAME}: {what} has integer values in [{low}, {high}], outside [0, 255]. Pass 8-bit data as uint8, "
            "16-bit data as uint16, or floats in [0, 1]."
        )
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{_NAME}: {what} contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return array * np.float32(255.0)
        if low >= 0.0 and high <= 255.0:
            return array
        raise ValueError(
            f"{_NAME}: {what} has float values in [{low:.4g}, {high:.4g}]; expected [0, 1] or [0, 255]. "
            "Images that are already normalized must be un-normalized first (or skip this processor)."
        )
    raise TypeError(f"{_NAME}: {what} has unsupported dtype {array.dtype}; use uint8, uint16 or float.")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend straight-alpha RGBA over a white background, as a viewer would show it (not just drop alpha)."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    if rgba.dtype == np.uint8:
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return rgb.astype(np.float32)


def _pil_to_rgb_array(image: PIL.Image.Image, what: str, do_convert_rgb: bool) -> np.ndarray:
    """PIL image -> (H, W, C) array on the 0..255 scale, converting colour modes correctly when asked to."""
    mode = image.mode
    if not do_convert_rgb:
        return _to_pixel_scale(np.asarray(image), what, pil_mode=mode)
    try:
        if mode == "RGB":
            return np.asarray(image)
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
            return _composite_on_white(np.asarray(image.convert("RGBA")))
        if mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
            gray = _to_pixel_scale(np.asarray(image), what, pil_mode=mode)
            return np.repeat(gray[..., None], 3, axis=-1)
        # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversions are correct for these.
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{_NAME}: could not convert {what} (PIL mode {mode!r}) to RGB: {err}") from err


def _exif_transpose(image: PIL.Image.Image, what: str) -> PIL.Image.Image:
    """Apply the EXIF orientation so the model sees what a viewer shows; a broken EXIF block is ignored."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
            return image
        return PIL.ImageOps.exif_transpose(image)
    except Exception as err:  # noqa: BLE001 - corrupt EXIF must not make an otherwise good image unusable
        logger.warning(f"{_NAME}: ignoring unreadable EXIF orientation of {what}: {err}")
        return image


def _channel_format(array: np.ndarray, what: str, prefer: ChannelDimension) -> ChannelDimension:
    """Find the channel axis of a 3-D array. Ties go to an axis of size 3, then to the container's convention."""
    first, last = array.shape[0], array.shape[-1]
    candidates = [fmt for fmt, n in ((ChannelDimension.FIRST, first), (ChannelDimension.LAST, last)) if n in (1, 3, 4)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) == 2:
        if (first == 3) != (last == 3):
            return ChannelDimension.FIRST if first == 3 else ChannelDimension.LAST
        return prefer
    if 2 in (first, last):
        raise ValueError(
            f"{_NAME}: {what} has 2 channels (shape {tuple(array.shape)}), which is ambiguous (gray + alpha?). "
            "Convert it to RGB, or to a PIL image of mode 'LA', before calling the processor."
        )
    raise ValueError(
        f"{_NAME}: cannot find the channel axis of {what} (shape {tuple(array.shape)}); expected (H, W, C) or "
        "(C, H, W) with C in 1, 3 or 4, or pass input_data_format='channels_first'/'channels_last'."
    )


def _array_to_rgb_array(
    array: np.ndarray,
    what: str,
    do_convert_rgb: bool,
    input_data_format: ChannelDimension | None,
    prefer: ChannelDimension,
) -> np.ndarray:
    """NumPy image (H, W), (H, W, C) or (C, H, W) -> (H, W, C) array on the 0..255 scale."""
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        fmt = input_data_format or _channel_format(array, what, prefer)
        if fmt == ChannelDimension.FIRST:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"{_NAME}: {what} has {array.ndim} dimensions (shape {tuple(array.shape)}); an image must have 2 or 3 "
            "(a 4-D array is read as a batch of images)."
        )
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(
            f"{_NAME}: {what} has {channels} channels (shape {tuple(array.shape)}); expected 1 (gray), 3 (RGB) "
            "or 4 (RGBA). Convert it to RGB first."
        )
    array = _to_pixel_scale(array, what)
    if channels == 3 or not do_convert_rgb:
        return array
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    return _composite_on_white(array)


# Square side the image processor gives Qwen2-VL's vision tower by default (a multiple of its 28 px token).
QWEN2VL_DEFAULT_IMAGE_SIZE = VISION_ENCODER_TYPES["qwen2_vl_vision"].preprocessing.size


def _preset_params(preset: ImagePreset, height: int, width: int) -> dict[str, Any]:
    """The processor parameters that reproduce an encoder's own preprocessing at a `height` x `width` input."""
    params: dict[str, Any] = {"crop_size": {"height": height, "width": width}}
    if preset.resize == "squash":  # the whole image to the input size: no aspect-preserving resize, no crop
        params.update(size={"height": height, "width": width}, do_center_crop=False)
    else:
        params.update(size={"shortest_edge": min(height, width)}, do_center_crop=True)
    params.update(image_mean=list(preset.image_mean), image_std=list(preset.image_std))
    params.update(resample=PILImageResampling[preset.resample.upper()], do_resize=True, do_rescale=True)
    params.update(do_normalize=True, rescale_factor=1 / 255, do_convert_rgb=True)
    return params


def _vision_part_of(config: Any) -> Any:
    """A config dict/object, or the vision part of a composite CLIP/SigLIP config."""
    if isinstance(config, dict):
        return type("_ConfigView", (), {"model_type": config.get("model_type")})()
    inner = getattr(config, "vision_config", None)
    return inner if getattr(config, "model_type", None) in COMPOSITE_VISION_TYPES and inner is not None else config


class HybridVLMImageProcessor(BaseImageProcessor):
    r"""Resize (shortest edge or exact size), center crop, rescale and normalize images; optionally AnyRes tiling.

    Accepts PIL images, NumPy arrays (HWC or CHW, uint8, uint16 or float) and torch tensors, alone, as a list, or as
    a list of lists (one per sample). PIL images are EXIF-transposed and converted to RGB with alpha composited on
    white and 16-bit data scaled (not clipped). Returns ``pixel_values`` (num_images, 3, H, W) float32 and
    ``image_sizes`` (num_images, 2), the original (height, width) after EXIF transpose.

    AnyRes mode (``anyres=True``) turns each image into views of the encoder's input size (the view size is
    ``crop_size`` with center cropping on, else the exact ``size``): the whole image resized to the view size (the
    global view) first, then the tiles of the best grid, row by row (the image resized into the grid keeping its
    aspect ratio, centered on zero padding, as LLaVA-NeXT does). It returns ``pixel_values`` (num_images, max_views, 3,
    H, W), zero-filled past each image's own views, ``image_sizes``, ``image_grids`` (num_images, 2) = (rows, cols) of
    tiles, and ``num_patches`` (num_images,) = real views per image (global view + rows * cols), LLaVA-NeXT's name.

    Args:
        do_resize: resize before cropping.
        size: ``{"shortest_edge": N}`` (aspect-preserving, CLIP/DINOv2), ``{"height": H, "width": W}`` (exact,
            SigLIP) or ``{"min_pixels": a, "max_pixels": b}`` (Qwen2-VL's dynamic resolution, `smart_resize`; sides
            become multiples of ``factor``, 28 unless given, and images of different sizes cannot share one call).
            Adding ``"shortest_edge"`` and ``"longest_edge"`` to that form first resizes as Vamba's chat loader does
            with its ``img_shortest_edge`` / ``img_longest_edge`` (`edge_limited_size`, bicubic).
            An int means shortest edge, a (height, width) pair an exact size.
        resample: PIL filter, as an enum, its int value or its name.
        do_center_crop: center crop after resizing.
        crop_size: ``{"height": H, "width": W}``; ``None`` derives it from ``size`` (the square of the shortest edge,
            or ``size`` itself). The same rule applies when a call overrides ``size`` but not ``crop_size``.
        do_rescale: multiply 0..255 pixels by ``rescale_factor``.
        rescale_factor: the rescale factor.
        do_normalize: subtract ``image_mean`` and divide by ``image_std`` per channel.
        image_mean: per-channel mean (CLIP's by default).
        image_std: per-channel std (CLIP's by default).
        do_convert_rgb: convert every input to 3-channel RGB; with ``False`` inputs must already be RGB.
        image_aspect_ratio: ``None`` (default): the image goes to resize/crop as it is. ``"pad"``: it is first padded
            to a centred square with the colour ``int(m * 255)`` of each ``image_mean`` entry, so nothing is cropped
            away (LLaVA's and LongLLaVA's ``image_aspect_ratio="pad"``). Single-resolution mode only.
        anyres: AnyRes tiling on or off. ``None`` (default) turns it on exactly when a grid policy is given.
        max_tiles: MMJamba's policy: every grid with 1..max_tiles tiles, the closest aspect ratio wins.
        image_grid_pinpoints: LLaVA-NeXT's policy: allowed [height, width] resolutions, multiples of the view size.
            Give one policy. Either can be overridden per call (``max_tiles=64`` on a model trained with 4 tiles:
            "train short, infer long"); a policy given per call replaces the stored one for that call.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values"]
    valid_kwargs = HybridVLMImageProcessorKwargs
    # Parameters saved in preprocessor_config.json and overridable per call; AnyRes appends its own.
    _param_names: ClassVar[tuple[str, ...]] = (
        "do_resize",
        "size",
        "resample",
        "do_center_crop",
        "crop_size",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_convert_rgb",
        "anyres",
        "max_tiles",
        "image_grid_pinpoints",
        "image_aspect_ratio",
    )

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | tuple[int, int] | None = None,
        resample: PILImageResampling | int | str = PILImageResampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | tuple[int, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool = True,
        anyres: bool | None = None,
        max_tiles: int | None = None,
        image_grid_pinpoints: list[list[int]] | None = None,
        image_aspect_ratio: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)  # to_dict writes the class name itself
        unknown = sorted(k for k in kwargs if k not in ImagesKwargs.__annotations__ and k not in _SERVICE_INIT_KWARGS)
        if unknown:
            logger.warning(f"{_NAME}: unrecognised init arguments {unknown} are stored but unused.")
        super().__init__(**kwargs)
        params = self._resolve_params(
            {
                "do_resize": do_resize,
                "size": {"shortest_edge": 224} if size is None else size,
                "resample": resample,
                "do_center_crop": do_center_crop,
                "crop_size": crop_size,
                "do_rescale": do_rescale,
                "rescale_factor": rescale_factor,
                "do_normalize": do_normalize,
                "image_mean": OPENAI_CLIP_MEAN if image_mean is None else image_mean,
                "image_std": OPENAI_CLIP_STD if image_std is None else image_std,
                "do_convert_rgb": do_convert_rgb,
                "anyres": anyres,
                "max_tiles": max_tiles,
                "image_grid_pinpoints": image_grid_pinpoints,
                "image_aspect_ratio": image_aspect_ratio,
            },
            base=None,
        )
        for name, value in params.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_vision_config(cls, vision_config: Any, **kwargs: Any) -> "HybridVLMImageProcessor":
        """Build the processor a vision encoder expects, from its transformers config.

        CLIP: shortest edge = ``image_size`` + center crop, CLIP mean/std. SigLIP: exact ``image_size`` square, no
        crop, mean/std 0.5. DINOv2: shortest edge = crop = ``image_size`` (not DINOv2's own 256 -> 224), ImageNet
        mean/std. All bicubic. A full CLIP/SigLIP config uses its ``vision_config``; a list of encoders is accepted
        when they all need the same preprocessing. ``kwargs`` override any derived parameter.
        """
        if isinstance(vision_config, (list, tuple)):
            if not vision_config:
                raise ValueError(f"{_NAME}.from_vision_config: got an empty list of vision configs.")
            built = [cls.from_vision_config(c, **kwargs) for c in vision_config]
            if len(built) == 1:
                return built[0]
            stats = ("image_mean", "image_std")
            # DINOv2 interpolates its position embeddings: it takes the size the other encoders need.
            rows = [VISION_ENCODER_TYPES.get(getattr(_vision_part_of(c), "model_type", None)) for c in vision_config]
            fixed = [b for b, r in zip(built, rows) if not (r and r.interpolates_position_embeddings)] or built
            views = {cls._view_size({k: getattr(b, k) for k in cls._param_names}) for b in fixed}
            if len(views) != 1:
                raise ValueError(
                    f"{_NAME}.from_vision_config: the vision encoders expect different input sizes {sorted(views)}; "
                    "several encoders see one picture, so give them the same image_size."
                )
            # One geometry for all encoders (their patch grids must line up), each with its own mean/std (output
            # channels 3i..3i+2). Where the encoders' own processors differ in geometry (DINOv2: resize + crop,
            # SigLIP: squash), the squash wins, as in Prismatic's "resize-naive" used by Cobra and MambaVLM.
            squash = [b for b in fixed if not b.do_center_crop]
            geometry = squash[0] if squash else fixed[0]
            params = {k: getattr(geometry, k) for k in cls._param_names}
            params.update({k: [getattr(b, k) for b in built] for k in stats})
            params.update({k: v for k, v in kwargs.items() if k in stats})
            return cls(**params)
        if isinstance(vision_config, dict):
            qwen2vl_type = vision_config.get("model_type")
        else:
            qwen2vl_type = getattr(vision_config, "model_type", None)
        if qwen2vl_type in QWEN2VL_VISION_MODEL_TYPES:
            # Qwen2-VL's tower takes any size whose sides are multiples of 28 (patch 14 x merge 2); the processor
            # squashes to a fixed square (its preset's size; change it with size=).
            preset = VISION_ENCODER_TYPES[qwen2vl_type].preprocessing
            params = _preset_params(preset, preset.size, preset.size)
            params.update(kwargs)
            return cls(**params)
        if isinstance(vision_config, dict):
            from transformers import AutoConfig

            if "model_type" not in vision_config:
                raise ValueError(f"{_NAME}.from_vision_config: a config dict needs a 'model_type' key.")
            config_dict = dict(vision_config)
            vision_config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        model_type = getattr(vision_config, "model_type", None)
        if model_type in COMPOSITE_VISION_TYPES and getattr(vision_config, "vision_config", None) is not None:
            vision_config = vision_config.vision_config
            model_type = vision_config.model_type
        supported = [t for t, row in VISION_ENCODER_TYPES.items() if row.preprocessing.size is None]
        if model_type not in supported:
            raise ValueError(
                f"{_NAME}.from_vision_config: no preset for vision config model_type {model_type!r}; supported: "
                f"{', '.join(supported)} (or full {'/'.join(COMPOSITE_VISION_TYPES)} configs). Construct "
                "HybridVLMImageProcessor(...) with explicit parameters instead."
            )
        image_size = getattr(vision_config, "image_size", None)
        if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
            height, width = int(image_size[0]), int(image_size[1])
        elif isinstance(image_size, int) and image_size > 0:
            height = width = image_size
        else:
            raise ValueError(
                f"{_NAME}.from_vision_config: the vision config has no usable image_size ({image_size!r})."
            )
        params = _preset_params(VISION_ENCODER_TYPES[model_type].preprocessing, height, width)
        params.update(kwargs)
        return cls(**params)

    # ------------------------------------------------------------------ parameters

    def _resolve_params(self, overrides: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
        """Merge overrides into ``base`` (the stored parameters) and validate/normalise every value.

        ``None`` means "not overridden", as in transformers. When ``size`` changes without ``crop_size``, the crop is
        re-derived from the new size so the output has the size that was asked for.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        params = dict(base or {})
        params.update(given)
        out: dict[str, Any] = {}
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            value = params.get(name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{_NAME}: {name} must be True or False, got {value!r}.")
            out[name] = bool(value)
        out["size"] = _size_dict(params["size"], "size")
        crop = params.get("crop_size")
        if crop is None or ("size" in given and "crop_size" not in given):
            crop = _derived_crop_size(out["size"])
        out["crop_size"] = _size_dict(crop, "crop_size")
        out["resample"] = _resample_from_any(params["resample"])
        factor = params["rescale_factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float, np.floating)) or not factor > 0:
            raise ValueError(f"{_NAME}: rescale_factor must be a positive number, got {factor!r}.")
        out["rescale_factor"] = float(factor)
        out["image_mean"] = _channel_stats(params["image_mean"], "image_mean")
        out["image_std"] = _channel_stats(params["image_std"], "image_std")
        if "min_pixels" in out["size"] and out["do_center_crop"]:
            raise ValueError(
                f"{_NAME}: size={out['size']} (dynamic resolution) gives images of varying size, which a center crop "
                "would undo; set do_center_crop=False."
            )
        out.update(self._resolve_anyres(params, given, stored=base))
        out["image_aspect_ratio"] = self._resolve_aspect_ratio(params.get("image_aspect_ratio"), out)
        if out["anyres"]:
            view_size = self._view_size(out)
            if out["image_grid_pinpoints"] is not None:
                check_pinpoints(out["image_grid_pinpoints"], view_size)
        # Parameters added by subclasses pass through unchanged unless their own code validates them.
        for name in self._param_names:
            if name not in out:
                out[name] = params.get(name)
        return out

    @staticmethod
    def _resolve_aspect_ratio(value: Any, params: dict[str, Any]) -> str | None:
        """Validate ``image_aspect_ratio``; "pad" needs one mean colour and no AnyRes tiling."""
        if value in ("", "none", "None"):
            value = None
        if value not in ASPECT_RATIO_MODES:
            raise ValueError(
                f"{_NAME}: unknown image_aspect_ratio {value!r}; use None (resize/crop as is) or 'pad' (pad to a "
                "square with the mean colour first)."
            )
        if value == "pad":
            if params["anyres"]:
                raise ValueError(
                    f"{_NAME}: image_aspect_ratio='pad' is for single-resolution images; AnyRes tiles an image by "
                    "its own aspect ratio. Use one of the two (anyres=False, or image_aspect_ratio=None)."
                )
            if isinstance(params["image_mean"][0], list):
                raise ValueError(
                    f"{_NAME}: image_aspect_ratio='pad' needs one image_mean to take the padding colour from; this "
                    "processor has one per vision encoder."
                )
        return value

    @staticmethod
    def _resolve_anyres(params: dict[str, Any], given: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
        """Validate the AnyRes settings; a grid policy given for this call replaces the stored one.

        At construction (``stored`` is None) ``anyres=None`` means "on when a policy is given". Per call, a policy
        on a processor whose AnyRes is off is an error rather than a silent switch: the model must expect tiles.
        """
        max_tiles, pinpoints = params.get("max_tiles"), params.get("image_grid_pinpoints")
        if stored is not None:
            if "max_tiles" in given and "image_grid_pinpoints" not in given:
                pinpoints = None
            elif "image_grid_pinpoints" in given and "max_tiles" not in given:
                max_tiles = None
        if max_tiles is not None and pinpoints is not None:
            raise ValueError(
                f"{_NAME}: give one AnyRes grid policy, max_tiles (MMJamba) or image_grid_pinpoints (LLaVA-NeXT), "
                f"not both (got max_tiles={max_tiles!r}, image_grid_pinpoints={pinpoints!r})."
            )
        anyres = params.get("anyres")
        if anyres is None:
            anyres = max_tiles is not None or pinpoints is not None
        if not isinstance(anyres, (bool, np.bool_)):
            raise TypeError(f"{_NAME}: anyres must be True, False or None, got {anyres!r}.")
        anyres = bool(anyres)
        if max_tiles is not None:
            max_tiles = check_max_tiles(max_tiles)
        if pinpoints is not None:
            pinpoints = check_pinpoints(pinpoints)
        if anyres and max_tiles is None and pinpoints is None:
            raise ValueError(
                f"{_NAME}: AnyRes needs a grid policy: max_tiles=N (every grid of 1..N tiles, MMJamba) or "
                "image_grid_pinpoints=[[h, w], ...] (LLaVA-NeXT)."
            )
        policy_now = {"max_tiles", "image_grid_pinpoints"} & set(given)
        if stored is not None and policy_now and not anyres:
            raise ValueError(
                f"{_NAME}: {sorted(policy_now)} only apply to AnyRes, which is off for this processor. Pass "
                "anyres=True as well (the model must be set up for AnyRes tiles) or drop the argument."
            )
        return {"anyres": anyres, "max_tiles": max_tiles, "image_grid_pinpoints": pinpoints}

    def _call_params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Stored parameters with this call's overrides applied; rejects misspelled keys instead of ignoring them."""
        unknown = set(overrides) - set(self._param_names) - _IGNORED_CALL_KWARGS - {"data_format", "input_data_format"}
        if unknown:
            raise TypeError(
                f"{_NAME}: unexpected keyword argument(s) {sorted(unknown)}; valid per-call overrides are "
                f"{list(self._param_names)}, plus data_format and input_data_format."
            )
        base = {name: getattr(self, name) for name in self._param_names}
        return self._resolve_params({k: v for k, v in overrides.items() if k in self._param_names}, base=base)

    @staticmethod
    def _view_size(params: dict[str, Any]) -> tuple[int, int]:
        """(height, width) of every AnyRes view: the encoder's input size, i.e. the crop, else the exact size."""
        if params["do_center_crop"]:
            return params["crop_size"]["height"], params["crop_size"]["width"]
        if "height" in params["size"]:
            return params["size"]["height"], params["size"]["width"]
        raise ValueError(
            f"{_NAME}: AnyRes needs a fixed view size, but size={params['size']} without center cropping gives "
            "images of varying size. Set do_center_crop=True with a crop_size, or size={'height': H, 'width': W}."
        )

    def anyres_layout(self, height: int, width: int, **overrides: Any) -> AnyResLayout:
        """Grid, view count and view size AnyRes gives an image of ``height`` x ``width``, without touching pixels.

        Takes the same per-call overrides as ``__call__`` (``max_tiles=``, ``image_grid_pinpoints=``, ...), so token
        counts for a call can be computed before (or without) processing its pixels.
        """
        params = self._call_params(overrides)
        if not params["anyres"]:
            raise ValueError(f"{_NAME}: anyres_layout needs AnyRes on (anyres=True and a grid policy).")
        return self._layout(int(height), int(width), params)

    def _layout(self, height: int, width: int, params: dict[str, Any]) -> AnyResLayout:
        tile = self._view_size(params)
        grid = best_grid(
            (height, width), tile, max_tiles=params["max_tiles"], image_grid_pinpoints=params["image_grid_pinpoints"]
        )
        return AnyResLayout(grid=grid, num_patches=grid[0] * grid[1] + 1, tile_size=tile)

    def output_image_size(self, height: int, width: int, **overrides: Any) -> tuple[int, int]:
        """(height, width) of ``pixel_values`` for an image of this size, without touching pixels.

        Token-count code uses this instead of repeating the resize/crop arithmetic. In AnyRes mode this is the size
        of every view; :meth:`anyres_layout` gives the grid.
        """
        params = self._call_params(overrides)
        if params["anyres"]:
            return self._view_size(params)
        if params["image_aspect_ratio"] == "pad":
            height = width = max(height, width)
        if params["do_resize"]:
            height, width = _resize_target(height, width, params["size"])
        if params["do_center_crop"]:
            height, width = params["crop_size"]["height"], params["crop_size"]["width"]
        return height, width

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Route load-time overrides through ``__init__`` so they are validated the same way on 4.x and 5.x.

        (4.x would ``setattr`` them after construction, unvalidated.) A ``size`` override without ``crop_size``
        re-derives the crop, as at construction and per call.
        """
        image_processor_dict = dict(image_processor_dict)
        if kwargs.get("size") is not None and kwargs.get("crop_size") is None:
            image_processor_dict.pop("crop_size", None)
        # One grid policy given at load time replaces the saved one, as it does per call.
        for name, other in (("max_tiles", "image_grid_pinpoints"), ("image_grid_pinpoints", "max_tiles")):
            if kwargs.get(name) is not None and kwargs.get(other) is None:
                image_processor_dict.pop(other, None)
        for name in cls._param_names:
            if kwargs.get(name) is not None:
                image_processor_dict[name] = kwargs.pop(name)
        return super().from_dict(image_processor_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialize with every parameter present (even ``None``) and as plain JSON types."""
        output = super().to_dict()
        for name in self._param_names:
            output[name] = copy.deepcopy(getattr(self, name, None))
        if output.get("resample") is not None:
            output["resample"] = int(output["resample"])
        for key in ("_valid_kwargs_names", "_valid_processor_keys"):
            output.pop(key, None)
        return output

    # ------------------------------------------------------------------ input handling

    def _flatten_images(self, images: Any) -> list[Any]:
        """Flatten a single image, a list, or a per-sample list of lists into one list, with clear errors."""
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError(f"{_NAME}: got an empty list of images; pass at least one image.")
            flat: list[Any] = []
            for i, item in enumerate(images):
                if isinstance(item, (list, tuple)):
                    for j, sub in enumerate(item):
                        flat.extend(self._expand_image(sub, f"images[{i}][{j}]", allow_batch=True))
                else:
                    flat.extend(self._expand_image(item, f"images[{i}]", allow_batch=True))
            if not flat:
                raise ValueError(f"{_NAME}: every sample's image list is empty; pass at least one image.")
            return flat
        return self._expand_image(images, "the input", allow_batch=True)

    @staticmethod
    def _expand_image(item: Any, where: str, allow_batch: bool) -> list[Any]:
        """One image -> [image]; a 4-D array/tensor -> its images; anything else -> TypeError.

        Encoded inputs (bytes, a file object, a `{"bytes": ..., "path": ...}` dict as `datasets.Image(decode=False)`
        gives, `{"path": ...}` or `{"image": ...}`) are decoded here, so images take the same kinds of input videos do.
        """
        if isinstance(item, PIL.Image.Image):
            return [item]
        if isinstance(item, dict):
            if item.get("bytes") is not None:
                item = item["bytes"]
            elif item.get("path") is not None:
                item = item["path"]
            elif item.get("image") is not None:
                item = item["image"]
            else:
                raise TypeError(
                    f"{_NAME}: {where} is a dict without 'bytes', 'path' or 'image' (keys: {sorted(item)}); pass "
                    "one of those, or the image itself."
                )
            return HybridVLMImageProcessor._expand_image(item, where, allow_batch=False)
        if isinstance(item, (bytes, bytearray)) or (hasattr(item, "read") and not isinstance(item, (str, os.PathLike))):
            data = bytes(item) if isinstance(item, (bytes, bytearray)) else item.read()
            try:
                with PIL.Image.open(io.BytesIO(data)) as opened:
                    opened.load()
                    return [opened]
            except (PIL.UnidentifiedImageError, OSError) as err:
                raise ValueError(
                    f"{_NAME}: {where} ({len(data)} bytes) is not an image Pillow can read: {err}"
                ) from None
        if isinstance(item, (str, os.PathLike)):
            if isinstance(item, str) and item.startswith(("http://", "https://")):
                raise TypeError(
                    f"{_NAME}: {where} is a URL; download it first, e.g. transformers.image_utils.load_image(url)."
                )
            if os.path.isdir(item):
                raise ValueError(
                    f"{_NAME}: {where} is a folder ({os.fspath(item)!r}), not an image file; pass one image file."
                )
            if not os.path.isfile(item):
                raise TypeError(f"{_NAME}: {where} is a string/path but no such file exists: {item!r}.")
            return [item]
        if isinstance(item, (np.ndarray, torch.Tensor)):
            if item.ndim == 4 and allow_batch:
                return list(item)
            return [item]
        raise TypeError(
            f"{_NAME}: {where} has unsupported type {type(item).__name__}; pass a PIL.Image.Image, a numpy array, "
            "a torch tensor, a local file path, bytes, a file object or a {'path': ...} / {'bytes': ...} dict (or a "
            "list, or a list of lists per sample, of those)."
        )

    def _load(
        self, image: Any, index: int, do_convert_rgb: bool, input_data_format: ChannelDimension | None
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Any supported input -> ((H, W, C) array on the 0..255 scale, original (height, width))."""
        what = f"image {index}"
        if isinstance(image, (str, os.PathLike)):
            try:
                with PIL.Image.open(image) as opened:
                    opened.load()
                    image = opened
            except OSError as err:
                raise ValueError(f"{_NAME}: {what} ({image!s}) could not be read as an image: {err}") from err
        if isinstance(image, PIL.Image.Image):
            image = _exif_transpose(image, what)
            width, height = image.size
            if height == 0 or width == 0:
                raise ValueError(f"{_NAME}: {what} is empty (height={height}, width={width}); drop it from the batch.")
            array = _pil_to_rgb_array(image, what, do_convert_rgb)
            if array.ndim == 2:
                array = array[..., None]
        else:
            prefer = ChannelDimension.LAST
            if isinstance(image, torch.Tensor):
                prefer = ChannelDimension.FIRST  # torch images are (C, H, W) by convention
                tensor = image.detach().cpu()
                if tensor.is_floating_point() and tensor.dtype != torch.float64:
                    tensor = tensor.float()
                image = tensor.numpy()
            if image.size == 0:
                raise ValueError(f"{_NAME}: {what} is empty (shape {tuple(image.shape)}); drop it from the batch.")
            array = _array_to_rgb_array(image, what, do_convert_rgb, input_data_format, prefer)
            height, width = array.shape[:2]
            if height == 0 or width == 0:
                raise ValueError(f"{_NAME}: {what} is empty (height={height}, width={width}); drop it from the batch.")
        if array.shape[-1] != 3:
            raise ValueError(
                f"{_NAME}: {what} has {array.shape[-1]} channel(s) but do_convert_rgb=False; pass RGB images or "
                "set do_convert_rgb=True."
            )
        return array, (height, width)

    # ------------------------------------------------------------------ pixel pipeline

    @staticmethod
    def _resize(image: np.ndarray, target: tuple[int, int], resample: PILImageResampling) -> np.ndarray:
        """uint8 goes through transformers' PIL resize (bit-exact with CLIP/SigLIP); float keeps its precision."""
        if image.dtype == np.uint8:
            return resize(
                image,
                target,
                resample=resample,
                data_format=ChannelDimension.LAST,
                input_data_format=ChannelDimension.LAST,
            )
        height, width = target
        channels = [
            np.asarray(PIL.Image.fromarray(np.ascontiguousarray(image[..., c])).resize((width, height), resample))
            for c in range(image.shape[-1])
        ]
        return np.clip(np.stack(channels, axis=-1), 0.0, 255.0).astype(np.float32)

    def _process_view(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Resize, crop, rescale, normalize one (H, W, 3) view; returns (H', W', 3) float32."""
        size = params["size"]
        if params["do_resize"] and "longest_edge" in size and "min_pixels" in size:
            # Vamba's chat loader resizes (bicubic) to its edge limits first; smart_resize then starts from there.
            limited = edge_limited_size(image.shape[0], image.shape[1], size["shortest_edge"], size["longest_edge"])
            if limited != image.shape[:2]:
                image = self._resize(image, limited, PILImageResampling.BICUBIC)
        if params["do_resize"]:
            target = _resize_target(image.shape[0], image.shape[1], params["size"])
            if target != image.shape[:2]:
                image = self._resize(image, target, params["resample"])
        if params["do_center_crop"]:
            crop = params["crop_size"]
            image = center_crop(
                image,
                (crop["height"], crop["width"]),
                data_format=ChannelDimension.LAST,
                input_data_format=ChannelDimension.LAST,
            )
        if params["do_rescale"]:
            image = rescale(
                image,
                params["rescale_factor"],
                data_format=ChannelDimension.LAST,
                input_data_format=ChannelDimension.LAST,
            )
        if params["do_normalize"]:
            means, stds = params["image_mean"], params["image_std"]
            per_encoder = isinstance(means[0], list)
            if per_encoder != isinstance(stds[0], list) or (per_encoder and len(means) != len(stds)):
                raise ValueError(
                    f"{_NAME}: image_mean and image_std must both be one triple, or both one triple per vision "
                    f"encoder (same count); got {means} and {stds}."
                )
            copies = [
                normalize(
                    image, mean, std, data_format=ChannelDimension.LAST, input_data_format=ChannelDimension.LAST
                )
                for mean, std in (zip(means, stds) if per_encoder else [(means, stds)])
            ]
            image = copies[0] if len(copies) == 1 else np.concatenate(copies, axis=-1)
        return np.asarray(image, dtype=np.float32)

    def _views_for_image(
        self, image: np.ndarray, params: dict[str, Any], layout: AnyResLayout | None = None
    ) -> list[np.ndarray]:
        """All views one image becomes: one at a single resolution; with an AnyRes layout the global view, then the
        tiles. AnyRes always resizes: ``do_resize``/``do_center_crop`` only decide the view size there."""
        if layout is None:
            return [self._process_view(image, params)]
        target = (layout.grid[0] * layout.tile_size[0], layout.grid[1] * layout.tile_size[1])
        fitted = fit_size(image.shape[:2], target)
        resized = image if fitted == image.shape[:2] else self._resize(image, fitted, params["resample"])
        tiles = split_tiles(pad_to(resized, target), layout.grid, layout.tile_size)
        base = (
            image if layout.tile_size == image.shape[:2] else self._resize(image, layout.tile_size, params["resample"])
        )
        # Views are already at the encoder's size: only rescale and normalize remain.
        finish = {**params, "do_resize": False, "do_center_crop": False}
        return [self._process_view(view, finish) for view in (base, *tiles)]

    # ------------------------------------------------------------------ public API

    def preprocess(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Turn images into ``pixel_values`` (num_images, 3, H, W) float32 and ``image_sizes`` (num_images, 2).

        In AnyRes mode: ``pixel_values`` (num_images, max_views, 3, H, W), ``image_sizes``, ``image_grids`` and
        ``num_patches`` (see the class docstring).

        ``return_tensors``: None or "np" for NumPy arrays, "pt" for torch tensors. Any constructor parameter can be
        overridden for this call; ``input_data_format`` forces the channel axis of array inputs and ``data_format``
        ("channels_first" default, or "channels_last") sets the output layout.
        """
        params = self._call_params(overrides)
        input_format = overrides.get("input_data_format")
        input_format = ChannelDimension(input_format) if input_format is not None else None
        output_format = ChannelDimension(overrides.get("data_format") or ChannelDimension.FIRST)

        flat = self._flatten_images(images)
        per_image: list[list[np.ndarray]] = []
        sizes: list[tuple[int, int]] = []
        layouts: list[AnyResLayout] = []
        for index, image in enumerate(flat):
            array, original_size = self._load(image, index, params["do_convert_rgb"], input_format)
            sizes.append(original_size)
            if params["image_aspect_ratio"] == "pad":
                array = expand_to_square(array, pad_color(params["image_mean"], _source_mode(image)))
            layout = self._layout(*original_size, params) if params["anyres"] else None
            if layout is not None:
                layouts.append(layout)
            per_image.append(self._views_for_image(array, params, layout))
        if params["anyres"]:
            return self._stack_anyres(per_image, sizes, layouts, output_format, return_tensors)
        views = [view for image_views in per_image for view in image_views]

        shapes = sorted({v.shape[:2] for v in views})
        if len(shapes) > 1:
            raise ValueError(
                f"{_NAME}: processed images have different sizes {shapes} and cannot be stacked. Enable "
                "do_center_crop, use size={'height': H, 'width': W}, or process the images one at a time."
            )
        pixel_values = np.stack([to_channel_dimension_format(v, output_format, ChannelDimension.LAST) for v in views])
        data = {
            "pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32),
            "image_sizes": np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _stack_anyres(
        self,
        per_image: list[list[np.ndarray]],
        sizes: list[tuple[int, int]],
        layouts: list[AnyResLayout],
        output_format: ChannelDimension,
        return_tensors: str | None,
    ) -> BatchFeature:
        """(num_images, max_views, ...) pixel values, zero past each image's views, plus sizes, grids and counts."""
        max_views = max(len(views) for views in per_image)
        first = to_channel_dimension_format(per_image[0][0], output_format, ChannelDimension.LAST)
        pixel_values = np.zeros((len(per_image), max_views, *first.shape), dtype=np.float32)
        for i, views in enumerate(per_image):
            for j, view in enumerate(views):
                pixel_values[i, j] = to_channel_dimension_format(view, output_format, ChannelDimension.LAST)
        data = {
            "pixel_values": pixel_values,
            "image_sizes": np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
            "image_grids": np.asarray([layout.grid for layout in layouts], dtype=np.int64).reshape(-1, 2),
            "num_patches": np.asarray([len(views) for views in per_image], dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def __call__(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **overrides)


__all__ = [
    "ASPECT_RATIO_MODES",
    "SMART_RESIZE_FACTOR",
    "HybridVLMImageProcessor",
    "HybridVLMImageProcessorKwargs",
    "edge_limited_size",
    "expand_to_square",
    "is_smart_size",
    "pad_color",
    "smart_resize",
]
