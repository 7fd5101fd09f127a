"""The largest visual input within a memory budget: extrapolated from fitted peaks, or found by real runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .measure import InferenceResult, TrainingResult, is_oom
from .memory import MIB
from .models import BenchModel


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
            if not is_oom(error):
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
