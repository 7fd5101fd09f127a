"""`hybrid-vlm bench` and `python -m hybrid_vlm.benchmark`: the options, the sweeps they ask for, the reports."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..cli.registry import command_help
from .budget import BudgetResult, estimate_max_tokens, measure_max_tokens
from .fits import growth_exponents, ratio_rows
from .inputs import LONGLLAVA_TOKENS_PER_FRAME, SweepPoint, frame_points, resolution_points, token_points
from .measure import InferenceResult, TrainingResult
from .memory import MIB
from .models import DTYPES, FAMILY_PRESETS, SIZES, BenchModel, family_preset
from .plots import plot_results
from .sweeps import BenchSettings, baseline_of, model_specs, run_inference_sweep, run_training_sweep
from .tables import format_table, header_line, rows_of, write_csv

DESCRIPTION = "Benchmarks: each hybrid family against the pure-transformer baseline of the same width and depth."
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
    """Register `bench` on the `hybrid-vlm` sub-command parsers (`run_bench(args)` runs it)."""
    parser = subparsers.add_parser("bench", help=command_help("bench"), description=DESCRIPTION)
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


def _header(args: argparse.Namespace, device: torch.device) -> str:
    return (
        header_line(device, args.dtype, args.size, args.repeats, args.stat)
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
    parser = argparse.ArgumentParser(prog="python -m hybrid_vlm.benchmark", description=DESCRIPTION)
    return run_bench(add_bench_arguments(parser).parse_args(argv))

