"""Which op dominates a model's prefill (time and memory): torch.profiler over one prefill of `hybrid-vlm bench`'s
setting, for a family and its baseline side by side. Used to explain the targets the benchmarks miss.

    python benchmarks/bench_profile.py --families vamba,llava --tokens 4096 --threads 1
    python benchmarks/bench_profile.py --families mambavlm,llava --tokens 1458 --sort self_cpu_time_total

On CUDA (`--device cuda`) the sort keys are self_cuda_time_total / self_cuda_memory_usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from hybrid_vlm.benchmark import (
    DTYPES,
    MIB,
    SIZES,
    BenchModel,
    TensorMemoryTracker,
    format_table,
    header_line,
    tensor_bytes,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="vamba,llava")
    parser.add_argument("--tokens", type=int, default=4096, help="visual tokens in the prompt")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--sort", default=None, help="profiler sort key (default: self time, then self memory)")
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--training", action="store_true", help="profile a training step (forward + backward)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(header_line(device, args.dtype, args.size, 1, "single run"))
    unit = "cuda" if device.type == "cuda" else "cpu"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if unit == "cuda" else [])
    sorts = [args.sort] if args.sort else [f"self_{unit}_time_total", f"self_{unit}_memory_usage"]
    for family in args.families.replace(" ", "").split(","):
        bench = BenchModel.build(family, args.size, device, DTYPES[args.dtype])
        ids, features = bench.inputs(args.tokens)
        def run(bench=bench, ids=ids, features=features):
            if args.training:
                return bench.train_step(ids, features)
            return bench.prefill_and_decode(ids, features, 0)

        run()  # warm-up
        with profile(activities=activities, profile_memory=True) as prof:
            run()
        averages = prof.key_averages()
        if device.type == "cpu":
            weights = [*bench.model.parameters(), *bench.model.buffers()]
            with TensorMemoryTracker(weights, record_peak=True) as tracker:
                run()
            title = (f"\n{family}: tensors alive at the peak ({tracker.peak / MIB:.1f} MiB besides "
                     f"{tensor_bytes(bench.model) / MIB:.1f} MiB of weights), largest groups")
            print(format_table(tracker.peak_breakdown(args.rows), title=title))
        for key in sorts:
            what = "training step" if args.training else "prefill"
            print(f"\n{family} ({bench.describe()['ssm_path']} SSM path), {what} with {args.tokens} visual tokens, "
                  f"sorted by {key}:")
            print(averages.table(sort_by=key, row_limit=args.rows, max_name_column_width=40))
        bench.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
