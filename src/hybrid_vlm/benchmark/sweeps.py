"""Sweeps: every model at every visual input size, one model built at a time, with skips after OOM or a time limit."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .inputs import SweepPoint
from .measure import InferenceResult, TrainingResult, is_oom, measure_inference, measure_training
from .models import BenchModel, lm_parameter_count, matched_intermediate_size


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
                    if not is_oom(error):
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
            bench.name, bench.family, point.label, point.visual_tokens, point.visual_tokens + bench.prompt_length,
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
            bench.name, bench.family, point.label, point.visual_tokens, point.visual_tokens + bench.prompt_length,
            math.nan, math.nan, bench.lm_params, 0, why, point.frames,
        )

    return _sweep(specs, points, settings, measure, warm, skipped, lambda r: r.step_s, "training", after_model)
