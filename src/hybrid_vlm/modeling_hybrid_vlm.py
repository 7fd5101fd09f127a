"""HybridVLM: a vision encoder and a projector in front of any causal language model transformers ships.

The layout follows transformers 5's VLMs (`model.vision_tower`, `model.multi_modal_projector`,
`model.language_model`, `lm_head`), so checkpoints and tooling written for LLaVA-style models apply.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tempfile
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    ModelOutput,
)
from transformers.utils import logging

from .anyres import (
    anyres_token_count,
    llava_next_layouts,
    pack_anyres_features,
    pool_2d,
    select_real_views,
    view_feature_grid,
)
from .caching import (
    cache_seq_length,
    new_language_model_cache,
    note_tokens_seen,
    reorder_state_cache,
)
from .chunked_prefill import generate_with_chunked_prefill
from .compat import (
    CACHE_NAMES,
    EMBEDDING_TP_STYLE,
    FEATURE_GETTERS_RETURN_MODEL_OUTPUT,
    GENERATE_CACHE_NAME,
    GENERATE_DROPS_VISUAL_INPUTS_AFTER_PREFILL,
    LM_HEAD_TP_STYLE,
    cache_argument,
    cache_output_kwargs,
    cast_mixer_outputs_to_projection_dtype,
    continuation_length,
    legacy_cache_position,
    model_output,
    output_cache,
    prefill_of_an_empty_cache,
    restore_recurrent_states,
    snapshot_recurrent_states,
    standard_cache_holds_ssm_state,
    take_cache,
    tied_weights_keys,
    warn_if_old_cache_name,
)
from .config_options import VambaOptions
from .configuration_hybrid_vlm import HybridVLMConfig
from .hub import write_model_card
from .model_types import SSM_ONLY_MODEL_TYPES, has_ssm_layers
from .path_report import install_kernel_fallback_filter, use_torch_ssm_path_where_needed
from .precision import warn_if_fp16_with_ssm
from .projectors import build_projector, init_projector_module
from .qwen2vl_vision import Qwen2VLVisionEncoder  # noqa: F401 (direct import: 4.x remote code copies it)
from .remote_code import write_model_remote_code
from .ssm import SSM_FP32_PARAMETERS  # (also a direct import so transformers 4.x remote code copies ssm.py)
from .ssm_engine import engine_serves_every_ssm_layer, install_ssm_engine
from .token_counts import VisualTokenSpec, count_image_tokens, count_video_tokens, video_groups
from .vision_encoders import (  # noqa: F401 (UnwrappedVisionModel: public name kept here)
    UnwrappedVisionModel,
    build_vision_tower,
    encode_patch_maps,
    vision_no_split_modules,
)

install_kernel_fallback_filter()  # one note of ours instead of transformers' per-kernel "falling back" lines

logger = logging.get_logger(__name__)



@model_output
class HybridVLMModelOutputWithPast(BaseModelOutputWithPast):
    """Base model outputs plus the visual features that were scattered into the sequence."""

    router_logits: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: Any = None  # transformers 5.x VLMs: the image encoder's BaseModelOutputWithPooling


@model_output
class HybridVLMCausalLMOutputWithPast(ModelOutput):
    """Causal LM outputs; `aux_loss` is the MoE load-balancing loss when the LM has a router. The cache field is
    named as the installed transformers names it (`OUTPUT_CACHE_FIELD`)."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Any = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: Any = None


