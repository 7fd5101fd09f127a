"""The models under test: every family at matched width and depth, built with random weights, and `BenchModel`."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..compat import GENERATE_CACHE_NAME, output_cache
from ..model_types import SSM_ONLY_MODEL_TYPES
from ..modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from ..path_report import compute_paths
from ..presets import preset_config
from ..tiny_tokenizer import load_tiny_tokenizer
from .memory import TensorMemoryTracker, tensor_bytes

# Family name -> the preset that defines its architecture; sizes below only change width and depth.
FAMILY_PRESETS = {
    "jamba": "jamba-llava-tiny",
    "mamba2": "mamba2-llava-tiny",
    "vamba": "vamba-tiny",
    "mambavlm": "mambavlm-tiny",
    "llava": "llava-tiny",
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


PROMPT_PREFIX = "USER: "
PROMPT_SUFFIX = " Describe what happens in detail. ASSISTANT:"


@dataclass(frozen=True)
class ModelSize:
    """Width and depth every family gets at one size, so a hybrid and its baseline differ only in their layers."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    ssm_head_dim: int
    ssm_state_size: int
    ssm_chunk_size: int
    description: str


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(64, 8, 4, 2, 128, 16, 16, 16, "the tiny presets' shapes (tests, smoke runs)"),
    "small": ModelSize(128, 8, 4, 2, 352, 32, 16, 64, "CPU benchmarks: attention's n^2 term shows from ~2K tokens"),
    "1b": ModelSize(2048, 24, 16, 8, 5632, 64, 128, 256, "GPU benchmarks: ~1.1B-parameter Llama-shaped text model"),
}


def family_preset(family: str) -> str:
    """The preset behind a family name (a preset name is accepted as is)."""
    if family in FAMILY_PRESETS:
        return FAMILY_PRESETS[family]
    if family in FAMILY_PRESETS.values():
        return family
    raise ValueError(f"Unknown family '{family}'. Known: {', '.join(FAMILY_PRESETS)} (or their preset names).")


def size_overrides(family: str, size: str | ModelSize, intermediate_size: int | None = None) -> dict[str, Any]:
    """`preset_config` overrides that give `family` the width/depth of `size`.

    `intermediate_size` replaces the MLP width (used to match a baseline's parameter count to a hybrid's).
    """
    shape = SIZES[size] if isinstance(size, str) else size
    config = preset_config(family_preset(family))
    text_type = config.text_config.model_type
    hidden = shape.hidden_size
    attention = {
        "hidden_size": hidden,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "intermediate_size": intermediate_size or shape.intermediate_size,
    }
    if text_type == "mamba2":
        if intermediate_size is not None:
            raise ValueError("A Mamba-2 LM has no MLP: intermediate_size cannot be set.")
        text = {
            "hidden_size": hidden,
            "num_hidden_layers": shape.num_hidden_layers,
            "head_dim": shape.ssm_head_dim,
            "num_heads": 2 * hidden // shape.ssm_head_dim,
            "expand": 2,
            "state_size": shape.ssm_state_size,
            "chunk_size": shape.ssm_chunk_size,
        }
    elif text_type == "mamba":
        if intermediate_size is not None:
            raise ValueError("A Mamba LM has no MLP: intermediate_size cannot be set.")
        # Mamba-1's own rules at every size (Mamba-2.8B: d_state 16, expand 2, dt_rank = hidden / 16)
        text = {
            "hidden_size": hidden,
            "num_hidden_layers": shape.num_hidden_layers,
            "state_size": 16,
            "expand": 2,
            "intermediate_size": 2 * hidden,
            "time_step_rank": max(1, math.ceil(hidden / 16)),
        }
    elif text_type == "jamba":
        # Jamba's own rules: d_state 16, dt_rank = hidden / 16 (256 at 4096); the tiny preset keeps its values.
        text = dict(attention, mamba_dt_rank=max(1, math.ceil(hidden / 16)))
        if shape is not SIZES["tiny"]:
            text["mamba_d_state"] = 16
    else:
        text = attention
    overrides: dict[str, Any] = {"text_config": text}
    if config.decoder_type == "vamba":
        overrides["vamba_options"] = {
            **(config.vamba_options or {}),
            "ssm_d_state": shape.ssm_state_size,
            "ssm_head_dim": shape.ssm_head_dim,
            "ssm_chunk_size": shape.ssm_chunk_size,
        }
    return overrides


def _build_model(family: str, overrides: dict[str, Any], device: torch.device | str, dtype: torch.dtype) -> Any:
    """Random-weight model of a preset, initialised directly on `device` (a 2B model builds in seconds on a GPU)."""
    config = preset_config(family_preset(family), **overrides)
    device = torch.device(device)
    if device.type != "meta":
        torch.manual_seed(0)
    with torch.device(device):
        model = HybridVLMForConditionalGeneration(config)
    return model.to(dtype).eval()


def lm_parameter_count(family: str, size: str | ModelSize, intermediate_size: int | None = None) -> int:
    """Parameters of the language model (embeddings included; vision tower and projector excluded), counted on the
    meta device, so full sizes cost nothing."""
    model = _build_model(family, size_overrides(family, size, intermediate_size), "meta", torch.float32)
    return sum(p.numel() for p in model.model.language_model.parameters())


def matched_intermediate_size(baseline: str, target_params: int, size: str | ModelSize) -> int | None:
    """MLP width that gives the baseline `target_params` LM parameters (the count is linear in it); None when no
    positive width does (the target is below the baseline's attention-only parameters)."""
    low = lm_parameter_count(baseline, size, intermediate_size=1)
    per_unit = lm_parameter_count(baseline, size, intermediate_size=2) - low
    width = round((target_params - low) / per_unit) + 1
    return width if width >= 1 else None


