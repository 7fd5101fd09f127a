"""Benchmarks: each hybrid family against the pure-transformer baseline of the same width and depth.

The product's claim is that hybrids stay cheap where self-attention does not: as the visual input grows. So every
measurement here is a sweep over the number of visual tokens, with the *same* visual tokens fed to the hybrid and to
the baseline, and every report puts the two side by side (ratios hybrid/baseline) and fits how time grows with the
visual tokens (log-log least squares).

What is measured, and why this way:

- Visual tokens enter as fixed random embeddings of the LM width that stand in for the projector's output. The
  prompt still carries the `<image>` placeholder ids and the call is the model's normal `forward`, so the wrapper's
  own work (embedding, scattering, Vamba's stream split, cache creation) is timed; only the vision tower and the
  projector are skipped, because they are identical for both sides and would dilute the language models' ratio.
- Prefill: one forward over the whole prompt with a fresh cache (logits of the last position only, as generate()
  does). Decode: `decode_tokens` greedy single-token steps on that cache, reported as tokens/s.
- Peak memory: on CUDA `torch.cuda.max_memory_allocated` over prefill + decode (weights included). On CPU the
  allocator keeps no statistics and RSS mostly measures the allocator's caching, so a dispatch mode
  (`TensorMemoryTracker`) adds up the bytes of the tensor storages ATen returns while they are alive: the same
  quantity as CUDA's `max_memory_allocated` (weights + live tensors; kernel-internal scratch is not seen).
- Training step (Vamba's Fig. 3 setting): forward + backward with the loss on the text tokens; no optimizer step
  (its cost and state depend only on the parameter count, which is reported).
- Largest input in a memory budget: on CUDA by real runs (doubling, then bisection, OOM counts as "does not fit");
  on CPU by extrapolating a fitted `a + b*n + c*n^2` to the measured peaks, labelled as an estimate.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .anyres import anyres_token_count
from .caching import SSM_ONLY_MODEL_TYPES
from .compat import GENERATE_CACHE_NAME, TRANSFORMERS_VERSION, output_cache
from .presets import preset_config
from .token_counts import VisualTokenSpec

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
MIB = 2**20
PROMPT_PREFIX = "USER: "
PROMPT_SUFFIX = " Describe what happens in detail. ASSISTANT:"

# Visual tokens per frame of the papers' video settings: LongLLaVA pools each 24x24 CLIP grid to 12x12.
LONGLLAVA_TOKENS_PER_FRAME = 144
# AnyRes as MMJamba/LLaVA-NeXT count it: 336 px CLIP tiles of 14 px patches, a global view, newline tokens, unpadding.
ANYRES_TILE = 336
ANYRES_PATCH = 14


# ---------------------------------------------------------------------------------------------------------------
# Model sizes (matched width/depth across families)
# ---------------------------------------------------------------------------------------------------------------


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
    from .modeling_hybrid_vlm import HybridVLMForConditionalGeneration

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


# ---------------------------------------------------------------------------------------------------------------
# Visual token counts of the papers' inputs
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Memory measurement
# ---------------------------------------------------------------------------------------------------------------


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active: a CPU stand-in for CUDA's max_memory_allocated.

    Every ATen op's outputs pass through `__torch_dispatch__`; each new storage is counted once (views share it)
    and uncounted when it is freed. Storages of `existing` tensors (weights) are not counted. Costs a Python call
    per op, so never time code while tracking.

    With `record_peak`, :meth:`peak_breakdown` says which tensors (producing op, shape) were alive at the peak: the
    way to find what dominates a model's peak memory.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = (), record_peak: bool = False) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()
        self._record = record_peak
        self._info: dict[int, tuple[str, tuple[int, ...], str, int]] = {}
        self._at_peak: list[tuple[str, tuple[int, ...], str, int]] = []
        self._existing = [t.untyped_storage() for t in existing if t.device.type != "meta"]
        self._existing_ids = {id(s) for s in self._existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_leaves(out):
            if isinstance(item, torch.Tensor):
                self._see(item, func)
        return out

    def peak_breakdown(self, top: int = 10) -> list[dict[str, Any]]:
        """The largest storages alive at the peak (needs `record_peak=True`): op, shape, dtype, MiB, and how many
        storages of that op and shape were alive."""
        groups: dict[tuple[str, tuple[int, ...], str], list[int]] = {}
        for op, shape, dtype, nbytes in self._at_peak:
            groups.setdefault((op, shape, dtype), []).append(nbytes)
        rows = [
            {"op": op, "shape": "x".join(map(str, shape)), "dtype": dtype, "count": len(sizes),
             "mib": sum(sizes) / MIB, "share": sum(sizes) / max(self.peak, 1)}
            for (op, shape, dtype), sizes in groups.items()
        ]
        return sorted(rows, key=lambda r: -r["mib"])[:top]

    def _see(self, tensor: torch.Tensor, func: Any = None) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
            return
        key = id(storage)
        if key in self._live or key in self._existing_ids:
            return
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        if self._record:
            name = str(getattr(func, "overloadpacket", func)).replace("aten.", "")
            self._info[key] = (name, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), nbytes)
            if self.current > self.peak:
                self._at_peak = [self._info[k] for k in self._live if k in self._info]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared storages once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[id(storage)] = storage.nbytes()
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------------------------
# One model under test
# ---------------------------------------------------------------------------------------------------------------


@contextmanager
def _fixed_visual_features(model: Any, features: torch.Tensor) -> Iterator[None]:
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
    `kernels.compute_paths` has the full report with reasons."""
    from .kernels import compute_paths

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
        from .tokenization_utils import load_tiny_tokenizer

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
        with torch.no_grad(), _fixed_visual_features(model, features):
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
            with _fixed_visual_features(model, features):
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