class HybridVLMPreTrainedModel(PreTrainedModel):
    config_class = HybridVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []  # the sub-models' own lists are collected by transformers
    _skip_keys_device_placement = list(CACHE_NAMES)
    _keep_in_fp32_modules = None  # set per instance in post_init: which SSM parameters exist depends on the LM
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _supports_cache_class = True
    _is_stateful = False  # set per instance when the LM is recurrent

    def save_pretrained(
        self, save_directory: str, *args: Any, remote_code: bool = False, model_card: bool = True, **kwargs: Any
    ) -> None:
        """`save_pretrained`; with `remote_code=True` the folder also loads with `trust_remote_code=True` in an
        environment without hybrid_vlm (the modules are copied next to the weights). `model_card`: write a README.md
        with Hub metadata (hub.write_model_card; never replaces a README.md the user wrote)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if remote_code:
            write_model_remote_code(save_directory)
        if model_card and kwargs.get("is_main_process", True):
            write_model_card(save_directory, self, remote_code=remote_code)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        processor: Any = None,
        remote_code: bool = True,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
        **kwargs: Any,
    ) -> Any:
        """Upload the folder `save_pretrained` writes (weights, config, model card, remote code and, when given,
        `processor`) in one commit. transformers' own `push_to_hub` would save without the remote code and replace
        the model card with its generic one."""
        from huggingface_hub import HfApi

        unknown = sorted(set(kwargs) - {"use_temp_dir", "safe_serialization", "commit_description", "tags"})
        if unknown:
            raise TypeError(f"push_to_hub got unexpected keyword argument(s) {unknown}.")
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, remote_code=remote_code, max_shard_size=max_shard_size)
            if processor is not None:
                processor.save_pretrained(folder, remote_code=remote_code)
            return api.upload_folder(
                repo_id=getattr(repo, "repo_id", repo_id), folder_path=folder, repo_type="model",
                commit_message=commit_message or "Upload HybridVLM model", revision=revision, create_pr=create_pr,
                commit_description=kwargs.get("commit_description"),
            )

    def post_init(self) -> None:
        super().post_init()
        # transformers keeps these in fp32 when loading in fp16. Only names the model really has are
        # listed: transformers 4.x rejects names that match no parameter.
        names = {part for name, _ in self.named_parameters() for part in name.split(".")}
        # A set, as transformers 5 keeps it (it combines it with the strict set); transformers 4.x iterates it.
        keep = set(self._keep_in_fp32_modules or []) | {name for name in SSM_FP32_PARAMETERS if name in names}
        self._keep_in_fp32_modules = keep
        # Our own SSM mixers (Vamba's visual stream, the Mamba projector) keep those parameters in fp32 under any
        # cast, bf16 included: transformers' strict list says so (by full path, so the LM's own are not affected).
        parameters = dict(self.named_parameters())
        self._keep_in_fp32_modules_strict = {
            f"{module_name}.{name}"
            for module_name, module in self.named_modules()
            if getattr(module, "keep_fp32_parameters", False)
            for name in SSM_FP32_PARAMETERS
            if f"{module_name}.{name}" in parameters
        }

    def _init_weights(self, module: nn.Module) -> None:
        """Our own layers (projector, Vamba's cross-attention and visual mixers) are initialised here.

        The vision tower and a plain LM initialise themselves when built (transformers then skips their modules);
        everything else falls back to transformers' generic init, which on 5.x also rebuilds non-persistent
        buffers such as rotary `inv_freq` after a meta-device load.
        """
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if self.config.decoder_type == "vamba":
            from .vamba import init_vamba_module

            options = VambaOptions.from_dict(self.config.vamba_options)
            if init_vamba_module(module, options, self.config.text_config.num_hidden_layers, std):
                return
        if _is_projector_module(self, module) and init_projector_module(module, std):
            return
        super()._init_weights(module)


def _is_projector_module(model: nn.Module, module: nn.Module) -> bool:
    projector = getattr(getattr(model, "model", model), "multi_modal_projector", None)
    return projector is not None and any(module is m for m in projector.modules())


class HybridVLMModel(HybridVLMPreTrainedModel):
    """Vision tower + projector + language model (without the LM head)."""

    def __init__(self, config: HybridVLMConfig) -> None:
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_configs)
        self.multi_modal_projector = build_projector(config, self._vision_feature_width())
        if config.image_newline:  # LLaVA-NeXT's learned end-of-row embedding for AnyRes tiles
            hidden = config.text_config.hidden_size
            self.image_newline = nn.Parameter(torch.randn(hidden) / hidden**0.5)
        if config.decoder_type == "vamba":
            from .vamba import VambaLanguageModel

            self.language_model = VambaLanguageModel(config.text_config, config.vamba_options)
        else:
            self.language_model = AutoModel.from_config(config.text_config)
        use_torch_ssm_path_where_needed(self.language_model)
        install_ssm_engine(self.language_model, enabled=getattr(config, "ssm_engine", True))
        cast_mixer_outputs_to_projection_dtype(self.language_model)  # its SSM parameters stay fp32 in a half model
        self._is_stateful = has_ssm_layers(config.text_config)
        vision_no_split = vision_no_split_modules(config.vision_configs)
        vision_no_split |= set(getattr(self.vision_tower, "_no_split_modules", None) or [])  # seam towers (Qwen2-VL)
        self._no_split_modules = sorted(set(self._no_split_modules or []) | vision_no_split)
        lm_parameters = inspect.signature(self.language_model.forward).parameters
        self._lm_arguments = frozenset(lm_parameters)
        # LMs that read output_attentions & co. from `**kwargs` (transformers' output-capturing decorators)
        self._lm_takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in lm_parameters.values())
        self._cache_argument = cache_argument(self.language_model.forward, default=GENERATE_CACHE_NAME)
        self.post_init()

    def _vision_feature_width(self) -> int | tuple[int, ...]:
        """What the projector is fed: one width, or one per encoder when encoders are fused along the sequence."""
        widths = getattr(self.vision_tower, "map_widths", None)
        if callable(widths):
            widths = widths(len(self.config.vision_feature_layers))
        if widths is None:
            widths = (self.config.vision_config.hidden_size * len(self.config.vision_feature_layers),)
        widths = tuple(int(w) for w in widths)
        if len(widths) > 1 and self.config.vision_fusion == "sequence":
            return widths
        return sum(widths)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @property
    def visual_token_spec(self) -> VisualTokenSpec:
        return VisualTokenSpec.from_config(self.config)

    def _encode_views(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: Any = None,
        strategy: str | None = None,
        frames_per_patch: int = 1,
        tower_outputs: list | None = None,
        output_attentions: bool = False,
    ) -> torch.FloatTensor:
        """Vision tower -> chosen layers -> prefix selection -> optional 2-D pooling -> projector, per view.

        `tower_outputs`, when given, receives the vision tower's own output (see `encode_patch_maps`), or, for
        towers that are not one transformers encoder, a `BaseModelOutput` of the patch maps the projector reads.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        layers = self.config.vision_feature_layers if vision_feature_layer is None else vision_feature_layer
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        strategy = strategy or self.config.vision_feature_select_strategy
        spec = dataclasses.replace(self.visual_token_spec, vision_feature_select_strategy=strategy)
        collected: list = []
        maps, prefix = encode_patch_maps(
            self.vision_tower, pixel_values, layers, spec.num_prefix_tokens, frames_per_patch=frames_per_patch,
            tower_outputs=collected, output_attentions=output_attentions,
        )
        if tower_outputs is not None:
            tower_outputs.extend(collected or [BaseModelOutput(last_hidden_state=torch.cat(maps, dim=-1))])
        if spec.vision_feature_select_strategy != "full":
            prefix = None
        height, width = (int(v) for v in pixel_values.shape[-2:])
        grid = (height // spec.patch_size, width // spec.patch_size)
        for patches in maps:
            if patches.shape[1] != grid[0] * grid[1]:
                raise ValueError(
                    f"The vision tower produced {patches.shape[1]} patch tokens per {height}x{width} image, not a "
                    f"{grid[0]}x{grid[1]} grid; the vision config does not describe this encoder."
                )
        pooled = self.config.vision_pooled_grid  # model-side pooling; the pool2d/pool1d projectors pool inside
        if pooled is not None:
            maps = [pool_2d(patches, pooled, grid) for patches in maps]
            grid = (pooled, pooled)
        if len(maps) > 1 and self.config.vision_fusion == "sequence":
            features = tuple(maps)  # the projector takes one map per encoder and returns them in order
        else:
            patches = maps[0] if len(maps) == 1 else torch.cat(maps, dim=-1)  # channel fusion (Cobra)
            features = patches if prefix is None else torch.cat([prefix, patches], dim=1)
        projected = self.multi_modal_projector(features, grid=grid)
        expected = count_image_tokens(spec, height, width)
        if projected.shape[1] != expected:
            raise ValueError(
                f"The projector produced {projected.shape[1]} tokens per {height}x{width} image but the token-count "
                f"function expects {expected}; the config's projector settings and the projector disagree."
            )
        return projected

    def _image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        num_patches: torch.Tensor | None = None,
        tower_outputs: list | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> torch.FloatTensor | list[torch.FloatTensor]:
        """Encode and project images (what `get_image_features` returns on transformers 4.x).

        Single resolution (`pixel_values` of shape (num_images, 3, H, W)): `(num_images, tokens, hidden)`.
        AnyRes (`(num_images, max_views, 3, H, W)` with `image_sizes`, `image_grids`, `num_patches` from the
        processor): one `(tokens_i, hidden)` tensor per image, views packed as `anyres.pack_anyres_features` says.
        """
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if pixel_values.dim() != 5:
            return self._encode_views(
                pixel_values, vision_feature_layer, strategy, tower_outputs=tower_outputs,
                output_attentions=output_attentions,
            )
        image_sizes, image_grids, num_patches = self._anyres_layouts(
            pixel_values, image_sizes, image_grids, num_patches
        )
        if self.visual_token_spec.num_maps > 1:
            raise ValueError(
                "AnyRes tiles cannot be stitched when several encoders are fused along the sequence "
                "(vision_fusion='sequence'); use vision_fusion='channel' or a processor without AnyRes (anyres=False)."
            )
        views = self._encode_views(
            select_real_views(pixel_values, num_patches), vision_feature_layer, strategy,
            tower_outputs=tower_outputs, output_attentions=output_attentions,
        )
        spec = dataclasses.replace(self.visual_token_spec, vision_feature_select_strategy=strategy)
        tile = tuple(int(v) for v in pixel_values.shape[-2:])
        prefix, feature_grid = view_feature_grid(spec, tile)
        newline = self.image_newline if self.config.image_newline else None
        packed = []
        for features, grid, size in zip(views.split(num_patches.tolist()), image_grids.tolist(), image_sizes.tolist()):
            tokens = pack_anyres_features(
                features[0], features[1:], grid, size, newline_embedding=newline, unpad=self.config.anyres_unpad,
                num_prefix_tokens=prefix, feature_grid=feature_grid, merge=self.config.anyres_merge,
                max_feature_tiles=self.config.anyres_max_feature_tiles,
            )
            expected = self._anyres_count(spec, size, grid, tile)
            if tokens.shape[0] != expected:
                raise ValueError(
                    f"AnyRes packing produced {tokens.shape[0]} tokens for a {size[0]}x{size[1]} image on a "
                    f"{grid[0]}x{grid[1]} grid but the token-count function expects {expected}."
                )
            packed.append(tokens)
        return packed

    def _anyres_layouts(
        self, pixel_values: torch.Tensor, image_sizes: Any, image_grids: Any, num_patches: Any
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """`(image_sizes, image_grids, num_patches)` of AnyRes pixels, as tensors. transformers' `LlavaNextProcessor`
        returns only `image_sizes`; the grids then follow from `config.image_grid_pinpoints`, as in transformers'
        LLaVA-NeXT."""
        num_images, max_views = int(pixel_values.shape[0]), int(pixel_values.shape[1])
        if image_sizes is None:
            raise ValueError(
                "AnyRes pixel_values (num_images, views, 3, H, W) need image_sizes, each image's original (height, "
                "width) (HybridVLMProcessor and LlavaNextProcessor return them with the pixels)."
            )
        image_sizes = torch.as_tensor(image_sizes)
        if tuple(image_sizes.shape) != (num_images, 2):
            raise ValueError(
                f"image_sizes has shape {tuple(image_sizes.shape)} but pixel_values holds {num_images} image(s): give "
                "one (height, width) per image."
            )
        if image_grids is None:
            pinpoints = self.config.image_grid_pinpoints
            tile = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
            if pinpoints is None or tile[0] != tile[1]:
                raise ValueError(
                    "AnyRes pixel_values came without image_grids, and the grids can only be derived from image_sizes "
                    "with config.image_grid_pinpoints and square views; pass image_grids and num_patches "
                    "(HybridVLMProcessor returns them) or set config.image_grid_pinpoints."
                )
            grids, views = llava_next_layouts(image_sizes, pinpoints, tile[0])
            image_grids = torch.tensor(grids, dtype=torch.long)
            if num_patches is None:
                num_patches = torch.tensor(views, dtype=torch.long)
            if max(views) > max_views:
                raise ValueError(
                    f"image_sizes {image_sizes.tolist()} with config.image_grid_pinpoints give {views} views per image "
                    f"but pixel_values holds at most {max_views}: the sizes do not belong to these pixels (or the "
                    "processor used other pinpoints)."
                )
        image_grids = torch.as_tensor(image_grids)
        if num_patches is None:
            num_patches = 1 + image_grids[:, 0] * image_grids[:, 1]
        return image_sizes, image_grids, torch.as_tensor(num_patches)

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> torch.FloatTensor | list[torch.FloatTensor] | BaseModelOutputWithPooling | tuple:
        """Encode and project images, answering as transformers' VLMs do on the installed line.

        Single resolution (`pixel_values` of shape (num_images, 3, H, W)): `(num_images, tokens, hidden)`.
        AnyRes (`(num_images, max_views, 3, H, W)` with `image_sizes`, `image_grids`, `num_patches` from the
        processor): one `(tokens_i, hidden)` tensor per image, views packed as `anyres.pack_anyres_features` says.
        Where transformers' VLMs return a `BaseModelOutputWithPooling` (5.x), so does this: `pooler_output` holds
        those features, `last_hidden_state` the vision tower's (one row per encoded view or frame), `hidden_states`
        and `attentions` the tower's on request, and `return_dict=False` gives a tuple. `compat.projected_features`
        reads the features on either line.
        """
        return self._visual_output(
            self._image_features, dict(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, **kwargs),
            output_hidden_states, output_attentions, return_dict,
        )

    def _visual_output(
        self,
        encode: Any,
        inputs: dict[str, Any],
        output_hidden_states: bool | None,
        output_attentions: bool | None,
        return_dict: bool | None,
    ) -> Any:
        if not FEATURE_GETTERS_RETURN_MODEL_OUTPUT:
            return encode(**inputs)
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        if output_attentions is None:
            output_attentions = bool(getattr(self.config, "output_attentions", False))
        tower_outputs: list = []
        features = encode(**inputs, tower_outputs=tower_outputs, output_attentions=output_attentions)
        tower = tower_outputs[0] if tower_outputs else None  # (none when the encoder is replaced, as benchmarks do)
        result = BaseModelOutputWithPooling(
            last_hidden_state=getattr(tower, "last_hidden_state", None),
            pooler_output=features,
            hidden_states=getattr(tower, "hidden_states", None) if output_hidden_states else None,
            attentions=getattr(tower, "attentions", None) if output_attentions else None,
        )
        return result if _wants_dict(self.config, return_dict) else result.to_tuple()

    def _anyres_count(self, spec: VisualTokenSpec, size: Any, grid: Any, tile: Any) -> int:
        return anyres_token_count(
            spec, tuple(size), tuple(grid), tuple(tile), newline=self.config.image_newline,
            unpad=self.config.anyres_unpad,
        )

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | list[torch.Tensor],
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> list[torch.Tensor] | BaseModelOutputWithPooling | tuple:
        """Encode every frame like an image: one `(frames * tokens_per_frame, hidden)` tensor per video.

        With `video_pool_stride` each frame's projected grid is pooled first, and with `video_newline` the learned
        newline follows each video (LLaVA-OneVision). On 5.x a `BaseModelOutputWithPooling` holding them, as
        `get_image_features` says (the tower's outputs have one row per encoded frame, as in LLaVA-OneVision).
        """
        return self._visual_output(
            self._video_features, {"pixel_values_videos": pixel_values_videos},
            output_hidden_states, output_attentions, return_dict,
        )

    def _video_features(
        self,
        pixel_values_videos: torch.Tensor | list[torch.Tensor],
        tower_outputs: list | None = None,
        output_attentions: bool = False,
    ) -> list[torch.Tensor]:
        videos = _video_list(pixel_values_videos)
        frames = torch.cat(videos, dim=0)
        patch = self.visual_token_spec.video_temporal_patch
        if patch > 1:  # Qwen2-VL: consecutive frames form one temporal patch, one token grid per group
            for video in videos:
                video_groups(self.visual_token_spec, int(video.shape[0]))  # a clear error for an odd frame count
            features = self._encode_views(
                frames, frames_per_patch=patch, tower_outputs=tower_outputs, output_attentions=output_attentions
            )
            videos = [video[::patch] for video in videos]  # one row of features per group from here on
        else:
            features = self._image_features(frames, tower_outputs=tower_outputs, output_attentions=output_attentions)
        stride = self.config.video_pool_stride
        if stride is not None:
            height, width = (int(v) // self.visual_token_spec.patch_size for v in frames.shape[-2:])
            grid = features.transpose(1, 2).reshape(features.shape[0], features.shape[-1], height, width)
            size = (math.ceil(height / stride), math.ceil(width / stride))
            features = nn.functional.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            features = features.flatten(2).transpose(1, 2)
        per_video = [v.shape[0] for v in videos]
        outputs = [f.reshape(-1, f.shape[-1]) for f in torch.split(features, per_video, dim=0)]
        if self.config.video_newline:
            newline = self.image_newline[None].to(features.dtype)
            outputs = [torch.cat([f, newline], dim=0) for f in outputs]
        return outputs

    def _image_token_counts(
        self, pixel_values: torch.FloatTensor, image_sizes: Any = None, image_grids: Any = None
    ) -> list[int]:
        tile = (int(pixel_values.shape[-2]), int(pixel_values.shape[-1]))
        if pixel_values.dim() == 5 and image_sizes is not None and image_grids is not None:
            spec = self.visual_token_spec
            return [self._anyres_count(spec, s, g, tile) for s, g in zip(image_sizes.tolist(), image_grids.tolist())]
        return [count_image_tokens(self.visual_token_spec, *tile)] * pixel_values.shape[0]

    def _video_token_counts(self, pixel_values_videos: torch.FloatTensor | list[torch.FloatTensor]) -> list[int]:
        spec = self.visual_token_spec
        return [
            count_video_tokens(spec, v.shape[0], int(v.shape[-2]), int(v.shape[-1]), include_markers=False)
            for v in _video_list(pixel_values_videos)
        ]

    @staticmethod
    def _items_not_in_cache(input_ids: torch.LongTensor, token_id: int, counts: list[int]) -> int | None:
        """How many trailing images/videos have their placeholders in the new tokens of a cache continuation.

        A multi-turn caller passes every image of the conversation; those of earlier turns are already encoded in
        the cache and their placeholders are not part of `input_ids` any more. None: the numbers do not add up
        (the strict check then reports them).
        """
        remaining = int((input_ids == token_id).sum())
        kept = 0
        for count in reversed(counts):
            if remaining <= 0:
                break
            remaining -= count
            kept += 1
        return kept if remaining == 0 else None

    def _placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, token_id: int
    ) -> torch.BoolTensor:
        if input_ids is not None:
            return input_ids == token_id
        placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == placeholder).all(-1)

    def _merge_visual_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        features: list[torch.Tensor],
        kind: str,
    ) -> torch.FloatTensor:
        """Scatter per-item features (`(tokens, hidden)` each) into the placeholder positions, after checking counts."""
        token_id = getattr(self.config, f"{kind}_token_id")
        if token_id is None:
            raise ValueError(f"{kind} inputs were given but config.{kind}_token_id is None; set the placeholder id.")
        mask = self._placeholder_mask(input_ids, inputs_embeds, token_id)
        num_placeholders = int(mask.sum())
        counts = [f.shape[0] for f in features]
        if num_placeholders != sum(counts):
            raise ValueError(
                f"{kind.capitalize()} features and {kind} tokens do not match: the input has {num_placeholders} {kind} "
                f"placeholder tokens (id {token_id}) but {len(counts)} {kind}(s) give {sum(counts)} feature tokens "
                f"({', '.join(map(str, counts))}). Build inputs with HybridVLMProcessor, which expands each <{kind}> "
                "with the same token-count function, and never truncate inside visual tokens (raise max_length or "
                f"drop the {kind})."
            )
        flat = torch.cat(features, dim=0).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds), flat)

    def _visual_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, *visual_inputs: Any
    ) -> torch.BoolTensor | None:
        """Vamba splits the sequence into a text and a visual stream: which positions are visual."""
        if self.config.decoder_type != "vamba":
            return None
        mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        for kind, values in zip(("image", "video"), visual_inputs):
            token_id = getattr(self.config, f"{kind}_token_id")
            if values is not None and token_id is not None:
                mask |= self._placeholder_mask(input_ids, inputs_embeds, token_id)
        return mask

    def _visual_grid_positions(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, embedded: dict[str, Any]
    ) -> torch.LongTensor:
        """(3, batch, seq): each visual placeholder's (t, h, w) in its own token grid, from 0 for every image and
        video (an image is one temporal step; a video one per temporal patch), in the order features are scattered.
        What Vamba's cross-attention keys are rotated by with `cross_attention_key_positions="grid"`."""
        positions = torch.zeros(3, *inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        patch = self.visual_token_spec.patch_size
        for kind, values in embedded.items():
            if kind == "image" and isinstance(values, torch.Tensor) and values.dim() == 5:
                raise ValueError("grid key positions are defined for single-resolution images, not AnyRes tiles.")
            items = list(values) if kind == "image" else _video_list(values)
            steps = 1 if kind == "image" else self.visual_token_spec.video_temporal_patch
            grids = []
            for item in items:
                frames = 1 if kind == "image" else int(item.shape[0]) // steps
                rows, cols = int(item.shape[-2]) // patch, int(item.shape[-1]) // patch
                t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
                grids.append(torch.stack([t.flatten(), h.flatten(), w.flatten()]))
            flat = torch.cat(grids, dim=1).to(positions.device)
            mask = self._placeholder_mask(input_ids, inputs_embeds, getattr(self.config, f"{kind}_token_id"))
            if int(mask.sum()) != flat.shape[1]:
                raise ValueError(
                    f"{kind} grid positions: {flat.shape[1]} visual tokens for {int(mask.sum())} placeholders."
                )
            positions[:, mask] = flat
        return positions

    def _embed_visual_inputs(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        image_inputs: dict[str, Any],
        pixel_values_videos: Any,
        past_length: int,
        embedded: dict[str, Any] | None = None,
        encoder_outputs: dict[str, Any] | None = None,
        output_flags: tuple[bool | None, bool | None] = (None, None),
    ) -> tuple[torch.FloatTensor, Any]:
        """Encode images and videos whose placeholders are in this chunk and scatter them in.

        `image_inputs` holds `pixel_values` and, for AnyRes, `image_sizes`, `image_grids`, `num_patches`.
        `embedded`, when given, receives the pixels of the items scattered in, per kind ("image", "video").
        `encoder_outputs`, when given, receives the image encoder's output as `get_image_features` returns it on
        transformers 5.x (with hidden states / attentions per `output_flags`), which 5.x VLM outputs carry.
        """
        image_features = None
        for kind in ("image", "video"):
            token_id = getattr(self.config, f"{kind}_token_id")
            values = image_inputs.get("pixel_values") if kind == "image" else pixel_values_videos
            if values is not None and past_length > 0 and input_ids is not None and token_id is not None:
                if kind == "image":
                    counts = self._image_token_counts(
                        values, image_inputs.get("image_sizes"), image_inputs.get("image_grids")
                    )
                else:
                    counts = self._video_token_counts(values)
                kept = self._items_not_in_cache(input_ids, token_id, counts)
                if kept is not None and kind == "image":
                    # images of earlier turns are in the cache already: keep the trailing ones (all AnyRes fields)
                    start = len(counts) - kept
                    image_inputs = {k: (v[start:] if v is not None else None) for k, v in image_inputs.items()}
                    values = image_inputs["pixel_values"] if kept else None
                elif kept is not None:
                    values = values[len(counts) - kept :] if kept else None
            if values is not None:
                if embedded is not None:
                    embedded[kind] = values
                if kind == "image" and encoder_outputs is not None and FEATURE_GETTERS_RETURN_MODEL_OUTPUT:
                    encoder_outputs["image"] = self._visual_output(
                        self._image_features, image_inputs, *output_flags, True
                    )
                    image_features = encoder_outputs["image"].pooler_output
                    features = list(image_features)
                elif kind == "image":
                    image_features = self._image_features(**image_inputs)
                    features = list(image_features)
                else:
                    features = self._video_features(values)
                inputs_embeds = self._merge_visual_features(input_ids, inputs_embeds, features, kind)
            elif input_ids is not None and token_id is not None and input_ids.shape[1] > 1:
                # (a single decode step may carry a generated placeholder id; it is embedded as text)
                if bool((input_ids == token_id).any()):
                    name = "pixel_values" if kind == "image" else "pixel_values_videos"
                    raise ValueError(
                        f"input_ids contain {kind} placeholder tokens but no {name} were given; pass the {kind}s "
                        "(HybridVLMProcessor returns both)."
                    )
        return inputs_embeds, image_features

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        image_sizes: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | list[torch.FloatTensor] | None = None,
        image_grids: torch.LongTensor | None = None,
        num_patches: torch.LongTensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> HybridVLMModelOutputWithPast | tuple:
        """The cache may come as `past_key_values`, `cache` or `cache_params` (transformers has used all three)."""
        warn_if_old_cache_name(kwargs, past_key_values=past_key_values)
        past_key_values = take_cache(kwargs, past_key_values=past_key_values, cache=cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        text_config = self.config.text_config
        use_cache = (
            use_cache if use_cache is not None else (getattr(text_config, "use_cache", True) and not self.training)
        )
        cache_position = kwargs.pop("cache_position", None)
        past_length = cache_seq_length(past_key_values) if use_cache else 0
        if past_length is None:
            if cache_position is None:
                raise ValueError("This cache cannot tell how many tokens it holds; pass cache_position.")
            past_length = int(cache_position[0])
        if use_cache and past_key_values is None:
            if self.config.decoder_type == "vamba":
                from .vamba import VambaCache

                past_key_values = VambaCache()
            else:
                past_key_values = new_language_model_cache(
                    text_config, inputs_embeds.shape[0], inputs_embeds.dtype, inputs_embeds.device
                )
        visual_mask = self._visual_mask(input_ids, inputs_embeds, pixel_values, pixel_values_videos)

        image_inputs = {"pixel_values": pixel_values}
        if pixel_values is not None and pixel_values.dim() == 5:
            image_sizes, image_grids, num_patches = self._anyres_layouts(
                pixel_values, image_sizes, image_grids, num_patches
            )
            image_inputs.update(image_sizes=image_sizes, image_grids=image_grids, num_patches=num_patches)
        embedded: dict[str, Any] = {}
        encoder_outputs: dict[str, Any] = {}
        inputs_embeds, image_features = self._embed_visual_inputs(
            input_ids, inputs_embeds, image_inputs, pixel_values_videos, past_length, embedded, encoder_outputs,
            (output_hidden_states, output_attentions),
        )

        lm_kwargs = dict(kwargs)
        lm_kwargs.update(attention_mask=attention_mask, use_cache=use_cache, return_dict=True)
        lm_kwargs[self._cache_argument] = past_key_values if use_cache else None
        if visual_mask is not None:
            lm_kwargs["visual_mask"] = visual_mask
            if getattr(getattr(self.language_model, "options", None), "cross_attention_key_positions", None) == "grid":
                lm_kwargs["visual_positions"] = self._visual_grid_positions(input_ids, inputs_embeds, embedded)
        # transformers 5.x takes a list of layer indices to capture; LMs that only know a flag return every layer,
        # so all are asked for and the others are dropped below
        selected_layers = output_hidden_states if isinstance(output_hidden_states, (list, tuple)) else None
        if selected_layers is not None:
            output_hidden_states = True
        optional = {
            "position_ids": position_ids,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
            "output_router_logits": output_router_logits,
        }
        lm_kwargs.update(
            {k: v for k, v in optional.items() if v is not None and (k in self._lm_arguments or self._lm_takes_kwargs)}
        )
        if "cache_position" in self._lm_arguments and use_cache:
            legacy_position = legacy_cache_position(
                text_config, past_length, inputs_embeds.shape[1], cache_position, inputs_embeds.device
            )
            if legacy_position is not None:
                lm_kwargs["cache_position"] = legacy_position

        seq_len = inputs_embeds.shape[1]
        if use_cache and past_length > 0 and seq_len > 1 and self._is_stateful and not self._continues_in_one_forward(
            attention_mask, seq_len
        ):
            outputs = self._continue_token_by_token(inputs_embeds, lm_kwargs, past_length)
        else:
            outputs = self._call_language_model(inputs_embeds, lm_kwargs)
        cache = output_cache(outputs)
        if use_cache and cache is None:
            cache = past_key_values
        note_tokens_seen(cache, past_length, seq_len)
        result = HybridVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **cache_output_kwargs(cache if use_cache else None),
            hidden_states=_select_layers(getattr(outputs, "hidden_states", None), selected_layers),
            attentions=getattr(outputs, "attentions", None),
            router_logits=getattr(outputs, "router_logits", None),
            image_hidden_states=image_features,
            image_outputs=encoder_outputs.get("image"),
        )
        return result if _wants_dict(self.config, return_dict) else result.to_tuple()

    def _continues_in_one_forward(self, attention_mask: torch.Tensor | None, seq_len: int) -> bool:
        """Several new tokens on a recurrent cache go in one forward when our SSM engine runs every SSM layer (it
        starts from the cached conv + SSM states) and the new tokens hold no padding; else they are stepped."""
        if not engine_serves_every_ssm_layer(self.language_model, self.config.text_config.model_type):
            return False
        if attention_mask is None:
            return True
        return attention_mask.dim() == 2 and bool(attention_mask[:, -seq_len:].all())

    def _call_language_model(self, inputs_embeds: torch.Tensor, lm_kwargs: dict[str, Any]) -> Any:
        attention_mask = lm_kwargs.get("attention_mask")
        if (
            self.config.text_config.model_type in SSM_ONLY_MODEL_TYPES
            and attention_mask is not None
            and attention_mask.dim() == 2
        ):
            # SSM-only LMs use the mask just to zero padded inputs; it must cover exactly the new tokens.
            lm_kwargs = {**lm_kwargs, "attention_mask": attention_mask[:, -inputs_embeds.shape[1] :]}
        return self.language_model(inputs_embeds=inputs_embeds, **lm_kwargs)

    def _continue_token_by_token(
        self, inputs_embeds: torch.Tensor, lm_kwargs: dict[str, Any], past_length: int
    ) -> BaseModelOutputWithPast:
        """Extend a recurrent cache by several tokens, one step at a time.

        The SSM layers of transformers' hybrid LMs start a multi-token forward from a zero state, so a
        multi-token continuation (a new conversation turn on a returned cache) would silently drop the
        history. Single-token steps read the cached state correctly; they do not mask, so the recurrent state of
        a row whose token is padding is put back after its step (the padded token leaves no trace).
        """
        attention_mask = lm_kwargs.pop("attention_mask", None)
        position_ids = lm_kwargs.pop("position_ids", None)
        cache_position = lm_kwargs.pop("cache_position", None)
        for key in ("output_attentions", "output_hidden_states", "output_router_logits"):
            lm_kwargs.pop(key, None)
        seq_len = inputs_embeds.shape[1]
        hidden = []
        outputs = None
        for step in range(seq_len):
            step_kwargs = dict(lm_kwargs)
            if attention_mask is not None:
                step_kwargs["attention_mask"] = attention_mask[:, : attention_mask.shape[1] - seq_len + step + 1]
            if position_ids is not None:
                step_kwargs["position_ids"] = position_ids[..., step : step + 1]
            if cache_position is not None:
                step_kwargs["cache_position"] = cache_position[step : step + 1]
            saved = padded = None
            if attention_mask is not None and attention_mask.dim() == 2:
                padded = attention_mask[:, attention_mask.shape[1] - seq_len + step] == 0
                if bool(padded.any()):
                    saved = snapshot_recurrent_states(lm_kwargs[self._cache_argument])
            outputs = self._call_language_model(inputs_embeds[:, step : step + 1], step_kwargs)
            if saved is not None:
                restore_recurrent_states(saved, padded)
            cache = output_cache(outputs)
            if cache is not None:
                lm_kwargs[self._cache_argument] = cache
            note_tokens_seen(lm_kwargs[self._cache_argument], past_length + step, 1)
            hidden.append(outputs.last_hidden_state)
        return BaseModelOutputWithPast(
            last_hidden_state=torch.cat(hidden, dim=1), **cache_output_kwargs(lm_kwargs[self._cache_argument])
        )


class HybridVLMForConditionalGeneration(HybridVLMPreTrainedModel, GenerationMixin):
    """HybridVLM with a language-modelling head; what `AutoModelForImageTextToText` returns."""

    _tied_weights_keys = tied_weights_keys({"lm_head.weight": "model.language_model.embed_tokens.weight"})
    _tp_plan = {"lm_head": LM_HEAD_TP_STYLE}  # the tied head is sharded by columns as in transformers' causal LMs

    def __init__(self, config: HybridVLMConfig) -> None:
        super().__init__(config)
        self.model = HybridVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._is_stateful = self.model._is_stateful
        # TRL's fused LM head reads the MoE sizes off the model on transformers 4.x, as the MoE *ForCausalLM
        # classes (Jamba, Mixtral, ...) carry them.
        text_config = config.text_config
        num_experts = getattr(text_config, "num_experts", None) or getattr(text_config, "num_local_experts", None)
        if num_experts is not None:
            self.num_experts = num_experts
            self.num_experts_per_tok = text_config.num_experts_per_tok
        embed_name = _input_embedding_name(self.model.language_model)
        tied = {"lm_head.weight": f"model.language_model.{embed_name}.weight"}
        self._tied_weights_keys = tied_weights_keys(tied)
        self.post_init()
        plan = getattr(self, "_tp_plan", None) or {}
        embedding = f"model.language_model.{embed_name}"
        if "lm_head" in plan and embedding not in plan:
            # The tied head and the embedding are one parameter: shard both or neither. Vamba's decoder wraps an LM
            # that has a plan but exposes none (its embedding is then planned here); Mamba LMs have no plan at all.
            if EMBEDDING_TP_STYLE and getattr(text_config, "base_model_tp_plan", None):
                self._tp_plan = {**plan, embedding: EMBEDDING_TP_STYLE}
            else:
                self._tp_plan = {name: style for name, style in plan.items() if name != "lm_head"}

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs: Any) -> Any:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_video_features(self, pixel_values_videos: Any, **kwargs: Any) -> Any:
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | list[torch.FloatTensor] | None = None,
        image_grids: torch.LongTensor | None = None,
        num_patches: torch.LongTensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> HybridVLMCausalLMOutputWithPast | tuple:
        """The cache may come as `past_key_values`, `cache` or `cache_params` (transformers has used all three)."""
        warn_if_old_cache_name(kwargs, past_key_values=past_key_values)
        past_key_values = take_cache(kwargs, past_key_values=past_key_values, cache=cache)
        if self.training:
            warn_if_fp16_with_ssm(self)  # once per model: fp16 overflows the SSM scan
        text_config = self.config.text_config
        if output_router_logits is None:
            output_router_logits = getattr(text_config, "output_router_logits", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{GENERATE_CACHE_NAME: past_key_values},
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            image_sizes=image_sizes,
            pixel_values_videos=pixel_values_videos,
            image_grids=image_grids,
            num_patches=num_patches,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        # (Mamba LMs keep the residual stream in fp32; the head runs in its own dtype)
        logits = self.lm_head(hidden_states[:, slice_indices, :].to(self.lm_head.weight.dtype))

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=text_config.vocab_size, **kwargs)
        aux_loss = None
        if output_router_logits and outputs.router_logits:
            # The router saw only this call's tokens (one per step when generating): mask those, not the history.
            chunk_mask = attention_mask
            if attention_mask is not None and attention_mask.dim() == 2:
                chunk_mask = attention_mask[:, -hidden_states.shape[1] :]
            aux_loss = _router_aux_loss(outputs.router_logits, text_config, chunk_mask)
            if loss is not None and aux_loss is not None:
                loss = loss + text_config.router_aux_loss_coef * aux_loss.to(loss.device)

        result = HybridVLMCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            **cache_output_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
        )
        return result if _wants_dict(self.config, return_dict) else result.to_tuple()

    def generate(self, *args: Any, prefill_chunk_frames: int | None = None, **kwargs: Any) -> Any:
        """GenerationMixin's `generate`; with `prefill_chunk_frames=n` a video prompt is prefilled n frames at a
        time with the cache carried, so peak memory is bounded by the chunk rather than the video
        (:func:`hybrid_vlm.prefill_in_chunks`)."""
        if prefill_chunk_frames is None:
            return super().generate(*args, **kwargs)
        return generate_with_chunked_prefill(self, prefill_chunk_frames, *args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: Any = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        past_key_values = take_cache(kwargs, past_key_values=past_key_values, cache=cache)
        model_inputs = self._prepare_generation_inputs(
            input_ids, past_key_values, inputs_embeds, pixel_values, attention_mask, pixel_values_videos, **kwargs
        )
        if self.config.decoder_type == "vamba":
            # generate() counts every token of the interleaved sequence; Vamba's decoder counts its own positions
            # (text tokens only, with text_positions="text"), padding-safe, from its cache.
            model_inputs.pop("position_ids", None)
        return model_inputs

    def _prepare_generation_inputs(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Any,
        inputs_embeds: torch.FloatTensor | None,
        pixel_values: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        pixel_values_videos: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if GENERATE_DROPS_VISUAL_INPUTS_AFTER_PREFILL:
            # generate() forwards pixel_values & co. only with the prefill by itself (known multimodal inputs).
            past_length = cache_seq_length(past_key_values)
            prefill_of_an_empty_cache(past_length, kwargs)
            if inputs_embeds is None:
                continuation_length(input_ids, past_length, attention_mask, kwargs)
            return super().prepare_inputs_for_generation(
                input_ids,
                inputs_embeds=inputs_embeds,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                pixel_values_videos=pixel_values_videos,
                **{GENERATE_CACHE_NAME: past_key_values},
                **kwargs,
            )
        use_cache = kwargs.get("use_cache", True)
        if use_cache and past_key_values is None:
            batch = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
            past_key_values = new_language_model_cache(self.config.text_config, batch, self.dtype, self.device)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            **{GENERATE_CACHE_NAME: past_key_values},
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **kwargs,
        )
        # Images go with the prefill and with any later multi-token chunk (a new turn on a returned cache).
        current_ids = model_inputs.get("input_ids")
        if not use_cache or current_ids is None or current_ids.shape[1] > 1:
            model_inputs["pixel_values"] = pixel_values
            model_inputs["pixel_values_videos"] = pixel_values_videos
        else:  # AnyRes metadata travels with the pixels only
            for key in ("image_sizes", "image_grids", "num_patches"):
                model_inputs.pop(key, None)
        return model_inputs

    def _supports_default_dynamic_cache(self) -> bool:
        """Let generate() build a standard cache only where the LM uses one; otherwise `forward` makes ours."""
        if self.config.decoder_type == "vamba":
            return False  # the model makes its VambaCache
        model_type = self.config.text_config.model_type
        if standard_cache_holds_ssm_state(model_type):
            return model_type not in SSM_ONLY_MODEL_TYPES
        return not self._is_stateful

    def _reorder_cache(self, past_key_values: Any, beam_idx: torch.LongTensor) -> Any:
        """transformers 4.x beam search hook; its Mamba caches have no `reorder_cache` of their own."""
        return reorder_state_cache(past_key_values, beam_idx)


def _select_layers(hidden_states: tuple | None, selected: list[int] | tuple[int, ...] | None) -> tuple | None:
    """Hidden states of the `selected` layers only (others None), as transformers 5.x returns a capture list."""
    if hidden_states is None or selected is None:
        return hidden_states
    keep = {index % len(hidden_states) for index in selected}
    return tuple(state if index in keep else None for index, state in enumerate(hidden_states))


def _video_list(pixel_values_videos: torch.FloatTensor | list[torch.FloatTensor]) -> list[torch.FloatTensor]:
    """Videos as a list of `(frames, 3, H, W)` tensors (the processor returns a list when frame counts differ)."""
    videos = list(pixel_values_videos)
    for video in videos:
        if video.dim() != 4:
            raise ValueError(
                "pixel_values_videos must be (num_videos, frames, 3, H, W) or a list of (frames, 3, H, W) tensors, "
                f"got an item of shape {tuple(video.shape)}."
            )
    return videos


def _wants_dict(config: HybridVLMConfig, return_dict: bool | None) -> bool:
    """An output object, or (`return_dict=False`, by argument or by `config.return_dict`) a tuple of its set fields,
    as transformers' models return."""
    return bool(return_dict if return_dict is not None else getattr(config, "return_dict", True))


def _input_embedding_name(language_model: nn.Module) -> str:
    embeddings = language_model.get_input_embeddings()
    for name, module in language_model.named_modules():
        if module is embeddings:
            return name
    raise ValueError("Could not locate the language model's input embeddings.")


def _router_aux_loss(
    router_logits: tuple, text_config: Any, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """MoE load-balancing loss, computed the way the LM's own causal-LM class computes it."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    logits = tuple(r for r in router_logits if r is not None and r.dim() == 2)
    if not logits:
        return None
    num_experts = getattr(text_config, "num_experts", None) or text_config.num_local_experts
    top_k = text_config.num_experts_per_tok
    return load_balancing_loss_func(logits, num_experts, top_k, attention_mask)
