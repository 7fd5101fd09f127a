"""HybridVLMProcessor: tokenizer, image and video processors, with every `<image>` / `<video>` placeholder expanded to
the tokens the model fills with its features.

The counts come from the processor's `VisualTokenSpec` (`token_counts`, `anyres`), the functions the model checks its
features against, so processor and model cannot disagree; truncation that would cut visual tokens is an error here.
How an expansion is laid out (`image_layout`, `video_layout`, `layout_markers`) is docs/layouts.md. One class serves
transformers 4.57 and 5.x, whose `ProcessorMixin`s find, save and load sub-processors differently (see compat).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin, TextKwargs
from transformers.utils import logging

from .anyres import check_flat_anyres_packing, image_runs
from .chat_templates import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    LONGLLAVA_CHAT_TEMPLATE,
    QWEN2VL_CHAT_TEMPLATE,
    VIDEO_TOKEN,
)
from .compat import (
    CHAT_TEMPLATE_TAKES_PROCESSOR_KWARGS,
    PROCESSOR_ATTRIBUTES_FROM_SIGNATURE,
    merge_processor_kwargs,
    processor_attribute_names,
    processor_view_with_attributes,
    record_processor_class,
)
from .config_options import VambaOptions  # noqa: F401  (configuration's imports, for 4.x remote code)
from .configuration_hybrid_vlm import HybridVLMConfig
from .image_processing_hybrid_vlm import HybridVLMImageProcessor, HybridVLMImageProcessorKwargs
from .model_types import has_ssm_layers  # noqa: F401  (configuration's imports, for 4.x remote code: see there)
from .multimodal_inputs import flatten_sample_images, flatten_sample_videos, has_frame_blocks, prepare_conversations
from .prompt_expansion import (
    check_placeholders,
    check_visual_tokens_kept,
    expand_placeholders,
    map_offsets_to_input,
    render,
)
from .remote_code import write_processor_remote_code, write_text_atomic
from .token_counts import (
    IMAGE_LAYOUTS,
    MARKER_STYLES,
    VIDEO_LAYOUTS,
    VisualTokenSpec,
    canonical_layout,
    count_image_tokens,
    count_layout_tokens,
    count_video_tokens,
    layout_pieces,
    measure_token_layout,
    single_token_id,
    token_id_or_none,
    video_runs,
)
from .tokenizer_files import make_tokenizer_files_portable
from .video_decoding import open_video  # noqa: F401  (the video processor's imports, for 4.x remote code)
from .video_processing_hybrid_vlm import (
    VIDEO_PROCESSOR_FILE,
    HybridVLMVideoProcessor,
    HybridVLMVideoProcessorKwargs,
)
from .video_sampling import SAMPLING_RULES  # noqa: F401

logger = logging.get_logger(__name__)

_NAME = "HybridVLMProcessor"
_IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


class HybridVLMTextKwargs(TextKwargs, total=False):
    """The tokenizer's options, plus the processor's own text options (transformers 5's names; 4.57's TextKwargs
    lacks `return_text_replacement_offsets`)."""

    return_mm_token_type_ids: bool | None
    return_text_replacement_offsets: bool | None


class HybridVLMProcessorKwargs(ProcessingKwargs, total=False):
    """Per-call keyword arguments, flat or per modality (`text_kwargs`, `images_kwargs`, `videos_kwargs`), routed by
    transformers' `ProcessorMixin._merge_kwargs`: a flat key goes to every modality that declares it (frame `size`,
    normalisation ... reach images and video frames alike)."""

    text_kwargs: HybridVLMTextKwargs
    images_kwargs: HybridVLMImageProcessorKwargs
    videos_kwargs: HybridVLMVideoProcessorKwargs
    _defaults = {  # noqa: RUF012  (transformers reads this class attribute)
        "text_kwargs": {"padding": False, "return_token_type_ids": False},  # 4.x tokenizers return token_type_ids
        "videos_kwargs": {"return_metadata": False},  # video_metadata is no model input: only on request
    }


# transformers reads the per-modality TypedDicts from `__annotations__`, which `from __future__ import annotations`
# leaves as strings.
HybridVLMProcessorKwargs.__annotations__.update(
    text_kwargs=HybridVLMTextKwargs,
    images_kwargs=HybridVLMImageProcessorKwargs,
    videos_kwargs=HybridVLMVideoProcessorKwargs,
)


_TEXT_OPTIONS = ("return_mm_token_type_ids", "return_text_replacement_offsets")  # the processor's, not the tokenizer's
# Accepted and ignored: apply_chat_template of either line may pass these; they mean nothing without audio.
_IGNORED_KWARGS = frozenset(
    {
        "sanitize_control_tokens",
        "sampling_rate",
        "load_audio_backend",
        "audio_from_video_indices",
        "load_audio_from_video",
    }
)
# Nested per-modality dicts, as transformers processors accept them (`common_kwargs` is 4.x's shared dict).
_NESTED_KWARGS = ("text_kwargs", "images_kwargs", "videos_kwargs", "audio_kwargs", "common_kwargs")

# Chat templates per layout (chat_templates.py): each family's turn format. llava: ChatML, the tiny tokenizer's own
# template; LongLLaVA: one template for converted and new checkpoints; Qwen2-VL / Vamba: ChatML with Qwen's default
# system prompt.
CHAT_TEMPLATES: dict[str, str] = {
    "llava": CHAT_TEMPLATE,
    "longllava": LONGLLAVA_CHAT_TEMPLATE,
    "longllava-chat": LONGLLAVA_CHAT_TEMPLATE,
    "qwen2vl": QWEN2VL_CHAT_TEMPLATE,
}


def chat_template_for_layout(layout: str) -> str:
    """The chat template of a layout's model family (`chat_template="longllava"` etc. picks it in the processor)."""
    return CHAT_TEMPLATES[canonical_layout(layout)]