# ---------------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class InferenceResult:
    """Prefill/decode/memory of one model at one visual input size (NaN where not measured)."""

    model: str
    family: str
    label: str
    visual_tokens: int
    seq_len: int
    prefill_s: float
    decode_tok_s: float
    peak_mem_mib: float
    lm_params: int
    repeats: int
    status: str = "ok"
    frames: int | None = None


@dataclass
class TrainingResult:
    """Forward+backward time and peak memory of one model at one visual input size."""

    model: str
    family: str
    label: str
    visual_tokens: int
    seq_len: int
    step_s: float
    peak_mem_mib: float
    lm_params: int
    repeats: int
    status: str = "ok"
    frames: int | None = None


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_inference(
    bench: BenchModel,
    point: SweepPoint | int,
    repeats: int = 3,
    decode_tokens: int = 8,
    measure_memory: bool = True,
    statistic: Callable[[Sequence[float]], float] = statistics.median,
) -> InferenceResult:
    """Prefill seconds and decode tokens/s (`statistic` over `repeats` runs) and peak memory at one input size."""
    point = point if isinstance(point, SweepPoint) else token_points([point])[0]
    ids, features = bench.inputs(point.visual_tokens)
    prefill, decode = [], []
    for _ in range(max(1, repeats)):
        p, d = bench.prefill_and_decode(ids, features, decode_tokens)
        prefill.append(p)
        decode.append(d)
    peak = math.nan
    if measure_memory:
        peak = bench.peak_memory(lambda: bench.prefill_and_decode(ids, features, decode_tokens)) / MIB
    decode_time = statistic(decode)
    return InferenceResult(
        model=bench.name,
        family=bench.family,
        label=point.label,
        visual_tokens=point.visual_tokens,
        seq_len=int(ids.shape[1]),
        prefill_s=statistic(prefill),
        decode_tok_s=decode_tokens / decode_time if decode_tokens and decode_time > 0 else math.nan,
        peak_mem_mib=peak,
        lm_params=bench.lm_params,
        repeats=max(1, repeats),
        frames=point.frames,
    )


def measure_training(
    bench: BenchModel,
    point: SweepPoint | int,
    repeats: int = 3,
    measure_memory: bool = True,
    statistic: Callable[[Sequence[float]], float] = statistics.median,
) -> TrainingResult:
    """Training step (forward + backward) seconds and peak memory at one input size."""
    point = point if isinstance(point, SweepPoint) else token_points([point])[0]
    ids, features = bench.inputs(point.visual_tokens)
    times = [bench.train_step(ids, features) for _ in range(max(1, repeats))]
    peak = bench.peak_memory(lambda: bench.train_step(ids, features)) / MIB if measure_memory else math.nan
    return TrainingResult(
        model=bench.name,
        family=bench.family,
        label=point.label,
        visual_tokens=point.visual_tokens,
        seq_len=int(ids.shape[1]),
        step_s=statistic(times),
        peak_mem_mib=peak,
        lm_params=bench.lm_params,
        repeats=max(1, repeats),
        frames=point.frames,
    )


@dataclass
class GenerationResult:
    """Generating `output_tokens` after a prompt with `visual_tokens` visual tokens (MambaVLM's Table 4 setting).

    `e2e_tok_s` is output tokens over the whole generation time (prefill included: the first token comes from the
    prefill), the paper's "speed"; `decode_tok_s` counts only the single-token steps after it.
    """

    model: str
    family: str
    visual_tokens: int
    seq_len: int
    output_tokens: int
    prefill_s: float
    decode_s: float
    decode_tok_s: float
    e2e_tok_s: float
    lm_params: int
    repeats: int


