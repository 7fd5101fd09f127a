"""HybridVLMVideoProcessor: decode videos by seeking, sample frames the way the papers do, process frames like images.

Why a processor of our own: transformers' video processors (and `AutoVideoProcessor` itself) need torchvision, which
does not work with the CPU-only torch we target, and their default PyAV loader decodes the whole file to keep a few
frames. Here:

* Decoding (`video_decoding`: PyAV by default, decord and torchcodec when installed) seeks to the keyframe before
  each wanted frame instead of decoding the whole file, and is bounded in time and iterations.
* Sampling (`video_sampling`): ``uniform`` (MMJamba, LongLLaVA), ``middle``, Vamba's own ``vamba_middle`` /
  ``vamba_uniform``, ``fps`` with a ``max_frames`` cap (LongLLaVA: 1 fps, at most 128), any count per call (MMJamba's
  AnyFrame), a frame budget from a token budget (``max_visual_tokens``), and Vamba's temporal-patch rule
  (``temporal_patch_size=2``: an odd count loses its last frame). The exact semantics are in ``docs/video.md``.
* Frames go through the image processor's own per-frame pipeline (a ``HybridVLMImageProcessor`` built from the same
  parameters), so a frame is resized and normalised exactly like an image.

The class derives from transformers 5's ``VideoProcessorMixin`` where it exists (it needs no torchvision, and the
processor's type checks want it) and from ``BaseImageProcessor`` on 4.x; loading, saving and processing are its own
on both lines, so a folder saved on one line loads on the other.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import VideosKwargs
from transformers.utils import cached_file, logging

from .anyres import split_tiles  # noqa: F401  (the image processor's imports, for 4.x remote code)
from .compat import VIDEO_PROCESSOR_BASE
from .config_options import as_size  # noqa: F401
from .image_processing_hybrid_vlm import HybridVLMImageProcessor
from .model_types import VISION_ENCODER_TYPES  # noqa: F401  (the image processor's imports, for 4.x remote code)
from .remote_code import write_text_atomic
from .token_counts import VIDEO_LAYOUTS, TokenLayout, VisualTokenSpec, count_video_tokens
from .video_decoding import BACKENDS, VideoDecodingError, open_video
from .video_sampling import (
    PADDING_MODES,
    SAMPLING_MODES,
    SAMPLING_RULES,
    check_count,
    fps_indices,
    frames_for_token_budget,
    middle_indices,
    positive_fraction,
    uniform_indices,
    vamba_middle_indices,
    vamba_uniform_indices,
)

# the torchvision-free base ProcessorMixin type-checks video processors against (see compat)
_VideoProcessorBase = VIDEO_PROCESSOR_BASE

logger = logging.get_logger(__name__)

_NAME = "HybridVLMVideoProcessor"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"  # transformers' name for it
_IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
_PROCESSOR_FILE = "processor_config.json"


# The per-frame pipeline's parameters, forwarded to HybridVLMImageProcessor. Listed here (not read from the image
# processor) so that image-only settings such as AnyRes tiling never reach video frames.
_FRAME_PARAM_NAMES: tuple[str, ...] = (
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
    "image_aspect_ratio",
)
_SAMPLING_PARAM_NAMES: tuple[str, ...] = (
    "do_sample_frames",
    "sampling",
    "num_frames",
    "fps",
    "max_frames",
    "temporal_patch_size",
    "strict",
    "max_visual_tokens",
    "backend",
    "decode_timeout",
    "return_metadata",
)
# Per-call only: they describe the model the frames are for, or the input, never the processor itself.
_CALL_ONLY_NAMES = frozenset({"visual_token_spec", "video_layout", "video_metadata"})
# Accepted per call for compatibility with transformers' VideosKwargs; forwarded to the frame pipeline or ignored.
_FORWARDED_NAMES = frozenset({"data_format", "input_data_format"})
_IGNORED_NAMES = frozenset({"device", "do_pad", "pad_size", "default_to_square", "disable_grouping"})
# Keys transformers writes into saved configs; not parameters.
_SERVICE_KEYS = frozenset(
    {"video_processor_type", "image_processor_type", "processor_class", "_processor_class", "feature_extractor_type"}
)



class HybridVLMVideoProcessorKwargs(VideosKwargs, total=False):
    """Per-call keyword arguments (transformers 5 reads this TypedDict to route and validate processor kwargs)."""

    sampling: str | None
    max_frames: int | None
    temporal_patch_size: int | None
    strict: bool | None
    max_visual_tokens: int | None
    backend: str | None
    decode_timeout: float | None
    visual_token_spec: Any
    video_layout: str | None


# ---------------------------------------------------------------------------------------------------- inputs


# Files that hold one still picture: in a list, such paths are the frames of one video (transformers' convention for
# chat blocks {"type": "video", "video": [frame paths]}); any other path is a video file.
_STILL_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def _is_frame(item: Any) -> bool:
    if isinstance(item, PIL.Image.Image):
        return True
    if isinstance(item, (str, os.PathLike)):
        return os.path.splitext(os.fspath(item))[1].lower() in _STILL_IMAGE_SUFFIXES
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim in (2, 3)


def is_video(item: Any) -> bool:
    """One video: a path, bytes, a file-like object, a 4-D array/tensor, or a non-empty list of frames (PIL images,
    (H, W, C) arrays, or paths of still-image files such as PNG or JPEG)."""
    if isinstance(item, (str, os.PathLike, bytes, bytearray)) or hasattr(item, "read"):
        return True
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    if isinstance(item, (list, tuple)):
        return bool(item) and all(_is_frame(frame) for frame in item)
    return False


def make_video_list(videos: Any) -> list[Any]:
    """One video or a flat list of videos -> a list of videos (a 5-D array/tensor is a batch of them)."""
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        return list(videos)
    if is_video(videos):
        return [videos]
    if isinstance(videos, (list, tuple)) and videos and all(is_video(v) for v in videos):
        return list(videos)
    if isinstance(videos, (list, tuple)) and not videos:
        raise ValueError(f"{_NAME}: got an empty list of videos; pass at least one video.")
    what = f"a {type(videos).__name__}"
    if isinstance(videos, (list, tuple)):
        bad = next(i for i, v in enumerate(videos) if not is_video(v))
        what = f"videos[{bad}] (a {type(videos[bad]).__name__})"
    raise TypeError(
        f"{_NAME}: cannot read {what} as a video. A video is a file path, bytes, a file-like object, a (T, H, W, C) "
        "or (T, C, H, W) array/tensor, or a list of frames (PIL images, (H, W, C) arrays or image file paths); pass "
        "one video or a list of them."
    )


def _describe(video: Any, position: int) -> str:
    if isinstance(video, (str, os.PathLike)):
        return f"video {position} ({os.fspath(video)})"
    return f"video {position}"


def _metadata_for(video_metadata: Any, position: int, count: int) -> Any:
    if video_metadata is None:
        return None
    if isinstance(video_metadata, (list, tuple)):
        if len(video_metadata) != count:
            raise ValueError(
                f"{_NAME}: video_metadata has {len(video_metadata)} entries for {count} video(s); give one per video."
            )
        return video_metadata[position]
    if count != 1:
        raise ValueError(f"{_NAME}: one video_metadata was given for {count} videos; give a list, one per video.")
    return video_metadata


def _meta_value(meta: Any, key: str) -> Any:
    if meta is None:
        return None
    if isinstance(meta, dict):
        return meta.get(key)
    return getattr(meta, key, None)


# ---------------------------------------------------------------------------------------------------- the processor


@dataclass
class _Plan:
    """How frames are picked for one call (resolved once from stored parameters and call overrides)."""

    do_sample_frames: bool | None
    sampling: str
    num_frames: int | None
    fps: float | None
    max_frames: int | None
    temporal_patch_size: int
    strict: bool
    max_visual_tokens: int | None
    spec: VisualTokenSpec | None
    layout: str | TokenLayout
    backend: str
    decode_timeout: float
    explicit_num_frames: bool = False  # num_frames came from this call (a cap on it is then worth a warning)


class HybridVLMVideoProcessor(_VideoProcessorBase):
    r"""Decode (seeking, bounded), sample and process videos into ``pixel_values_videos``.

    Inputs: a file path, bytes, a seekable file-like object, a (T, H, W, C) or (T, C, H, W) array/tensor, or a list of
    frames (PIL images or arrays); one video or a list of videos. Returns ``pixel_values_videos`` (num_videos, T, 3, H,
    W) float32 when all videos share T, H and W, else a list of (T_i, 3, H_i, W_i); and, with ``return_metadata``,
    ``video_metadata``: one dict per video with ``frame_indices``, ``timestamps`` (seconds from the first frame, from
    the stream's pts), ``fps`` and ``duration`` as measured, ``total_num_frames`` (counted, not read from metadata),
    the container's own claims, and decoding statistics.

    Frame parameters (``size``, ``crop_size``, ``image_mean`` ...) are those of :class:`HybridVLMImageProcessor` and go
    through its per-frame pipeline. Sampling parameters:

    Args:
        do_sample_frames: ``None`` (default): sample decoded files, keep in-memory frames as given. ``True``: sample
            both. ``False``: keep every frame of files too.
        sampling: ``"uniform"`` (first and last frame included), ``"middle"`` (middle of equal segments), ``"fps"``,
            or Vamba's own rules, reproduced exactly: ``"vamba_middle"`` (its chat script; pads a short video with
            its last frame) and ``"vamba_uniform"`` (its evaluation scripts).
        num_frames: frames for ``uniform``/``middle``; any count per call (AnyFrame). Fewer frames in the video than
            asked: all of them and a warning (an error with ``strict=True``).
        fps: sampling rate for ``fps`` mode; giving ``fps`` (and not ``num_frames``) in a call selects ``fps`` mode.
        max_frames: a cap on frames per video in every mode; in ``fps`` mode a longer video gets exactly
            ``max_frames`` frames spread over its whole length.
        temporal_patch_size: keep a multiple of this many frames by dropping the last ones (Vamba: 2, so an odd count
            loses its last frame).
        strict: raise instead of warning when a video has fewer frames than ``num_frames``.
        max_visual_tokens: token budget per video; frames are capped (or, without ``num_frames``, chosen) so that the
            video's whole expansion fits. Needs the model's token spec (the processor passes it).
        backend: ``"auto"`` (= ``"pyav"``), ``"pyav"``, ``"torchcodec"`` or ``"decord"`` (the last two if installed).
        decode_timeout: seconds allowed for indexing and decoding one video before giving up with an error.
        return_metadata: also return ``video_metadata``.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values_videos"]
    valid_kwargs = HybridVLMVideoProcessorKwargs
    _param_names: ClassVar[tuple[str, ...]] = _FRAME_PARAM_NAMES + _SAMPLING_PARAM_NAMES

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
        image_aspect_ratio: str | None = None,
        do_sample_frames: bool | None = None,
        sampling: str = "uniform",
        num_frames: int | None = 8,
        fps: float | None = None,
        max_frames: int | None = None,
        temporal_patch_size: int = 1,
        strict: bool = False,
        max_visual_tokens: int | None = None,
        backend: str = "auto",
        decode_timeout: float = 120.0,
        return_metadata: bool = True,
        **kwargs: Any,
    ) -> None:
        auto_map = kwargs.pop("auto_map", None)
        unknown = sorted(k for k in kwargs if k not in _SERVICE_KEYS)
        if unknown:
            logger.warning(f"{_NAME}: ignoring unrecognised init arguments {unknown}.")
        super().__init__()
        if auto_map:
            self.auto_map = auto_map
        frame_params = {
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
            "do_convert_rgb": do_convert_rgb,
            "image_aspect_ratio": image_aspect_ratio,
        }
        self._frame_processor = self._make_frame_processor(frame_params)
        for name in _FRAME_PARAM_NAMES:  # the image processor's validated, normalised values
            setattr(self, name, copy.deepcopy(getattr(self._frame_processor, name)))
        sampling_params = self._check_sampling(
            {
                "do_sample_frames": do_sample_frames,
                "sampling": sampling,
                "num_frames": num_frames,
                "fps": fps,
                "max_frames": max_frames,
                "temporal_patch_size": temporal_patch_size,
                "strict": strict,
                "max_visual_tokens": max_visual_tokens,
                "backend": backend,
                "decode_timeout": decode_timeout,
                "return_metadata": return_metadata,
            }
        )
        for name, value in sampling_params.items():
            setattr(self, name, value)
        if self.sampling == "fps" and self.fps is None:
            raise ValueError(f"{_NAME}: sampling='fps' needs fps=... (e.g. fps=1).")

    @staticmethod
    def _make_frame_processor(frame_params: dict[str, Any]) -> HybridVLMImageProcessor:
        params = {k: v for k, v in frame_params.items() if v is not None}
        if "anyres" in HybridVLMImageProcessor._param_names:
            params["anyres"] = False  # a frame is one view; tiling is for still images
        return HybridVLMImageProcessor(**params)

    @classmethod
    def from_image_processor(cls, image_processor: HybridVLMImageProcessor, **kwargs: Any) -> HybridVLMVideoProcessor:
        """A video processor whose frames get exactly the image processor's resize/normalisation (what the vision
        tower was trained on); ``kwargs`` set sampling parameters or override frame parameters."""
        # image_aspect_ratio is newer than the other frame parameters: processors saved before it have none.
        params = {
            name: copy.deepcopy(getattr(image_processor, name) if name != "image_aspect_ratio"
                                else getattr(image_processor, name, None))
            for name in _FRAME_PARAM_NAMES
        }
        params.update(kwargs)
        return cls(**params)

    # ------------------------------------------------------------------ parameters

    @staticmethod
    def _check_sampling(params: dict[str, Any]) -> dict[str, Any]:
        """Validate sampling parameters (``None`` where allowed means "unset")."""
        out = dict(params)
        for name in ("do_sample_frames",):
            value = out.get(name)
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{_NAME}: {name} must be True, False or None, got {value!r}.")
        for name in ("strict", "return_metadata"):
            if name in out and not isinstance(out[name], (bool, np.bool_)):
                raise TypeError(f"{_NAME}: {name} must be True or False, got {out[name]!r}.")
        if "sampling" in out and out["sampling"] not in SAMPLING_MODES:
            raise ValueError(f"{_NAME}: unknown sampling {out['sampling']!r}; use one of {list(SAMPLING_MODES)}.")
        for name in ("num_frames", "max_frames", "max_visual_tokens"):
            if out.get(name) is not None:
                out[name] = check_count(out[name], name)
        if out.get("fps") is not None:
            positive_fraction(out["fps"], "fps")
            out["fps"] = float(out["fps"]) if not isinstance(out["fps"], Integral) else int(out["fps"])
        if "temporal_patch_size" in out:
            out["temporal_patch_size"] = check_count(out["temporal_patch_size"], "temporal_patch_size")
        if "backend" in out and out["backend"] not in BACKENDS:
            raise ValueError(f"{_NAME}: unknown backend {out['backend']!r}; use one of {list(BACKENDS)}.")
        if "decode_timeout" in out:
            value = out["decode_timeout"]
            if isinstance(value, bool) or not isinstance(value, Real) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{_NAME}: decode_timeout must be a positive number of seconds, got {value!r}.")
            out["decode_timeout"] = float(value)
        return out

    def _split_overrides(self, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(frame overrides, sampling overrides, call-only values); unknown keys are an error, not silently dropped."""
        known = set(self._param_names) | _CALL_ONLY_NAMES | _FORWARDED_NAMES | _IGNORED_NAMES
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"{_NAME}: unexpected keyword argument(s) {unknown}; valid per-call options are "
                f"{sorted(set(self._param_names) | _CALL_ONLY_NAMES | _FORWARDED_NAMES)}."
            )
        frame = {k: v for k, v in overrides.items() if (k in _FRAME_PARAM_NAMES or k in _FORWARDED_NAMES)}
        frame = {k: v for k, v in frame.items() if v is not None}
        sampling = {k: v for k, v in overrides.items() if k in _SAMPLING_PARAM_NAMES}
        call = {k: v for k, v in overrides.items() if k in _CALL_ONLY_NAMES}
        return frame, sampling, call

    def _plan(self, sampling: dict[str, Any], call: dict[str, Any]) -> _Plan:
        """Resolve this call's sampling from its overrides and the stored parameters (rules: docs/video.md).

        For ``do_sample_frames``, ``num_frames``, ``fps``, ``max_frames`` and ``max_visual_tokens`` a value given for
        the call wins even when it is ``None`` ("unset": e.g. ``num_frames=None`` lets a token budget decide); for the
        other parameters ``None`` means "use the stored value".
        """
        checked = self._check_sampling({k: v for k, v in sampling.items() if v is not None})

        def pick(name: str) -> Any:
            return checked.get(name) if name in sampling else getattr(self, name)

        def stored(name: str) -> Any:
            return checked.get(name, getattr(self, name))

        if "num_frames" in checked and "fps" in checked and "sampling" not in checked:
            raise ValueError(
                f"{_NAME}: num_frames={checked['num_frames']} and fps={checked['fps']} were both given; pass one "
                "(num_frames for a fixed count, fps for a rate), or say which with sampling=..."
            )
        mode = checked.get("sampling")
        if mode is None:
            if "fps" in checked:
                mode = "fps"
            elif "num_frames" in sampling:
                mode = self.sampling if self.sampling != "fps" else "uniform"
            else:
                mode = self.sampling
        fps = pick("fps")
        if mode == "fps" and fps is None:
            raise ValueError(f"{_NAME}: sampling='fps' needs fps=... (e.g. fps=1).")
        layout = call.get("video_layout") or "plain"
        if not isinstance(layout, TokenLayout) and layout not in VIDEO_LAYOUTS:  # the processor passes a TokenLayout
            raise ValueError(f"{_NAME}: unknown video_layout {layout!r}; use one of {list(VIDEO_LAYOUTS)}.")
        spec = call.get("visual_token_spec")
        if isinstance(spec, dict):
            spec = VisualTokenSpec.from_dict(spec)
        max_tokens = pick("max_visual_tokens")
        if max_tokens is not None and not isinstance(spec, VisualTokenSpec):
            raise ValueError(
                f"{_NAME}: max_visual_tokens={max_tokens} needs the model's token spec to turn tokens into frames; "
                "call through HybridVLMProcessor (which passes it), or pass visual_token_spec=VisualTokenSpec(...)."
            )
        return _Plan(
            do_sample_frames=pick("do_sample_frames"),
            sampling=mode,
            num_frames=pick("num_frames"),
            fps=fps,
            max_frames=pick("max_frames"),
            temporal_patch_size=stored("temporal_patch_size"),
            strict=bool(stored("strict")),
            max_visual_tokens=max_tokens,
            spec=spec,
            layout=layout,
            backend=stored("backend"),
            decode_timeout=stored("decode_timeout"),
            explicit_num_frames="num_frames" in sampling,
        )

    def output_frame_size(self, height: int, width: int, **overrides: Any) -> tuple[int, int]:
        """(height, width) of a processed frame for a source frame of this size, without touching pixels."""
        return self._frame_processor.output_image_size(int(height), int(width), **overrides)

    # ------------------------------------------------------------------ choosing frames

    def _choose(
        self,
        plan: _Plan,
        total: int,
        timestamps: Sequence[Fraction] | None,
        duration: Fraction | None,
        frame_size: tuple[int, int] | None,
        sample: bool,
        what: str,
        frame_overrides: dict[str, Any],
    ) -> tuple[list[int], dict[str, Any]]:
        """Indices to keep out of ``total`` frames, and what to report about the choice."""
        info: dict[str, Any] = {"sampling": plan.sampling if sample else "all"}
        cap = plan.max_frames
        if plan.max_visual_tokens is not None:
            if frame_size is None or min(frame_size) <= 0:
                raise ValueError(f"{_NAME}: cannot apply max_visual_tokens to {what}: its frame size is unknown.")
            height, width = self.output_frame_size(*frame_size, **frame_overrides)
            budget = frames_for_token_budget(plan.max_visual_tokens, plan.spec, height, width, plan.layout)
            info["frame_budget"] = budget
            cap = budget if cap is None else min(cap, budget)
        if not sample:
            if cap is not None and total > cap:
                raise ValueError(
                    f"{_NAME}: {what} has {total} frames but at most {cap} are allowed (max_frames/max_visual_tokens) "
                    "and do_sample_frames=False keeps every frame; enable sampling or raise the limit."
                )
            indices = list(range(total))
        elif plan.sampling == "fps":
            if timestamps is None or duration is None:
                raise ValueError(
                    f"{_NAME}: sampling='fps' needs the frame rate of {what}; for frames given in memory pass "
                    "video_metadata={'fps': ...} (or 'timestamps'), or use num_frames=..."
                )
            info["requested_fps"] = plan.fps
            indices = fps_indices(timestamps, duration, plan.fps, cap)
        else:
            wanted = plan.num_frames if plan.num_frames is not None else cap
            if wanted is None:
                raise ValueError(f"{_NAME}: sampling={plan.sampling!r} needs num_frames=... (or max_visual_tokens).")
            if cap is not None and wanted > cap:
                message = (
                    f"{_NAME}: {what}: num_frames={wanted} exceeds the limit of {cap} frames "
                    f"(max_frames/max_visual_tokens); sampling {cap}."
                )
                (logger.warning if plan.explicit_num_frames else logger.info)(message)
                wanted = cap
            info["requested_num_frames"] = wanted
            if total < wanted and plan.sampling in PADDING_MODES:
                logger.info(f"{_NAME}: {what} has {total} frame(s); padding to {wanted} with its last frame.")
            elif total < wanted:
                message = f"{_NAME}: {what} has only {total} frame(s) but num_frames={wanted} were asked for"
                if plan.strict:
                    raise ValueError(f"{message} (strict=True). Ask for at most {total}, or set strict=False.")
                logger.warning(f"{message}; returning all {total}.")
            indices = SAMPLING_RULES[plan.sampling](total, wanted)
        patch = plan.temporal_patch_size
        if patch > 1:
            keep = len(indices) - len(indices) % patch
            if keep == 0:
                raise ValueError(
                    f"{_NAME}: {what} yields {len(indices)} frame(s), fewer than temporal_patch_size={patch}; it needs "
                    f"at least {patch}."
                )
            indices = indices[:keep]
        return indices, info

    # ------------------------------------------------------------------ loading


    def _decode(
        self, video: Any, what: str, plan: _Plan, frame_overrides: dict[str, Any]
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        reader = open_video(video, what, plan.backend, plan.decode_timeout)
        try:
            index = reader.index()
            sample = plan.do_sample_frames is not False
            indices, info = self._choose(
                plan,
                index.num_frames,
                index.timestamps,
                index.duration,
                (index.height, index.width),
                sample,
                what,
                frame_overrides,
            )
            frames = reader.read(indices)
        finally:
            reader.close()
        stats = reader.stats
        delivered = [i for _, i in frames]
        problems = list(index.notes)
        if stats.corrupt_packets:
            problems.append(f"skipped {stats.corrupt_packets} corrupt packet(s)")
        if stats.substituted:
            pairs = ", ".join(f"{w}->{d}" for w, d in stats.substituted[:8])
            more = "" if len(stats.substituted) <= 8 else f" (+{len(stats.substituted) - 8} more)"
            problems.append(
                f"{len(stats.substituted)} wanted frame(s) could not be decoded and were replaced by the nearest "
                f"decodable one (wanted->used: {pairs}{more})"
            )
        if problems:
            logger.warning(f"{_NAME}: {what}: " + "; ".join(problems) + ".")
        metadata = {
            "source": os.fspath(video) if isinstance(video, (str, os.PathLike)) else None,
            "backend": reader.name,
            "total_num_frames": index.num_frames,
            "fps": float(index.num_frames / index.duration),
            "duration": float(index.duration),
            "height": index.height,
            "width": index.width,
            "frame_indices": delivered,
            "timestamps": [float(index.timestamps[i]) for i in delivered],
            "metadata_num_frames": index.metadata_num_frames,
            "metadata_fps": index.metadata_fps,
            "decoded_frames": stats.decoded_frames,
            "corrupt_packets": stats.corrupt_packets,
            "substituted_frames": len(stats.substituted),
            **info,
        }
        return [array for array, _ in frames], metadata

    def _from_memory(
        self, video: Any, what: str, plan: _Plan, meta: Any, frame_overrides: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        frames = list(video)
        total = len(frames)
        if total == 0:
            raise ValueError(f"{_NAME}: {what} has no frames.")
        # The source frame size (for the metadata and a token budget), read the way the frame pipeline reads it.
        sizes = self._frame_processor.preprocess(
            frames[:1], do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False
        )["image_sizes"]
        frame_size = (int(sizes[0][0]), int(sizes[0][1]))
        timestamps = _meta_value(meta, "timestamps")
        fps = _meta_value(meta, "fps")
        stamps: list[Fraction] | None = None
        duration: Fraction | None = None
        if timestamps is not None:
            if len(timestamps) != total:
                raise ValueError(f"{_NAME}: {what} has {total} frames but {len(timestamps)} timestamps.")
            raw = [Fraction(float(t)).limit_denominator(1_000_000) for t in timestamps]
            stamps = [t - raw[0] for t in raw]
            if any(b < a for a, b in zip(stamps, stamps[1:])):
                raise ValueError(f"{_NAME}: the timestamps of {what} must be sorted.")
            step = (stamps[-1] / (total - 1)) if total > 1 else (1 / Fraction(fps) if fps else Fraction(1))
            duration = stamps[-1] + step
        elif fps:
            rate = positive_fraction(fps, "video_metadata fps")
            stamps = [i / rate for i in range(total)]
            duration = total / rate
        sample = plan.do_sample_frames is True
        indices, info = self._choose(plan, total, stamps, duration, frame_size, sample, what, frame_overrides)
        metadata = {
            "source": None,
            "backend": "frames",
            "total_num_frames": total,
            "fps": float(total / duration) if duration else (float(fps) if fps else None),
            "duration": float(duration) if duration is not None else None,
            "height": frame_size[0],
            "width": frame_size[1],
            "frame_indices": indices,
            "timestamps": [float(stamps[i]) for i in indices] if stamps is not None else None,
            "metadata_num_frames": None,
            "metadata_fps": float(fps) if fps else None,
            "decoded_frames": 0,
            "corrupt_packets": 0,
            "substituted_frames": 0,
            **info,
        }
        return [frames[i] for i in indices], metadata

    # ------------------------------------------------------------------ public API

    def preprocess(self, videos: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Decode/sample/process ``videos`` (one or a list) into ``pixel_values_videos`` and ``video_metadata``.

        ``return_tensors``: None or "np" for NumPy, "pt" for torch. Any constructor parameter can be overridden for
        this call; ``video_metadata`` (a dict or one per video: ``fps`` and/or ``timestamps``) describes frames given
        in memory; ``visual_token_spec`` and ``video_layout`` go with ``max_visual_tokens``.
        """
        frame_overrides, sampling_overrides, call = self._split_overrides(overrides)
        plan = self._plan(sampling_overrides, call)
        return_metadata = sampling_overrides.get("return_metadata")
        return_metadata = self.return_metadata if return_metadata is None else bool(return_metadata)
        items = make_video_list(videos)
        pixel_values: list[np.ndarray] = []
        metadata: list[dict[str, Any]] = []
        for position, video in enumerate(items):
            what = _describe(video, position)
            if isinstance(video, (str, os.PathLike, bytes, bytearray)) or hasattr(video, "read"):
                frames, meta = self._decode(video, what, plan, frame_overrides)
            else:
                if isinstance(video, (np.ndarray, torch.Tensor)):
                    video = list(video)
                meta_in = _metadata_for(call.get("video_metadata"), position, len(items))
                frames, meta = self._from_memory(video, what, plan, meta_in, frame_overrides)
            processed = self._frame_processor.preprocess(frames, return_tensors=None, **frame_overrides)
            values = np.asarray(processed["pixel_values"])
            if values.ndim != 4 or values.shape[0] != len(frames):
                raise ValueError(
                    f"{_NAME}: the frame pipeline turned {len(frames)} frames of {what} into pixel_values of shape "
                    f"{tuple(values.shape)}; each frame must give exactly one view (no tiling for video frames)."
                )
            pixel_values.append(values)
            metadata.append(meta)
        shapes = {v.shape for v in pixel_values}
        data: dict[str, Any] = {}
        if len(shapes) == 1:
            data["pixel_values_videos"] = np.stack(pixel_values)
        output = BatchFeature(data=data, tensor_type=return_tensors)
        if len(shapes) > 1:  # frame counts or sizes differ: a list, one array/tensor per video
            as_tensor = str(return_tensors) in ("pt", "TensorType.PYTORCH")
            output["pixel_values_videos"] = [torch.from_numpy(v) if as_tensor else v for v in pixel_values]
        if return_metadata:
            output["video_metadata"] = metadata
        return output

    def __call__(self, videos: Any, return_tensors: str | None = None, **overrides: Any) -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(videos, return_tensors=return_tensors, **overrides)

    def num_video_tokens(
        self,
        spec: VisualTokenSpec,
        num_frames: int,
        height: int,
        width: int,
        layout: str = "plain",
        include_markers: bool = True,
    ) -> int:
        """Tokens for a video of ``num_frames`` source frames of ``height`` x ``width``, without decoding anything."""
        out_height, out_width = self.output_frame_size(height, width)
        return count_video_tokens(spec, num_frames, out_height, out_width, layout, include_markers)

    # ------------------------------------------------------------------ saving and loading

    def to_dict(self) -> dict[str, Any]:
        """Every parameter as plain JSON types, plus ``video_processor_type`` (what loaders dispatch on)."""
        output = {name: copy.deepcopy(getattr(self, name, None)) for name in self._param_names}
        if output.get("resample") is not None:
            output["resample"] = int(output["resample"])
        output["video_processor_type"] = type(self).__name__
        if getattr(self, "auto_map", None):
            output["auto_map"] = copy.deepcopy(self.auto_map)
        return output

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike[str]) -> None:
        write_text_atomic(Path(json_file_path), self.to_json_string())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any
    ) -> list[str]:
        """Write ``video_preprocessor_config.json`` (transformers' file name; both lines load it through this class)."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"{_NAME}: save_directory {directory} is a file; pass a folder.")
        directory.mkdir(parents=True, exist_ok=True)
        if self._auto_class is not None:
            from transformers.dynamic_module_utils import custom_object_save

            custom_object_save(self, directory, config=self)
        path = directory / VIDEO_PROCESSOR_FILE
        self.to_json_file(path)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or directory.resolve().name
            self.push_to_hub(repo_id, **kwargs)
        return [str(path)]

    @classmethod
    def get_video_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The saved parameters, from the first of: ``video_preprocessor_config.json``, the ``video_processor`` entry of
        ``processor_config.json`` (transformers 5's nested format), ``preprocessor_config.json`` (a folder saved before
        it had a video processor: the image processor's frame settings, sampling defaults)."""
        hub = {k: kwargs.pop(k) for k in list(kwargs) if k in _HUB_KWARGS}
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            return _read_json(path), kwargs
        if os.path.isdir(path) and hub.get("subfolder"):
            path = os.path.join(path, hub.pop("subfolder"))
        local = os.path.isdir(path)
        for filename in (VIDEO_PROCESSOR_FILE, _PROCESSOR_FILE, _IMAGE_PROCESSOR_FILE):
            if local:
                resolved = os.path.join(path, filename) if os.path.isfile(os.path.join(path, filename)) else None
            else:
                try:
                    resolved = cached_file(path, filename, _raise_exceptions_for_missing_entries=False, **hub)
                except Exception as err:  # an invalid repo id, no network, ...: say what was looked for
                    raise OSError(
                        f"{_NAME}: {path!r} is not a local folder and could not be read as a Hub repo ({err})."
                    ) from err
            if resolved is None:
                continue
            data = _read_json(resolved)
            if filename == _PROCESSOR_FILE:
                data = data.get("video_processor")
                if not isinstance(data, dict):
                    continue
            elif filename == _IMAGE_PROCESSOR_FILE:
                data = {k: v for k, v in data.items() if k in _FRAME_PARAM_NAMES}
                logger.info(f"{_NAME}: {path} has no video processor config; using its image processor's settings.")
            return data, kwargs
        raise OSError(
            f"{_NAME}: found none of {VIDEO_PROCESSOR_FILE}, {_PROCESSOR_FILE} or {_IMAGE_PROCESSOR_FILE} in {path}; "
            "is it a saved processor folder?"
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> HybridVLMVideoProcessor | tuple[HybridVLMVideoProcessor, dict[str, Any]]:
        """Load from a folder or Hub repo (see :meth:`get_video_processor_dict` for where the settings come from);
        keyword arguments that are parameters override the saved values."""
        config, kwargs = cls.get_video_processor_dict(pretrained_model_name_or_path, **kwargs)
        return cls.from_dict(config, **kwargs)

    @classmethod
    def from_dict(cls, video_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build from saved parameters; ``kwargs`` that are parameters override them, the rest are returned unused
        with ``return_unused_kwargs=True`` (and otherwise ignored)."""
        config = {k: v for k, v in dict(video_processor_dict).items() if k not in _SERVICE_KEYS}
        return_unused = kwargs.pop("return_unused_kwargs", False)
        for name in cls._param_names:
            if name in kwargs:
                config[name] = kwargs.pop(name)
        processor = cls(**config)
        return (processor, kwargs) if return_unused else processor

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoVideoProcessor") -> None:
        """Record the Auto class for remote code (``auto_map`` in the saved config)."""
        cls._auto_class = auto_class if isinstance(auto_class, str) else auto_class.__name__


_HUB_KWARGS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies", "user_agent"}
)


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{_NAME}: {path} must hold a JSON object, got {type(data).__name__}.")
    return data


__all__ = [
    "BACKENDS",
    "SAMPLING_MODES",
    "VIDEO_PROCESSOR_FILE",
    "HybridVLMVideoProcessor",
    "HybridVLMVideoProcessorKwargs",
    "VideoDecodingError",
    "fps_indices",
    "frames_for_token_budget",
    "is_video",
    "make_video_list",
    "middle_indices",
    "uniform_indices",
    "vamba_middle_indices",
    "vamba_uniform_indices",
]
