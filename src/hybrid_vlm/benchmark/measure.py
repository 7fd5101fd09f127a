"""One measurement of one model at one visual input size: prefill/decode, a training step, or a generation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .inputs import SweepPoint, token_points
from .memory import MIB
from .models import BenchModel


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


def is_oom(error: BaseException) -> bool:
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