def measure_generation(
    bench: BenchModel,
    visual_tokens: int,
    output_tokens: int = 256,
    repeats: int = 3,
    statistic: Callable[[Sequence[float]], float] = statistics.median,
) -> GenerationResult:
    """Greedy generation of `output_tokens` tokens (prefill + `output_tokens - 1` steps), `statistic` of `repeats`."""
    if output_tokens < 2:
        raise ValueError(f"output_tokens must be at least 2 (one from the prefill, one step), got {output_tokens}.")
    ids, features = bench.inputs(visual_tokens)
    runs = [bench.prefill_and_decode(ids, features, output_tokens - 1) for _ in range(max(1, repeats))]
    prefill = statistic([p for p, _ in runs])
    decode = statistic([d for _, d in runs])
    total = statistic([p + d for p, d in runs])
    return GenerationResult(
        model=bench.name,
        family=bench.family,
        visual_tokens=visual_tokens,
        seq_len=int(ids.shape[1]),
        output_tokens=output_tokens,
        prefill_s=prefill,
        decode_s=decode,
        decode_tok_s=(output_tokens - 1) / decode,
        e2e_tok_s=output_tokens / total,
        lm_params=bench.lm_params,
        repeats=max(1, repeats),
    )


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a display name, a family, and optionally a changed MLP width (matched parameter count)."""

    name: str
    family: str
    intermediate_size: int | None = None
    baseline_for: tuple[str, ...] = ()


@dataclass
class BenchSettings:
    """Knobs shared by every sweep."""

    size: str = "small"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeats: int = 3
    warmup: int = 1
    decode_tokens: int = 8
    measure_memory: bool = True
    statistic: str = "median"
    time_limit_s: float | None = None  # larger inputs of a model are skipped once one prefill/step takes longer
    progress: bool = True

    def stat(self) -> Callable[[Sequence[float]], float]:
        return {"median": statistics.median, "min": min, "mean": statistics.fmean}[self.statistic]


def model_specs(
    families: Sequence[str], baseline: str, size: str = "small", match_params: bool = False
) -> list[ModelSpec]:
    """The hybrids plus their baseline(s): one shared baseline of matched width/depth, or, with `match_params`,
    one per hybrid whose MLP width makes its LM parameter count equal to that hybrid's (where any width can)."""
    specs = [ModelSpec(f, f) for f in families if f != baseline]
    if not match_params:
        return [*specs, ModelSpec(baseline, baseline, baseline_for=tuple(s.name for s in specs))]
    baselines = []
    for spec in specs:
        # (None: no MLP width gets that low; the baseline keeps the matched width/depth and params_ratio says so)
        width = matched_intermediate_size(baseline, lm_parameter_count(spec.family, size), size)
        baselines.append(ModelSpec(f"{baseline}~{spec.name}", baseline, width, (spec.name,)))
    return [*specs, *baselines]


def baseline_of(specs: Sequence[ModelSpec]) -> dict[str, str]:
    """Hybrid name -> the name of the baseline it is compared with."""
    return {hybrid: spec.name for spec in specs for hybrid in spec.baseline_for}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr; off when asked, and when stderr is not a terminal (CI logs stay readable)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False, dynamic_ncols=True)