# mm_token_type_ids values (transformers 5's convention): 0 text, 1 image, 2 video.
_MM_TYPE_IMAGE, _MM_TYPE_VIDEO = 1, 2


# Flat keys of processor configs saved before the token spec was nested -> the spec's field for each. The old
# `vision_pooled_grid` was the effective pooled side (model-side or projector pooling), the spec's `pooled_grid`; the
# model config's `vision_pooled_grid` is the model-side pooling only.
LEGACY_SPEC_KEYS: dict[str, str] = {
    "patch_size": "patch_size",
    "num_prefix_tokens": "num_prefix_tokens",
    "vision_feature_select_strategy": "vision_feature_select_strategy",
    "vision_pooled_grid": "pooled_grid",
    "projector_conv": "projector_conv",
    "num_vision_maps": "num_maps",
    "image_newline": "image_newline",
    "anyres_unpad": "anyres_unpad",
    "anyres_merge": "anyres_merge",
    "anyres_max_feature_tiles": "anyres_max_feature_tiles",
    "video_pool_stride": "video_pool_stride",
    "video_newline": "video_newline",
    "video_temporal_patch": "video_temporal_patch",
}


def _token_spec(spec: VisualTokenSpec | dict[str, Any] | None, flat: dict[str, Any]) -> VisualTokenSpec:
    """The spec from a `VisualTokenSpec`, its dict, and/or the old flat keys (popped from `flat`; they override)."""
    overrides = {LEGACY_SPEC_KEYS[key]: flat.pop(key) for key in list(flat) if key in LEGACY_SPEC_KEYS}
    if spec is None:
        if "patch_size" not in overrides or "num_prefix_tokens" not in overrides:
            raise ValueError(
                f"{_NAME} needs a visual_token_spec (the model's patch_size and num_prefix_tokens at least) to count "
                f"image tokens; build it with {_NAME}.from_model_config(config, tokenizer), which derives it from the "
                "model config."
            )
        return VisualTokenSpec(**overrides)
    spec = VisualTokenSpec.from_dict(spec)
    return dataclasses.replace(spec, **overrides) if overrides else spec