@contextmanager
def fixed_visual_features(model: Any, features: torch.Tensor) -> Iterator[None]:
    """Make the model's image encoder return `features` (one image of `len(features)` tokens) for this block.

    The model still checks them against the placeholders, so a bypassed stub fails loudly instead of measuring
    something else.
    """
    inner = model.model
    inner._image_features = lambda *args, **kwargs: [features]
    try:
        yield
    finally:
        del inner._image_features


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ssm_path(model: Any) -> str:
    """Which SSM implementation the model's recurrent layers take on its device ("-" for none), per kind of SSM
    module: "kernels", "engine" (hybrid_vlm.ssm_engine), "transformers-torch" or "torch" (our own mixers).
    `path_report.compute_paths` has the full report with reasons."""
    def short(path: str) -> str:
        if "kernels" in path:
            return "kernels"
        if path.startswith("hybrid_vlm engine"):
            return "engine"  # our torch paths under the LM's SSM layers (hybrid_vlm.ssm_engine)
        return "transformers-torch" if path.startswith("transformers") else "torch"

    paths = {
        short(p.path)
        for p in compute_paths(model)
        if "SSM" in p.component and "projector" not in p.component  # (the projector is not timed here)
    }
    return "+".join(sorted(paths)) or "-"


@dataclass
class BenchModel:
    """A built model under test, with what the tables say about it."""

    name: str
    family: str
    model: Any
    device: torch.device
    dtype: torch.dtype
    lm_params: int
    size: str
    prompt: tuple[list[int], list[int]] = field(repr=False)  # text token ids before and after the visual tokens
    intermediate_size: int | None = None

    @classmethod
    def build(
        cls,
        family: str,
        size: str = "small",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        intermediate_size: int | None = None,
        name: str | None = None,
    ) -> BenchModel:
        model = _build_model(family, size_overrides(family, size, intermediate_size), device, dtype)
        tokenizer = load_tiny_tokenizer()
        prompt = (
            tokenizer.encode(PROMPT_PREFIX, add_special_tokens=False),
            tokenizer.encode(PROMPT_SUFFIX, add_special_tokens=False),
        )
        return cls(
            name=name or family,
            family=family,
            model=model,
            device=torch.device(device),
            dtype=dtype,
            lm_params=sum(p.numel() for p in model.model.language_model.parameters()),
            size=size,
            intermediate_size=intermediate_size,
            prompt=prompt,
        )

    @property
    def prompt_length(self) -> int:
        """Text tokens around the visual tokens."""
        return sum(len(part) for part in self.prompt)

    def describe(self) -> dict[str, Any]:
        text = self.model.config.text_config
        return {
            "model": self.name,
            "preset": family_preset(self.family),
            "lm_type": text.model_type,
            "decoder": self.model.config.decoder_type,
            "size": self.size,
            "hidden": text.hidden_size,
            "layers": text.num_hidden_layers,
            "intermediate": getattr(text, "intermediate_size", None),
            "lm_params": self.lm_params,
            "attention": "-" if text.model_type in SSM_ONLY_MODEL_TYPES else text._attn_implementation or "eager",
            "ssm_path": _ssm_path(self.model),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def inputs(self, visual_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids with `visual_tokens` placeholders, and the fixed visual embeddings that fill them."""
        prefix, suffix = self.prompt
        image_token = self.model.config.image_token_id
        ids = torch.tensor([[*prefix, *([image_token] * visual_tokens), *suffix]], device=self.device)
        generator = torch.Generator().manual_seed(visual_tokens)
        hidden = self.model.config.text_config.hidden_size
        features = torch.randn(visual_tokens, hidden, generator=generator).to(self.device, self.dtype)
        return ids, features

    def _pixel_stub(self) -> torch.Tensor:
        return torch.zeros(1, 3, 1, 1, device=self.device)

    def prefill_and_decode(self, ids: torch.Tensor, features: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
        """Seconds for the prefill and for `decode_tokens` greedy steps after it."""
        model = self.model
        with torch.no_grad(), fixed_visual_features(model, features):
            _sync(self.device)
            start = time.perf_counter()
            out = model(input_ids=ids, pixel_values=self._pixel_stub(), use_cache=True, logits_to_keep=1)
            _sync(self.device)
            prefilled = time.perf_counter()
            cache = output_cache(out)
            token = out.logits[:, -1:].argmax(-1)
            for _ in range(decode_tokens):
                out = model(input_ids=token, **{GENERATE_CACHE_NAME: cache}, use_cache=True, logits_to_keep=1)
                cache = output_cache(out)
                token = out.logits[:, -1:].argmax(-1)
            _sync(self.device)
            decoded = time.perf_counter()
        return prefilled - start, decoded - prefilled

    def train_step(self, ids: torch.Tensor, features: torch.Tensor) -> float:
        """Seconds for forward + backward with the loss on the text tokens (visual positions are -100)."""
        model = self.model
        labels = ids.masked_fill(ids == model.config.image_token_id, -100)
        model.train()
        try:
            with fixed_visual_features(model, features):
                _sync(self.device)
                start = time.perf_counter()
                out = model(input_ids=ids, pixel_values=self._pixel_stub(), labels=labels, use_cache=False)
                out.loss.backward()
                _sync(self.device)
                elapsed = time.perf_counter() - start
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()
        return elapsed

    def peak_memory(self, run: Callable[[], Any]) -> int:
        """Peak bytes while `run()` executes: CUDA's allocator statistic, or tracked tensor storages on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            run()
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        weights = [*self.model.parameters(), *self.model.buffers()]
        with TensorMemoryTracker(weights) as tracker:
            run()
        return tensor_bytes(self.model) + tracker.peak

    def release(self) -> None:
        """Free the weights (the next model's memory numbers must not include this one's)."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
