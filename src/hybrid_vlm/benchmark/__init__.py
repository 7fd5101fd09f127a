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

from .budget import (
    BudgetResult,
    estimate_max_tokens,
    fit_memory_model,
    measure_max_tokens,
    search_max_tokens,
    tokens_within,
)
from .cli import (
    DEFAULT_TOKENS,
    INFERENCE_METRICS,
    QUICK,
    TRAINING_METRICS,
    add_bench_arguments,
    add_bench_subcommand,
    main,
    run_bench,
)
from .fits import fit_power_law, growth_exponents, ratio_rows
from .inputs import (
    ANYRES_PATCH,
    ANYRES_TILE,
    LONGLLAVA_TOKENS_PER_FRAME,
    SweepPoint,
    anyres_resolution_tokens,
    frame_points,
    frames_to_tokens,
    resolution_points,
    token_points,
)
from .measure import (
    GenerationResult,
    InferenceResult,
    TrainingResult,
    is_oom,
    measure_generation,
    measure_inference,
    measure_training,
)
from .memory import MIB, TensorMemoryTracker, tensor_bytes
from .models import (
    DTYPES,
    FAMILY_PRESETS,
    PROMPT_PREFIX,
    PROMPT_SUFFIX,
    SIZES,
    BenchModel,
    ModelSize,
    family_preset,
    fixed_visual_features,
    lm_parameter_count,
    matched_intermediate_size,
    size_overrides,
)
from .plots import plot_results, pyplot
from .sweeps import BenchSettings, ModelSpec, baseline_of, model_specs, run_inference_sweep, run_training_sweep
from .tables import format_table, header_line, rows_of, write_csv

__all__ = [
    "ANYRES_PATCH",
    "ANYRES_TILE",
    "DEFAULT_TOKENS",
    "DTYPES",
    "FAMILY_PRESETS",
    "INFERENCE_METRICS",
    "LONGLLAVA_TOKENS_PER_FRAME",
    "MIB",
    "PROMPT_PREFIX",
    "PROMPT_SUFFIX",
    "QUICK",
    "SIZES",
    "TRAINING_METRICS",
    "BenchModel",
    "BenchSettings",
    "BudgetResult",
    "GenerationResult",
    "InferenceResult",
    "ModelSize",
    "ModelSpec",
    "SweepPoint",
    "TensorMemoryTracker",
    "TrainingResult",
    "add_bench_arguments",
    "add_bench_subcommand",
    "anyres_resolution_tokens",
    "baseline_of",
    "estimate_max_tokens",
    "family_preset",
    "fit_memory_model",
    "fit_power_law",
    "fixed_visual_features",
    "format_table",
    "frame_points",
    "frames_to_tokens",
    "growth_exponents",
    "header_line",
    "is_oom",
    "lm_parameter_count",
    "main",
    "matched_intermediate_size",
    "measure_generation",
    "measure_inference",
    "measure_max_tokens",
    "measure_training",
    "model_specs",
    "plot_results",
    "pyplot",
    "ratio_rows",
    "resolution_points",
    "rows_of",
    "run_bench",
    "run_inference_sweep",
    "run_training_sweep",
    "search_max_tokens",
    "size_overrides",
    "tensor_bytes",
    "token_points",
    "tokens_within",
    "write_csv",
]
