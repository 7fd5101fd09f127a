"""Analysis of measured results: hybrid/baseline ratios and fitted growth exponents (log-log least squares)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .measure import InferenceResult, TrainingResult


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
