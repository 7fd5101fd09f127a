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

One module per job: `models` (families at matched sizes, `BenchModel`), `inputs` (visual token counts, sweep points),
`memory` (`TensorMemoryTracker`), `measure` (one model at one size), `sweeps`, `fits` (ratios, growth exponents),
`budget` (largest input in a memory budget), `tables` (text tables, CSV), `plots` (PNG) and `cli` (`hybrid-vlm bench`,
`python -m hybrid_vlm.benchmark`). Every public name is importable from `hybrid_vlm.benchmark`.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first use (so importing one module of the package
# does not import the others).
_PUBLIC_NAMES: dict[str, str] = {
    "add_bench_arguments": ".cli",
    "add_bench_subcommand": ".cli",
    "ANYRES_PATCH": ".inputs",
    "anyres_resolution_tokens": ".inputs",
    "ANYRES_TILE": ".inputs",
    "baseline_of": ".sweeps",
    "BenchModel": ".models",
    "BenchSettings": ".sweeps",
    "BudgetResult": ".budget",
    "DEFAULT_TOKENS": ".cli",
    "DTYPES": ".models",
    "estimate_max_tokens": ".budget",
    "family_preset": ".models",
    "FAMILY_PRESETS": ".models",
    "fit_memory_model": ".budget",
    "fit_power_law": ".fits",
    "fixed_visual_features": ".models",
    "format_table": ".tables",
    "frame_points": ".inputs",
    "frames_to_tokens": ".inputs",
    "GenerationResult": ".measure",
    "growth_exponents": ".fits",
    "header_line": ".tables",
    "INFERENCE_METRICS": ".cli",
    "InferenceResult": ".measure",
    "is_oom": ".measure",
    "lm_parameter_count": ".models",
    "LONGLLAVA_TOKENS_PER_FRAME": ".inputs",
    "main": ".cli",
    "matched_intermediate_size": ".models",
    "measure_generation": ".measure",
    "measure_inference": ".measure",
    "measure_max_tokens": ".budget",
    "measure_training": ".measure",
    "MIB": ".memory",
    "model_specs": ".sweeps",
    "ModelSize": ".models",
    "ModelSpec": ".sweeps",
    "plot_results": ".plots",
    "PROMPT_PREFIX": ".models",
    "PROMPT_SUFFIX": ".models",
    "pyplot": ".plots",
    "QUICK": ".cli",
    "ratio_rows": ".fits",
    "resolution_points": ".inputs",
    "rows_of": ".tables",
    "run_bench": ".cli",
    "run_inference_sweep": ".sweeps",
    "run_training_sweep": ".sweeps",
    "search_max_tokens": ".budget",
    "size_overrides": ".models",
    "SIZES": ".models",
    "SweepPoint": ".inputs",
    "tensor_bytes": ".memory",
    "TensorMemoryTracker": ".memory",
    "token_points": ".inputs",
    "tokens_within": ".budget",
    "TRAINING_METRICS": ".cli",
    "TrainingResult": ".measure",
    "write_csv": ".tables",
}

__all__ = sorted(_PUBLIC_NAMES)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES, globals())