def _sweep(
    specs: Sequence[ModelSpec],
    points: Sequence[SweepPoint],
    settings: BenchSettings,
    measure: Callable[[BenchModel, SweepPoint], Any],
    warm: Callable[[BenchModel, SweepPoint], Any],
    skipped: Callable[[BenchModel, SweepPoint, str], Any],
    seconds_of: Callable[[Any], float],
    desc: str,
    after_model: Callable[[BenchModel, list[Any]], None] | None = None,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Build one model at a time (so memory peaks never include another model), warm it up on the smallest input,
    then measure every point in increasing size; OOM or the time limit skip the rest of that model's points."""
    ordered = sorted(points, key=lambda p: p.visual_tokens)
    results: list[Any] = []
    described: list[dict[str, Any]] = []
    bar = _progress(len(specs) * len(ordered), desc, settings.progress)
    try:
        for spec in specs:
            bar.set_postfix_str(f"{spec.name}: build")
            bench = BenchModel.build(
                spec.family, settings.size, settings.device, settings.dtype, spec.intermediate_size, spec.name
            )
            described.append(bench.describe())
            for _ in range(settings.warmup):
                warm(bench, ordered[0])
            model_results: list[Any] = []
            stop_reason = None
            for point in ordered:
                bar.set_postfix_str(f"{spec.name}: {point.label}")
                if stop_reason is not None:
                    model_results.append(skipped(bench, point, stop_reason))
                    bar.update(1)
                    continue
                try:
                    result = measure(bench, point)
                except (RuntimeError, torch.OutOfMemoryError) as error:
                    if not _is_oom(error):
                        raise
                    if bench.device.type == "cuda":
                        torch.cuda.empty_cache()
                    stop_reason = "oom"
                    result = skipped(bench, point, stop_reason)
                else:
                    if settings.time_limit_s is not None and seconds_of(result) > settings.time_limit_s:
                        stop_reason = f"skipped (>{settings.time_limit_s:g}s)"
                model_results.append(result)
                bar.update(1)
            if after_model is not None:
                after_model(bench, model_results)
            results.extend(model_results)
            bench.release()
    finally:
        bar.close()
    return results, described


def _prompt_length(bench: BenchModel) -> int:
    return sum(len(part) for part in bench.prompt)


def run_inference_sweep(
    specs: Sequence[ModelSpec],
    points: Sequence[SweepPoint],
    settings: BenchSettings | None = None,
    after_model: Callable[[BenchModel, list[InferenceResult]], None] | None = None,
) -> tuple[list[InferenceResult], list[dict[str, Any]]]:
    """Prefill/decode/memory of every model at every point. Returns the results and a description of each model.

    `after_model(bench, its_results)` runs while the model is still built (the budget search uses it on CUDA).
    """
    settings = settings or BenchSettings()

    def measure(bench: BenchModel, point: SweepPoint) -> InferenceResult:
        return measure_inference(
            bench, point, settings.repeats, settings.decode_tokens, settings.measure_memory, settings.stat()
        )

    def warm(bench: BenchModel, point: SweepPoint) -> None:
        bench.prefill_and_decode(*bench.inputs(point.visual_tokens), settings.decode_tokens)

    def skipped(bench: BenchModel, point: SweepPoint, why: str) -> InferenceResult:
        return InferenceResult(
            bench.name, bench.family, point.label, point.visual_tokens, point.visual_tokens + _prompt_length(bench),
            math.nan, math.nan, math.nan, bench.lm_params, 0, why, point.frames,
        )

    return _sweep(specs, points, settings, measure, warm, skipped, lambda r: r.prefill_s, "inference", after_model)


def run_training_sweep(
    specs: Sequence[ModelSpec],
    points: Sequence[SweepPoint],
    settings: BenchSettings | None = None,
    after_model: Callable[[BenchModel, list[TrainingResult]], None] | None = None,
) -> tuple[list[TrainingResult], list[dict[str, Any]]]:
    """Training step time and peak memory of every model at every point (Vamba's Fig. 3 setting)."""
    settings = settings or BenchSettings()

    def measure(bench: BenchModel, point: SweepPoint) -> TrainingResult:
        return measure_training(bench, point, settings.repeats, settings.measure_memory, settings.stat())

    def warm(bench: BenchModel, point: SweepPoint) -> None:
        bench.train_step(*bench.inputs(point.visual_tokens))

    def skipped(bench: BenchModel, point: SweepPoint, why: str) -> TrainingResult:
        return TrainingResult(
            bench.name, bench.family, point.label, point.visual_tokens, point.visual_tokens + _prompt_length(bench),
            math.nan, math.nan, bench.lm_params, 0, why, point.frames,
        )

    return _sweep(specs, points, settings, measure, warm, skipped, lambda r: r.step_s, "training", after_model)


# ---------------------------------------------------------------------------------------------------------------
# Analysis: ratios, growth exponents, memory budget
# ---------------------------------------------------------------------------------------------------------------


def _ratio(value: float, reference: float) -> float:
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.nan
    return value / reference


def ratio_rows(
    results: Sequence[InferenceResult | TrainingResult], baselines: dict[str, str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """hybrid/baseline of each metric at each input size, computed from the measured numbers.

    Read `prefill_s` and `step_s` ratios < 1 as "hybrid faster", `decode_tok_s` > 1 as "hybrid decodes faster",
    `peak_mem_mib` < 1 as "hybrid needs less memory".
    """
    index = {(r.model, r.label): r for r in results}
    rows = []
    for result in results:
        reference = index.get((baselines.get(result.model, ""), result.label))
        if reference is None:
            continue
        row: dict[str, Any] = {
            "model": result.model,
            "baseline": reference.model,
            "label": result.label,
            "visual_tokens": result.visual_tokens,
            "lm_params": result.lm_params,
            "baseline_lm_params": reference.lm_params,
            "params_ratio": _ratio(result.lm_params, reference.lm_params),
        }
        for metric in metrics:
            row[f"{metric}_ratio"] = _ratio(getattr(result, metric), getattr(reference, metric))
        rows.append(row)
    return rows


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares of log y = k log x + log c: returns (k, c) for y ~ c * x**k. NaNs if fewer than two usable
    (finite, positive) points or a single x."""
    pairs = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 2 or len({a for a, _ in pairs}) < 2:
        return math.nan, math.nan
    logs = np.log(np.asarray(pairs, dtype=np.float64))
    design = np.stack([logs[:, 0], np.ones(len(pairs))], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, logs[:, 1], rcond=None)
    return float(slope), float(math.exp(intercept))


def growth_exponents(
    results: Sequence[InferenceResult | TrainingResult], metric: str, tail: int = 3
) -> list[dict[str, Any]]:
    """Per model: the fitted exponent k of `metric ~ visual_tokens**k` over all measured points, and over the
    largest `tail` points (where the asymptotic term dominates and fixed costs matter least)."""
    rows = []
    for model in dict.fromkeys(r.model for r in results):
        own = sorted(
            (r for r in results if r.model == model and math.isfinite(getattr(r, metric))),
            key=lambda r: r.visual_tokens,
        )
        tokens = [r.visual_tokens for r in own]
        values = [getattr(r, metric) for r in own]
        rows.append(
            {
                "model": model,
                "metric": metric,
                "points": len(own),
                "tokens_from": tokens[0] if tokens else None,
                "tokens_to": tokens[-1] if tokens else None,
                "exponent": fit_power_law(tokens, values)[0],
                f"exponent_last{tail}": fit_power_law(tokens[-tail:], values[-tail:])[0],
            }
        )
    return rows


@dataclass
class BudgetResult:
    """The largest visual input that fits a memory budget for one model, and how it was found."""

    model: str
    budget_mib: float
    max_tokens: int
    max_frames: int | None
    method: str
    peak_mib: float = math.nan


def fit_memory_model(tokens: Sequence[float], peak: Sequence[float]) -> tuple[float, float, float]:
    """(a, b, c) with peak ~ a + b*n + c*n^2 by least squares; quadratic only with >= 3 points and when the fit
    says so (c > 0), otherwise linear (c = 0)."""
    n = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(peak, dtype=np.float64)
    keep = np.isfinite(n) & np.isfinite(y)
    n, y = n[keep], y[keep]
    if len(n) < 2:
        raise ValueError("Need at least two measured points to fit memory against tokens.")
    scale = float(n.max())
    u = n / scale  # conditioning: fit in units of the largest input
    if len(n) >= 3:
        (a, b, c), *_ = np.linalg.lstsq(np.stack([np.ones_like(u), u, u * u], axis=1), y, rcond=None)
        if c > 1e-9 * max(abs(a) + abs(b), 1e-30) and b >= 0:  # (a rounding-level c is a straight line)
            return float(a), float(b / scale), float(c / scale**2)
    (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(u), u], axis=1), y, rcond=None)
    return float(a), float(b / scale), 0.0


def tokens_within(coefficients: tuple[float, float, float], budget: float) -> float:
    """Largest n >= 0 with a + b*n + c*n^2 <= budget (inf if memory does not grow, 0 if even n=0 does not fit)."""
    a, b, c = coefficients
    if a > budget:
        return 0.0
    if c <= 0 and b <= 0:
        return math.inf
    # the root of c*n^2 + b*n - (budget - a), written so that it stays exact as c -> 0 (no cancellation)
    return 2 * (budget - a) / (b + math.sqrt(b * b + 4 * max(c, 0.0) * (budget - a)))


def estimate_max_tokens(
    results: Sequence[InferenceResult | TrainingResult], budget_mib: float, tokens_per_frame: int | None = None
) -> BudgetResult:
    """Largest input in the budget for one model, extrapolated from its measured peaks (cheap; an estimate)."""
    usable = [r for r in results if math.isfinite(r.peak_mem_mib)]
    if not results:
        raise ValueError("No results to extrapolate from.")
    coefficients = fit_memory_model([r.visual_tokens for r in usable], [r.peak_mem_mib for r in usable])
    limit = tokens_within(coefficients, budget_mib)
    step = tokens_per_frame or 1
    # (the relative slack keeps an exact solution like 3999.9999999 from losing a whole step)
    max_tokens = int(limit * (1 + 1e-9) // step) * step if math.isfinite(limit) else -1
    kind = "quadratic" if coefficients[2] > 0 else "linear"
    return BudgetResult(
        model=results[0].model,
        budget_mib=budget_mib,
        max_tokens=max_tokens,
        max_frames=max_tokens // tokens_per_frame if tokens_per_frame and max_tokens >= 0 else None,
        method=f"estimate ({kind} fit, {len(usable)} points <= {max(r.visual_tokens for r in usable)} tokens)",
    )


def search_max_tokens(fits: Callable[[int], bool], start: int, limit: int, step: int = 1) -> int:
    """Largest multiple of `step` in [step, limit] for which `fits` holds, assuming it is monotone: double from
    `start` until it fails, then bisect. 0 when not even `step` fits. Calls `fits` O(log(limit/step)) times."""
    step = max(1, int(step))
    low = 0  # largest known to fit
    high = limit // step + 1  # smallest known not to fit (in steps)
    probe = max(1, start // step)
    while probe < high:
        if fits(probe * step):
            low = probe
            probe *= 2
        else:
            high = probe
            break
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle * step):
            low = middle
        else:
            high = middle
    return low * step


def measure_max_tokens(
    bench: BenchModel,
    budget_mib: float,
    start: int,
    limit: int,
    tokens_per_frame: int | None = None,
    step: int | None = None,
    training: bool = False,
    decode_tokens: int = 1,
) -> BudgetResult:
    """Largest input in the budget for one model by real runs (prefill + `decode_tokens` steps, or a training
    step); OOM counts as "does not fit". The answer is a multiple of `step` (default: one frame, else 1 token)."""
    peaks: dict[int, float] = {}

    def run(ids: torch.Tensor, features: torch.Tensor) -> Any:
        if training:
            return bench.train_step(ids, features)
        return bench.prefill_and_decode(ids, features, decode_tokens)

    def fits(tokens: int) -> bool:
        ids, features = bench.inputs(tokens)
        try:
            peak = bench.peak_memory(lambda: run(ids, features)) / MIB
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not _is_oom(error):
                raise
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
            return False
        peaks[tokens] = peak
        return peak <= budget_mib

    step = step or tokens_per_frame or 1
    best = search_max_tokens(fits, start, limit, step)
    return BudgetResult(
        model=bench.name,
        budget_mib=budget_mib,
        max_tokens=best,
        max_frames=best // tokens_per_frame if tokens_per_frame else None,
        method=f"measured ({len(peaks)} runs{', hit limit' if best + step > limit else ''})",
        peak_mib=peaks.get(best, math.nan),
    )


# ---------------------------------------------------------------------------------------------------------------
# Output: tables, CSV, plots
# ---------------------------------------------------------------------------------------------------------------


def rows_of(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Dataclass results as dicts (dicts pass through)."""
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-" if math.isnan(value) else str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Plain-text table with aligned columns (numbers right-aligned, NaN as '-')."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [title] if title else []
    lines += [render(columns), render(["-" * w for w in widths]), *(render(line) for line in cells)]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """All rows to one CSV (columns: the union of keys, first-seen order); raw numbers, NaN as empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )
    return path


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_results(
    results: Sequence[InferenceResult | TrainingResult], metrics: Sequence[str], path: str | Path, title: str = ""
) -> Path | None:
    """One log-log panel per metric against visual tokens, a line per model. None (with a message) when
    matplotlib is not installed: plots are optional, the CSV holds the same numbers."""
    plt = _pyplot()
    if plt is None:
        print(f"matplotlib is not installed: skipped {Path(path).name} (pip install matplotlib for plots)")
        return None
    labels = {
        "prefill_s": "prefill time (s)",
        "decode_tok_s": "decode tokens/s",
        "peak_mem_mib": "peak memory (MiB)",
        "step_s": "training step time (s)",
    }
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    measured_x = sorted({r.visual_tokens for r in results})
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.4), squeeze=False)
    any_skipped = False
    for axis, metric in zip(axes[0], metrics):
        skipped_points = []  # (x, colour, status) of points that were not measured
        for model in dict.fromkeys(r.model for r in results):
            own = sorted((r for r in results if r.model == model), key=lambda r: r.visual_tokens)
            finite = [r for r in own if math.isfinite(getattr(r, metric))]
            colour = None
            if finite:
                (line,) = axis.plot([r.visual_tokens for r in finite], [getattr(r, metric) for r in finite],
                                    marker="o", label=model)
                colour = line.get_color()
            missing = [r for r in own if not math.isfinite(getattr(r, metric))]
            if missing and colour is None:
                colour = axis.plot([], [], marker="o", label=f"{model} (nothing measured)")[0].get_color()
            skipped_points += [(r.visual_tokens, colour, r.status) for r in missing]
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        # Ticks at exactly the measured sizes, labelled as plain numbers; no minor labels to overlap.
        axis.xaxis.set_major_locator(FixedLocator(measured_x))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if len(measured_x) > 6:
            axis.tick_params(axis="x", labelrotation=45)
        if skipped_points:
            any_skipped = True
            bottom = axis.get_ylim()[0]
            for x, colour, _status in skipped_points:  # on the bottom edge, in the model's colour
                axis.scatter([x], [bottom], marker="x", s=60, color=colour, clip_on=False, zorder=5)
            axis.scatter([], [], marker="x", color="grey", label="skipped (see the CSV's status)")
        axis.set_xlabel("visual tokens (measured sizes)")
        axis.set_ylabel(labels.get(metric, metric))
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize="small")
    if any_skipped and not title:
        title = "x on the bottom edge: not measured (skipped)"
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Command line (`hybrid-vlm bench`, benchmarks/*.py)
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_TOKENS = "256,512,1024,2048"
QUICK = {
    "families": "jamba,mamba2,vamba,mambavlm",
    "tokens": "256,1024,4096",
    "size": "small",
    "repeats": 1,
    "decode_tokens": 4,
    "time_limit": 30.0,
    # one thread: these widths gain little from intra-op threads, and on a shared CI machine the threads'
    # spin-waits made every op 3-30x slower and the numbers meaningless
    "threads": 1,
}
INFERENCE_METRICS = ("prefill_s", "decode_tok_s", "peak_mem_mib")
TRAINING_METRICS = ("step_s", "peak_mem_mib")


def _int_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise SystemExit(f"error: expected a comma-separated list of integers, got {text!r}") from error
    if any(v <= 0 for v in values):
        raise SystemExit(f"error: sizes must be positive, got {text!r}")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark options (shared by `hybrid-vlm bench` and the scripts in benchmarks/)."""
    what = parser.add_argument_group("what to compare")
    what.add_argument("--families", default="jamba,mamba2,vamba,mambavlm", help="hybrid families, comma-separated "
                      f"({', '.join(f for f in FAMILY_PRESETS if f != 'llava')})")
    what.add_argument("--baseline", default="llava", help="pure-transformer family of the same width and depth")
    what.add_argument("--size", default="small", choices=sorted(SIZES), help="width/depth: " + "; ".join(
        f"{k}: {v.hidden_size}x{v.num_hidden_layers}" for k, v in SIZES.items()))
    what.add_argument("--match-params", action="store_true",
                      help="also give each hybrid a baseline whose MLP width matches its LM parameter count")
    what.add_argument("--mode", default="inference", choices=("inference", "training", "both"),
                      help="prefill/decode/memory sweep, training-step sweep (Vamba Fig. 3), or both")
    sizes = parser.add_argument_group("visual input sizes (each given axis is its own sweep)")
    sizes.add_argument("--tokens", default=None, help=f"visual token counts (default {DEFAULT_TOKENS})")
    sizes.add_argument("--frames", default=None, help="video frame counts, e.g. 8,16,...,1024")
    sizes.add_argument("--tokens-per-frame", type=int, default=LONGLLAVA_TOKENS_PER_FRAME,
                       help=f"visual tokens per frame (default {LONGLLAVA_TOKENS_PER_FRAME}, LongLLaVA's 12x12)")
    sizes.add_argument("--resolutions", default=None,
                       help="square AnyRes image sides in px (336 px tiles + global view), e.g. 672,1344,2688,4368")
    run = parser.add_argument_group("how to run")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    run.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    run.add_argument("--repeats", type=int, default=3, help="timed runs per point (the statistic is reported)")
    run.add_argument("--warmup", type=int, default=1, help="untimed runs per model on its smallest input")
    run.add_argument("--decode-tokens", type=int, default=8, help="greedy decode steps after each prefill")
    run.add_argument("--stat", default="median", choices=("median", "min", "mean"))
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    run.add_argument("--time-limit", type=float, default=None,
                     help="seconds; once a model's prefill/step exceeds it, its larger inputs are skipped")
    run.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    run.add_argument("--quick", action="store_true",
                     help="CI-sized run (a few minutes on 2 CPU cores): " + ", ".join(f"{k}={v}" for k, v in
                                                                                      QUICK.items()))
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    budget = parser.add_argument_group("largest input in a memory budget")
    budget.add_argument("--budget-mib", type=float, default=None,
                        help="budget in MiB (default: the GPU's total memory; 1024 on CPU)")
    budget.add_argument("--budget-method", default="auto", choices=("auto", "estimate", "measure", "off"),
                        help="auto: real runs on CUDA, extrapolated from the sweep's peaks on CPU")
    budget.add_argument("--budget-max-tokens", type=int, default=2**20, help="upper end of the measured search")
    parser.add_argument("--out", default=None, help="folder for CSV files and PNG plots")
    return parser


def add_bench_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on the `hybrid-vlm` sub-command parsers; dispatch to `run_bench(args)`."""
    parser = subparsers.add_parser(
        "bench",
        help="hybrids vs the transformer baseline: prefill, decode, memory, training vs visual tokens",
        description=__doc__.split("\n\n")[0],
    )
    return add_bench_arguments(parser)


def _apply_quick(args: argparse.Namespace) -> None:
    """`--quick` replaces the options left at their defaults (explicit ones win)."""
    for key, value in QUICK.items():
        if key == "tokens" and (args.frames or args.resolutions):
            continue
        if getattr(args, key) == _DEFAULTS[key]:
            setattr(args, key, value)


def _axes(args: argparse.Namespace) -> list[tuple[str, list[SweepPoint], int | None]]:
    """(name, points, tokens per frame) of every sweep asked for."""
    axes = []
    if args.tokens or not (args.frames or args.resolutions):
        axes.append(("tokens", token_points(_int_list(args.tokens or DEFAULT_TOKENS)), None))
    if args.frames:
        axes.append(("frames", frame_points(_int_list(args.frames), args.tokens_per_frame), args.tokens_per_frame))
    if args.resolutions:
        axes.append(("anyres", resolution_points(_int_list(args.resolutions)), None))
    return axes


def _default_budget(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / MIB
    return 1024.0


_DEFAULTS = {
    "families": "jamba,mamba2,vamba,mambavlm",
    "tokens": None,
    "size": "small",
    "repeats": 3,
    "decode_tokens": 8,
    "time_limit": None,
    "threads": None,
}


def _cpu_name() -> str:
    """The CPU's model name (lscpu's "Model name"), for reports."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _header_line(device: torch.device, dtype: str, size: str, repeats: int, stat: str) -> str:
    """Device, threads, size, repetitions and library versions: the first line of every report."""

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    shape = SIZES[size]
    return (
        f"hybrid_vlm bench: device {device} ({where}, {torch.get_num_threads()} torch threads), dtype {dtype}, size "
        f"{size} (hidden {shape.hidden_size}, {shape.num_hidden_layers} layers), repeats {repeats} ({stat}); "
        f"torch {torch.__version__}, transformers {TRANSFORMERS_VERSION}"
    )


def _header(args: argparse.Namespace, device: torch.device) -> str:
    return (
        _header_line(device, args.dtype, args.size, args.repeats, args.stat)
        + f", decode {args.decode_tokens} tokens\n"
        "Visual tokens enter as fixed embeddings (vision tower and projector skipped: identical for both sides). "
        + (
            "Memory: torch.cuda.max_memory_allocated (weights included)."
            if device.type == "cuda"
            else "Memory: peak bytes of live tensor storages (TensorMemoryTracker; weights included; RSS not used)."
        )
    )


def _report(
    title: str,
    results: Sequence[InferenceResult | TrainingResult],
    metrics: Sequence[str],
    baselines: dict[str, str],
    budgets: Sequence[BudgetResult],
    out: Path | None,
    stem: str,
) -> None:
    base_columns = ["model", "label", "visual_tokens", "seq_len"]
    print()
    print(format_table(rows_of(results), [*base_columns, *metrics, "status"], title=f"{title}: measured"))
    ratios = ratio_rows(results, baselines, metrics)
    ratio_columns = ["model", "baseline", "label", "visual_tokens", *(f"{m}_ratio" for m in metrics), "params_ratio"]
    print()
    print(format_table(ratios, ratio_columns, title=f"{title}: hybrid / baseline (time, memory < 1 and decode "
                                                    "tokens/s > 1 favour the hybrid)"))
    time_metric = metrics[0]
    exponents = growth_exponents(results, time_metric)
    print()
    print(format_table(exponents, title=f"{title}: fitted growth exponent k of {time_metric} ~ visual_tokens^k "
                                        "(log-log least squares)"))
    if budgets:
        print()
        print(format_table(rows_of(budgets), title=f"{title}: largest input within {budgets[0].budget_mib:,.0f} MiB"))
    if out is not None:
        written = [
            write_csv(rows_of(results), out / f"{stem}.csv"),
            write_csv(ratios, out / f"{stem}_ratios.csv"),
            write_csv(exponents, out / f"{stem}_exponents.csv"),
        ]
        if budgets:
            written.append(write_csv(rows_of(budgets), out / f"{stem}_budget.csv"))
        plot = plot_results(results, metrics, out / f"{stem}.png", title=title)
        if plot is not None:
            written.append(plot)
        print("wrote " + ", ".join(str(p) for p in written))


def _budget_search(
    budgets: list[BudgetResult],
    budget_mib: float,
    limit: int,
    tokens_per_frame: int | None,
    step: int,
    training: bool,
) -> Callable[[BenchModel, list[Any]], None]:
    """A sweep hook that searches a model's largest input by real runs, starting from its largest measured fit."""

    def search(bench: BenchModel, results: list[Any]) -> None:
        fitted = [r.visual_tokens for r in results if r.status == "ok" and r.peak_mem_mib <= budget_mib]
        start = max(fitted, default=step)
        budgets.append(measure_max_tokens(bench, budget_mib, start, limit, tokens_per_frame, step, training))

    return search


def run_bench(args: argparse.Namespace) -> int:
    """Run the sweeps `args` asks for, print the tables, write CSV/PNG to `args.out`. Returns the exit code."""
    if args.quick:
        _apply_quick(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available")
        return 2
    families = [f for f in args.families.replace(" ", "").split(",") if f]
    for family in [*families, args.baseline]:
        family_preset(family)
    settings = BenchSettings(
        size=args.size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        repeats=args.repeats,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        measure_memory=not args.no_memory,
        statistic=args.stat,
        time_limit_s=args.time_limit,
        progress=not args.no_progress,
    )
    specs = model_specs(families, args.baseline, args.size, args.match_params)
    baselines = baseline_of(specs)
    out = Path(args.out) if args.out else None
    method = args.budget_method
    if method == "auto":
        method = "measure" if device.type == "cuda" else "estimate"
    if args.no_memory and method == "estimate":
        method = "off"
    budget_mib = args.budget_mib or _default_budget(device)
    print(_header(args, device))
    described_once = False
    modes = ("inference", "training") if args.mode == "both" else (args.mode,)
    for axis, points, tokens_per_frame in _axes(args):
        for mode in modes:
            training = mode == "training"
            budgets: list[BudgetResult] = []
            largest = max(p.visual_tokens for p in points)
            step = tokens_per_frame or max(1, min(p.visual_tokens for p in points) // 4)

            search = _budget_search(
                budgets, budget_mib, args.budget_max_tokens, tokens_per_frame, step, training
            )
            after = search if method == "measure" else None
            if training:
                results, described = run_training_sweep(specs, points, settings, after)
            else:
                results, described = run_inference_sweep(specs, points, settings, after)
            if method == "estimate":
                for spec in specs:
                    own = [r for r in results if r.model == spec.name and math.isfinite(r.peak_mem_mib)]
                    if len(own) >= 2:
                        budgets.append(estimate_max_tokens(own, budget_mib, tokens_per_frame))
            if not described_once:
                print()
                print(format_table(described, title="models (LM parameters: embeddings included, vision excluded)"))
                if out is not None:
                    write_csv(described, out / "models.csv")
                described_once = True
            title = f"{'training step' if training else 'inference'} vs {axis} (up to {largest:,} visual tokens)"
            _report(
                title, results, TRAINING_METRICS if training else INFERENCE_METRICS, baselines, budgets, out,
                f"{'training' if training else 'inference'}_{axis}",
            )
    return 0



def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hybrid_vlm.benchmark ...`: the same as `hybrid-vlm bench ...`."""
    parser = argparse.ArgumentParser(prog="python -m hybrid_vlm.benchmark", description=__doc__.split("\n\n")[0])
    return run_bench(add_bench_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