class HybridVLMProcessor(ProcessorMixin):
    r"""
    Tokenizer, image processor and video processor of a HybridVLM model.

    `__call__` turns prompts with one `<image>` placeholder per image and one `<video>` placeholder per video into
    `input_ids` where each placeholder is expanded to as many tokens as the model produces features for it
    (`count_image_tokens`, `count_video_tokens`), plus `pixel_values`/`image_sizes` from the image processor and
    `pixel_values_videos` from the video processor.

    Args:
        image_processor: the image processor (a [`HybridVLMImageProcessor`] normally).
        tokenizer: a tokenizer that has `image_token` as a single, never-split token.
        video_processor: a [`HybridVLMVideoProcessor`]; `None` builds one whose frames get the image processor's
            resize and normalisation.
        visual_token_spec: what the token counts depend on ([`VisualTokenSpec`] or its dict), the model's
            `VisualTokenSpec.from_config(config)`; the flat names of older saved folders (`patch_size`,
            `num_prefix_tokens`, `vision_pooled_grid`, ...: `LEGACY_SPEC_KEYS`) are accepted and override its fields.
        image_token: the placeholder string for one image in prompts; also the token every image feature occupies.
        video_token: the placeholder string for one video in prompts; also the token every video feature occupies.
        image_layout, video_layout, layout_markers: how expansions are laid out (docs/layouts.md).
        chat_template: Jinja chat template, or a layout's name for its family's; defaults to the tokenizer's.

    Use [`HybridVLMProcessor.from_model_config`] to take the token spec from a model config.
    """

    # transformers 4.x finds sub-processors through these; 5.x reads `__init__`'s parameters and warns about
    # `*_class` attributes, so they are only declared where they are read (see compat). The video processor is named
    # by its own class: 4.x's "AutoVideoProcessor" resolves to a torchvision-only dummy.
    if not PROCESSOR_ATTRIBUTES_FROM_SIGNATURE:
        attributes: ClassVar[list[str]] = ["image_processor", "tokenizer", "video_processor"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
        video_processor_class = "HybridVLMVideoProcessor"

    def __init__(
        self,
        image_processor: BaseImageProcessor | None = None,
        tokenizer: Any = None,
        video_processor: HybridVLMVideoProcessor | None = None,
        visual_token_spec: VisualTokenSpec | dict[str, Any] | None = None,
        image_token: str = IMAGE_TOKEN,
        video_token: str = VIDEO_TOKEN,
        image_layout: str = "llava",
        video_layout: str = "plain",
        layout_markers: str = "special",
        chat_template: str | dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if image_processor is None or tokenizer is None:
            raise ValueError(f"{_NAME} needs both an image_processor and a tokenizer.")
        # Keys transformers itself may put into a saved processor config; nothing else is silently accepted.
        for key in ("processor_class", "auto_map", "_processor_class"):
            kwargs.pop(key, None)
        spec = _token_spec(visual_token_spec, kwargs)
        if kwargs:
            raise TypeError(f"{_NAME}.__init__ got unexpected keyword argument(s) {sorted(kwargs)}.")
        self.visual_token_spec = spec
        self.image_token_id = token_id_or_none(tokenizer, image_token)
        if self.image_token_id is None:
            raise ValueError(
                f"{_NAME}: the tokenizer does not know the image token {image_token!r}. Add it as a special token "
                "(tokenizer.add_special_tokens) and resize the model's embeddings."
            )
        if tokenizer.encode(image_token, add_special_tokens=False) != [self.image_token_id]:
            raise ValueError(
                f"{_NAME}: the tokenizer splits {image_token!r} into several tokens; it must be one special token."
            )
        if video_layout not in VIDEO_LAYOUTS:
            raise ValueError(f"{_NAME}: unknown video_layout {video_layout!r}; use one of {list(VIDEO_LAYOUTS)}.")
        if image_layout not in IMAGE_LAYOUTS:
            raise ValueError(f"{_NAME}: unknown image_layout {image_layout!r}; use one of {list(IMAGE_LAYOUTS)}.")
        if layout_markers not in MARKER_STYLES:
            raise ValueError(f"{_NAME}: unknown layout_markers {layout_markers!r}; use one of {list(MARKER_STYLES)}.")
        # Checked when a video is processed: an image-only tokenizer without a video token must still work for images.
        self.video_token_id = token_id_or_none(tokenizer, video_token)
        # Layouts are explicit choices: their markers must exist now, not at the first image or video.
        self._image_token_layout = measure_token_layout(tokenizer, image_layout, "image", layout_markers, image_token)
        self._video_token_layout = measure_token_layout(
            tokenizer, video_layout, "video", layout_markers, video_token if self.video_token_id is not None else None
        )
        self.image_token, self.video_token = image_token, video_token
        self.image_layout, self.video_layout, self.layout_markers = image_layout, video_layout, layout_markers
        if video_processor is None:
            # frame counts must be multiples of the frames the tower encodes together (Qwen2-VL: 2)
            patch = spec.video_temporal_patch
            extra = {"temporal_patch_size": patch} if patch > 1 else {}
            video_processor = HybridVLMVideoProcessor.from_image_processor(image_processor, **extra)
        if isinstance(chat_template, str) and chat_template in VIDEO_LAYOUTS:  # a layout's name: its family's template
            chat_template = chat_template_for_layout(chat_template)
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATES[image_layout]
        if image_layout == "longllava" and self._anyres_layout(1, 1, image_processor) is not None:
            check_flat_anyres_packing(spec)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template)

    def to_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The parent's dict (4.x takes `legacy_serialization=`), with the token spec nested (`visual_token_spec`)."""
        output = super().to_dict(*args, **kwargs)
        output["visual_token_spec"] = self.visual_token_spec.to_dict()
        return output

    @classmethod
    def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' constructor from a saved dict, which passes only `__init__`'s named parameters: the flat
        token-count keys of folders saved before the spec was nested are folded into `visual_token_spec` first."""
        processor_dict = dict(processor_dict)
        for key in [k for k in kwargs if k in LEGACY_SPEC_KEYS]:
            processor_dict[key] = kwargs.pop(key)
        legacy = {key: processor_dict.pop(key) for key in list(processor_dict) if key in LEGACY_SPEC_KEYS}
        if legacy:
            processor_dict["visual_token_spec"] = _token_spec(processor_dict.get("visual_token_spec"), legacy)
        return super().from_args_and_dict(args, processor_dict, **kwargs)

    @staticmethod
    def get_possibly_dynamic_module(module_name: str) -> Any:
        """transformers' class lookup, plus the video processor classes it cannot find without torchvision.

        4.x names the video processor by `video_processor_class`; 5.x type-checks against `VideoProcessorMixin`, which
        is not exported when torchvision is missing. Both resolve here so the processor builds and loads anyway.
        """
        if module_name == HybridVLMVideoProcessor.__name__:
            return HybridVLMVideoProcessor
        if module_name == "VideoProcessorMixin":
            from transformers.video_processing_utils import VideoProcessorMixin

            return VideoProcessorMixin
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Load the sub-processors: tokenizer and image processor the parent's way, the video processor our way.

        The parent loads a video processor through `AutoVideoProcessor`, which needs torchvision (or a registration),
        and folders saved before this processor had a video processor have none to load. `HybridVLMVideoProcessor`
        reads its own file, 5.x's nested entry, or else derives one from the saved image processor settings.
        """
        names = _sub_processor_names(cls)
        loaded = iter(
            super(HybridVLMProcessor, _without_video_processor(cls))._get_arguments_from_pretrained(
                pretrained_model_name_or_path, *args, **kwargs
            )
        )
        video_processor = HybridVLMVideoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [video_processor if name == "video_processor" else next(loaded) for name in names]

    @classmethod
    def from_model_config(
        cls,
        config: HybridVLMConfig,
        tokenizer: Any,
        image_processor: BaseImageProcessor | None = None,
        video_processor: HybridVLMVideoProcessor | None = None,
        layout: str | None = None,
        **kwargs: Any,
    ) -> HybridVLMProcessor:
        """The processor that matches `config`: the token spec the model derives (`VisualTokenSpec.from_config`).

        `layout` sets `image_layout` and `video_layout` at once (either may still be given on its own).
        """
        if layout is not None:
            kwargs.setdefault("image_layout", canonical_layout(layout))
            kwargs.setdefault("video_layout", canonical_layout(layout))
        if image_processor is None:
            image_processor = HybridVLMImageProcessor.from_vision_config(
                getattr(config, "vision_configs", None) or config.vision_config
            )
        spec = VisualTokenSpec.from_config(config)
        processor = cls(image_processor, tokenizer, video_processor, visual_token_spec=spec, **kwargs)
        for kind in ("image", "video"):
            config_id, token_id = getattr(config, f"{kind}_token_id", None), getattr(processor, f"{kind}_token_id")
            if config_id is not None and token_id is not None and config_id != token_id:
                token = getattr(processor, f"{kind}_token")
                raise ValueError(
                    f"{_NAME}: the tokenizer gives {token!r} the id {token_id} but the model config has "
                    f"{kind}_token_id={config_id}. Set config.{kind}_token_id to {token_id} (or use the tokenizer the "
                    "model was trained with)."
                )
        return processor

    # ------------------------------------------------------------------ token counts

    def num_image_tokens(self, height: int, width: int) -> int:
        """Image tokens for one image of `height` x `width` pixels as fed to the encoder."""
        return count_image_tokens(self.visual_token_spec, int(height), int(width))

    def _image_runs(self, image_size: Any, grid: Any, tile_size: tuple[int, int]) -> list[int]:
        """Placeholder runs of one image in this processor's image layout (`anyres.image_runs`)."""
        return image_runs(self.visual_token_spec, self._image_token_layout.name, tile_size, image_size, grid)

    def image_token_count(self, height: int, width: int, include_markers: bool = True, **overrides: Any) -> int:
        """Tokens of one image of original size `height` x `width`, without processing pixels.

        With markers: the length of the whole expansion of its `<image>`; without: its image tokens (the features the
        model produces for it). `overrides` are per-call image processor options (`max_tiles=`, ...).
        """
        layout = self._anyres_layout(int(height), int(width), **overrides)
        if layout is not None:
            runs = self._image_runs((height, width), layout.grid, layout.tile_size)
        else:
            if hasattr(self.image_processor, "output_image_size"):
                height, width = self.image_processor.output_image_size(int(height), int(width), **overrides)
            runs = self._image_runs(None, None, (int(height), int(width)))
        return count_layout_tokens(self._image_token_layout, "image", runs, include_markers)

    def replace_image_token(self, image_inputs: dict[str, Any], image_idx: int, **kwargs: Any) -> str:
        """The text that stands for image `image_idx` in the prompt (transformers 5's hook name), in `image_layout`.

        The image token once per visual feature (`count_image_tokens`; AnyRes: `anyres.anyres_token_count`), in the
        runs and with the markers `token_counts.layout_pieces` gives for the layout.
        """
        pixel_values = image_inputs["pixel_values"]
        tile_size = tuple(int(v) for v in pixel_values[image_idx].shape[-2:])
        grid = image_size = None
        if image_inputs.get("image_grids") is not None:
            grid = image_inputs["image_grids"][image_idx]
            image_size = image_inputs["image_sizes"][image_idx]
        runs = self._image_runs(image_size, grid, tile_size)
        return render(layout_pieces(self._image_token_layout, "image", runs), self.image_token)

    def num_video_tokens(self, num_frames: int, height: int, width: int, include_markers: bool = True) -> int:
        """Tokens of one video of `num_frames` frames of `height` x `width` pixels as fed to the encoder.

        With markers: the length of the whole expansion of its `<video>` in this processor's layout. Without: the
        video tokens the model fills with features (the same for every layout).
        """
        return count_video_tokens(
            self.visual_token_spec, int(num_frames), int(height), int(width), self._video_token_layout, include_markers
        )

    def replace_video_token(self, video_inputs: dict[str, Any], video_idx: int, **kwargs: Any) -> str:
        """The text that stands for video `video_idx` in the prompt (transformers 5's hook name), in `video_layout`.

        One run of video tokens per frame (`token_counts.video_runs`), with the markers `token_counts.layout_pieces`
        gives (e.g. `longllava`: `<vid>`, `<img>...</img>` per frame, `<t>`, `</vid>`).
        """
        num_frames, _, height, width = video_inputs["pixel_values_videos"][video_idx].shape
        runs = video_runs(self.visual_token_spec, int(num_frames), int(height), int(width))
        pieces = layout_pieces(self._video_token_layout, "video", runs)
        return render(pieces, self.video_token)

    def _anyres_layout(self, height: int, width: int, image_processor: Any = None, **overrides: Any) -> Any:
        """The image processor's AnyRes grid for an image of this size (with per-call `overrides` such as
        `max_tiles=`), or None in single-resolution mode."""
        processor = image_processor if image_processor is not None else self.image_processor
        if hasattr(processor, "_call_params") and hasattr(processor, "anyres_layout"):
            if not processor._call_params(overrides)["anyres"]:
                return None
            return processor.anyres_layout(height, width, **overrides)
        if getattr(processor, "anyres", None) is False or not hasattr(processor, "anyres_layout"):
            return None
        if not (getattr(processor, "max_tiles", None) or getattr(processor, "image_grid_pinpoints", None)):
            return None
        return processor.anyres_layout(height, width)

    def _get_num_multimodal_tokens(
        self,
        image_sizes: Iterable[Sequence[int]] | None = None,
        video_sizes: Iterable[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> MultiModalData:
        """Tokens per image for original (height, width) sizes and per video for (num_frames, height, width) sizes
        (frames after sampling), without processing pixels (vLLM asks for this)."""
        data: dict[str, Any] = {}
        if image_sizes is not None:
            counts = [self.image_token_count(int(height), int(width)) for height, width in image_sizes]
            data.update(num_image_tokens=counts, num_image_patches=[1] * len(counts))
        if video_sizes is not None:
            data["num_video_tokens"] = [
                self.num_video_tokens(frames, *self.video_processor.output_frame_size(int(height), int(width)))
                for frames, height, width in video_sizes
            ]
        return MultiModalData(**data)

    # ------------------------------------------------------------------ __call__

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        return_tensors: str | None = None,
        padding: bool | str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize `text` with every `<image>` and `<video>` expanded, and process `images` and `videos`.

        Args:
            images: one image, a flat list of images (taken in placeholder order across the batch), or one list of
                images per text sample. PIL images, arrays, tensors or local paths.
            text: a prompt or a list of prompts, with one `<image>` where each image goes and one `<video>` where each
                video goes. Prompts that already start with the tokenizer's BOS token (a rendered chat template) are
                tokenized without the tokenizer's special tokens, so they get no second BOS (unless
                `add_special_tokens=` is given).
            videos: one video, a flat list of videos (in placeholder order across the batch), or one list of videos
                per text sample. A video is a file path, bytes, a file-like object, a (T, H, W, C)/(T, C, H, W)
                array or tensor, or a list of frames. Decoding and sampling options (`num_frames`, `fps`,
                `sampling`, `max_frames`, `max_visual_tokens`, ...) are keyword arguments, flat or in `videos_kwargs`.
            return_tensors: `"pt"`, `"np"` or None (lists).
            padding, truncation, max_length: as for the tokenizer (padding defaults to False, on the tokenizer's
                padding side). Truncation that would cut an image's or a video's tokens raises a ValueError.
            **kwargs: image processor options (`do_resize`, `size`, ...; a flat one applies to video frames too),
                video processor options, and tokenizer options (`padding_side`, `add_special_tokens`,
                `return_offsets_mapping`, ...), flat or as `images_kwargs` / `videos_kwargs` / `text_kwargs`.
                `return_metadata=True` adds `video_metadata` (frame indices, timestamps, ... per video).
                `return_offsets_mapping=True` gives character spans into the text as passed (each image token spans
                its `<image>`); with `return_text_replacement_offsets=True` as well, the spans index the expanded text
                and `text_replacement_offsets` lists the expansions (transformers 5's convention).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when images were given, `pixel_values` and
            `image_sizes`; when videos were given, `pixel_values_videos` (num_videos, frames, 3, H, W), or a list of
            (frames, 3, H, W) when videos differ in frame count or size.
        """
        audio = kwargs.pop("audio", None)
        if audio is not None:
            raise ValueError(f"{_NAME} does not take audio.")
        explicit = {"return_tensors": return_tensors, "padding": padding, "truncation": truncation}
        explicit["max_length"] = max_length
        text_kwargs, image_kwargs, options = self._split_kwargs(kwargs, explicit)

        if text is None:
            if images is not None:
                raise ValueError(
                    f"{_NAME} got images but no text. Pass a prompt with one {self.image_token} placeholder per image, "
                    f"e.g. text='{self.image_token}\\nDescribe the image.'"
                )
            raise ValueError(f"{_NAME} needs text (and optionally images).")
        texts = self._text_batch(text)
        video_inputs, video_replacements = self._process_videos(texts, videos, options["videos_kwargs"])
        flat_images, per_sample = flatten_sample_images(images, len(texts))
        placeholder_counts = [sample.count(self.image_token) for sample in texts]
        check_placeholders(placeholder_counts, flat_images, per_sample, self.image_token, "image")

        image_inputs: dict[str, Any] = {}
        replacements: list[str] = []
        if flat_images:
            image_inputs = dict(self.image_processor(flat_images, **image_kwargs))
            replacements = [self.replace_image_token(image_inputs, i) for i in range(len(flat_images))]
        expanded, replacement_offsets = expand_placeholders(
            texts,
            [
                (self.image_token, "image", replacements, self._image_token_layout),
                (self.video_token, "video", video_replacements, self._video_token_layout),
            ],
        )

        want_offsets = bool(text_kwargs.get("return_offsets_mapping"))
        text_kwargs = self._no_second_bos(texts, text_kwargs)
        encoding = self.tokenizer(expanded, **text_kwargs)
        input_ids = [list(row) for row in encoding["input_ids"]]
        check_visual_tokens_kept(self.tokenizer, input_ids, expanded, texts, text_kwargs, self.image_token, "image")
        if video_replacements:
            check_visual_tokens_kept(
                self.tokenizer, input_ids, expanded, texts, text_kwargs, self.video_token, "video"
            )

        data: dict[str, Any] = dict(encoding)
        if want_offsets and not options["return_text_replacement_offsets"]:
            data["offset_mapping"] = [
                map_offsets_to_input(offsets, replacement_offsets[i])
                for i, offsets in enumerate(encoding["offset_mapping"])
            ]
        if options["return_mm_token_type_ids"]:
            types = {self.image_token_id: _MM_TYPE_IMAGE}
            if video_replacements:
                types[self.video_token_id] = _MM_TYPE_VIDEO
            data["mm_token_type_ids"] = [[types.get(t, 0) for t in row] for row in input_ids]
        data.update(image_inputs)
        pixel_values_videos = video_inputs.get("pixel_values_videos")
        if isinstance(pixel_values_videos, np.ndarray):
            data["pixel_values_videos"] = pixel_values_videos
        output = BatchFeature(data=data, tensor_type=options["return_tensors"])
        if isinstance(pixel_values_videos, list):
            # Videos of different frame counts or sizes cannot be stacked: one array/tensor per video.
            as_tensor = str(options["return_tensors"]) in ("pt", "TensorType.PYTORCH")
            output["pixel_values_videos"] = [torch.from_numpy(v) if as_tensor else v for v in pixel_values_videos]
        if video_replacements and options["return_metadata"]:
            output["video_metadata"] = video_inputs["video_metadata"]
        if options["return_text_replacement_offsets"]:
            # Added after tensor conversion: a list of dicts per sample, never a tensor.
            output["text_replacement_offsets"] = replacement_offsets
        return output

    def _call_kwarg_names(self) -> set[str]:
        """Every keyword `__call__` routes: the modalities' declared options and the nested dict names."""
        names = set(_NESTED_KWARGS)
        for modality in ("text_kwargs", "images_kwargs", "videos_kwargs"):
            names |= set(HybridVLMProcessorKwargs.__annotations__[modality].__annotations__)
        return names

    def _split_kwargs(
        self, kwargs: dict[str, Any], explicit: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Route flat and nested keyword arguments with transformers' `_merge_kwargs` (`HybridVLMProcessorKwargs`).

        Returns (tokenizer kwargs, image processor kwargs, processor options); the video processor's kwargs are in
        `options["videos_kwargs"]`. A key given both flat and nested with different values is an error.
        """
        for key in _IGNORED_KWARGS:
            kwargs.pop(key, None)
        if kwargs.get("audio_kwargs"):
            raise ValueError(f"{_NAME} does not take audio; got audio_kwargs={kwargs['audio_kwargs']}.")
        kwargs.pop("audio_kwargs", None)
        kwargs.update({key: value for key, value in explicit.items() if value is not None})
        for name in _NESTED_KWARGS:
            nested = dict(kwargs.get(name) or {})
            for key in [k for k in nested if k in kwargs]:
                if nested[key] != kwargs[key]:
                    raise TypeError(
                        f"{_NAME}: `{key}` was passed both as a keyword and in {name}, with different values."
                    )
                del nested[key]  # the same value flat: the flat key reaches this modality anyway
            if name in kwargs:
                kwargs[name] = nested
        # No tokenizer_init_kwargs: transformers would copy every init setting of the tokenizer whose name any
        # modality declares into that modality (a 5.x tokenizer's `backend="tokenizers"` into the video `backend`).
        merged = merge_processor_kwargs(self, HybridVLMProcessorKwargs, **kwargs)
        text_kwargs, image_kwargs, video_kwargs = (
            merged[name] for name in ("text_kwargs", "images_kwargs", "videos_kwargs")
        )
        options: dict[str, Any] = {"return_tensors": text_kwargs.pop("return_tensors", None)}
        for name in _TEXT_OPTIONS:  # transformers 5 also keeps them flat in the merged dict
            options[name] = bool(text_kwargs.pop(name, merged.get(name, False)))
        text_kwargs.pop("sanitize_control_tokens", None)
        for modality_kwargs in (image_kwargs, video_kwargs):
            modality_kwargs.pop("return_tensors", None)
        options["return_metadata"] = bool(video_kwargs.pop("return_metadata", False))
        options["videos_kwargs"] = video_kwargs
        if text_kwargs.get("return_overflowing_tokens"):
            raise ValueError(
                f"{_NAME}: return_overflowing_tokens would split prompts across rows and separate image tokens from "
                "their pixels; raise max_length instead."
            )
        if str(image_kwargs.get("data_format") or "channels_first") not in ("channels_first", "ChannelDimension.FIRST"):
            raise ValueError(f"{_NAME}: the model takes channels-first pixel_values; drop data_format.")
        return text_kwargs, image_kwargs, options

    def _no_second_bos(self, texts: list[str], text_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Prompts that already start with the BOS token (a rendered chat template writes it) are tokenized without
        the tokenizer's special tokens, so they get no second BOS; the rule transformers' `apply_chat_template` uses.
        An explicit `add_special_tokens` always wins."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if "add_special_tokens" in text_kwargs or not bos:
            return text_kwargs
        starts = [sample.startswith(str(bos)) for sample in texts]
        if not any(starts):
            return text_kwargs
        if not all(starts):
            raise ValueError(
                f"{_NAME}: some prompts of this batch start with the BOS token {str(bos)!r} and some do not, so the "
                "tokenizer would add a second BOS to some of them. Render every prompt the same way (e.g. all with "
                "apply_chat_template), or pass add_special_tokens=True/False to decide for the whole batch."
            )
        return {**text_kwargs, "add_special_tokens": False}

    def _text_batch(self, text: Any) -> list[str]:
        if isinstance(text, str):
            return [text]
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            if not text:
                raise ValueError(f"{_NAME}: got an empty list of texts.")
            return list(text)
        raise TypeError(f"{_NAME}: text must be a string or a list of strings, got {type(text).__name__}.")

    def _process_videos(
        self, texts: list[str], videos: Any, video_kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        """Decode, sample and process `videos`; return the video processor's output and one expansion per video."""
        counts = [sample.count(self.video_token) for sample in texts]
        if videos is None and not any(counts):
            return {}, []
        flat, per_sample = flatten_sample_videos(videos, len(texts))
        check_placeholders(counts, flat, per_sample, self.video_token, "video")
        if not flat:
            return {}, []
        if self.video_token_id is None:
            raise ValueError(
                f"{_NAME}: the tokenizer does not know the video token {self.video_token!r}. Add it as a special token "
                "(tokenizer.add_special_tokens), resize the model's embeddings and set config.video_token_id."
            )
        single_token_id(self.tokenizer, self.video_token, "the video token")
        kwargs = dict(video_kwargs)
        # The video processor needs the token spec and the layout to turn a max_visual_tokens budget into frames.
        kwargs.update(
            visual_token_spec=self.visual_token_spec, video_layout=self._video_token_layout, return_metadata=True
        )
        video_inputs = dict(self.video_processor(flat, return_tensors=None, **kwargs))
        replacements = [self.replace_video_token(video_inputs, i) for i in range(len(flat))]
        return video_inputs, replacements

    # ------------------------------------------------------------------ chat template

    def apply_chat_template(
        self, conversation: Any, chat_template: str | None = None, **kwargs: Any
    ) -> str | list[str] | BatchFeature | Any:
        """transformers' `apply_chat_template`, plus media given separately and 4.x's string-content crash fixed.

        `images=` / `videos=`: media for `{"type": "image"}` / `{"type": "video"}` blocks that carry none, in order
        (one list per conversation for a batch, or a flat list). Everything else is the parent's: content blocks with
        an `"image"` / `"video"` (or url/path) key supply the media (a video as a path, bytes, a file-like object, an
        array or a list of frames; TRL sends videos this way), `tokenize=True, return_dict=True` returns this
        processor's `__call__` output (video options such as `num_frames`/`fps` pass through), and
        `return_assistant_tokens_mask=True` marks assistant tokens (the offsets `__call__` returns keep that right with
        expanded image and video tokens on both lines). A video block may also give its frames in order as
        `{"type": "video", "frames": [image or path, ...]}`.
        """
        images = kwargs.pop("images", None)
        videos = kwargs.pop("videos", None)
        tokenize = bool(kwargs.get("tokenize", False))
        routes_kwargs = CHAT_TEMPLATE_TAKES_PROCESSOR_KWARGS
        frames = has_frame_blocks(conversation)
        if images is not None or videos is not None or (tokenize and not routes_kwargs) or frames:
            conversation = prepare_conversations(
                conversation, images, blocks_for_strings=not routes_kwargs, videos=videos
            )
        if routes_kwargs and tokenize:
            # 5.x routes unknown kwargs to __call__ anyway, but warns on every call (TRL's collator passes padding=).
            processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
            # the parent's own parameters (return_tensors, ...) stay with it
            known = self._call_kwarg_names() - set(inspect.signature(ProcessorMixin.apply_chat_template).parameters)
            for key in [k for k in kwargs if k in known]:
                if key in processor_kwargs:
                    raise TypeError(f"{_NAME}: `{key}` was passed both as a keyword and in processor_kwargs.")
                processor_kwargs[key] = kwargs.pop(key)
            kwargs["processor_kwargs"] = processor_kwargs
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    # ------------------------------------------------------------------ decoding, names, saving

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        """What `__call__` returns for the model: the tokenizer's names (no token_type_ids), image and video inputs."""
        names = [n for n in self.tokenizer.model_input_names if n != "token_type_ids"]
        names += list(getattr(self.image_processor, "model_input_names", ["pixel_values"])) + ["image_sizes"]
        if self._anyres_layout(1, 1) is not None:
            names += ["image_grids", "num_patches"]
        names += list(getattr(self.video_processor, "model_input_names", ["pixel_values_videos"]))
        return list(dict.fromkeys(names))

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        push_to_hub: bool = False,
        remote_code: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Save a folder that `AutoProcessor.from_pretrained` loads on transformers 4.57 and 5.x alike.

        On top of the parent's files: tokenizer files rewritten to what both lines read, and the image and video
        processors also in `preprocessor_config.json` and `video_preprocessor_config.json` (5.x nests them in
        `processor_config.json` only). With `remote_code=True`
        the processing modules are copied in too, for `trust_remote_code=True` loading without this package.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("repo_id", "commit_message", "token", "private")}
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        directory = Path(save_directory)
        make_tokenizer_files_portable(directory, tokenizer=self.tokenizer)
        # Always rewritten (never left over from an earlier save): 4.x loads the image processor from this file.
        record_processor_class(self.image_processor, self.__class__.__name__)
        write_text_atomic(directory / _IMAGE_PROCESSOR_FILE, self.image_processor.to_json_string())
        write_text_atomic(directory / VIDEO_PROCESSOR_FILE, self.video_processor.to_json_string())
        if remote_code:
            write_processor_remote_code(directory)
            _nest_auto_map(directory / "processor_config.json")
        if push_to_hub:
            # push_to_hub saves again through this method into a temporary folder, so the upload is portable too.
            repo_id = hub_kwargs.pop("repo_id", None) or directory.resolve().name
            self.push_to_hub(repo_id, **hub_kwargs)
        return files


def _nest_auto_map(processor_config: Path) -> None:
    """5.x reads the sub-processors from the dicts nested in processor_config.json; they need the auto_map too."""
    data = json.loads(processor_config.read_text(encoding="utf-8"))
    auto_map = data.get("auto_map") or {}
    changed = False
    for name in ("image_processor", "video_processor"):
        nested = data.get(name)
        if isinstance(nested, dict) and auto_map and nested.get("auto_map") != auto_map:
            nested["auto_map"] = auto_map
            changed = True
    if changed:
        write_text_atomic(processor_config, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _sub_processor_names(cls: type) -> list[str]:
    """The processor's sub-processor attributes, in `__init__` order (4.x: `attributes`; 5.x: from the signature)."""
    return processor_attribute_names(cls)


@functools.cache
def _without_video_processor(cls: type) -> type:
    """A view of `cls` whose sub-processors exclude the video processor: the parent loads the others through it."""
    names = [name for name in _sub_processor_names(cls) if name != "video_processor"]
    return processor_view_with_attributes(cls, names)


__all__ = ["HybridVLMProcessor", "HybridVLMProcessorKwargs"]
