"""Vamba against the pure-transformer baseline of the same width and depth as the number of video frames grows:
prefill time, decode tokens/s and peak memory, the ratios vamba/baseline at each frame count, the fitted growth
exponents and the largest frame count in a memory budget (issue 4's benchmark; Vamba paper Fig. 3-4 setting).

CPU, small models (`vamba-tiny`'s design at hidden 128 x 8 layers; one thread is steadier on a shared machine):
    python benchmarks/bench_vamba_frames.py --threads 1 --out bench-results/cpu
GPU, ~1.1B-parameter text models (random weights, bf16), LongLLaVA's 144 tokens per frame up to 1024 frames:
    python benchmarks/bench_vamba_frames.py --device cuda --dtype bf16 --size 1b --out bench-results/gpu

Every `hybrid-vlm bench` option works here too (--tokens-per-frame, --match-params, --mode both, ...); the same
sweep is `hybrid-vlm bench --families vamba --frames 8,16,32,64,128,256 --tokens-per-frame 32`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybrid_vlm.benchmark import add_bench_arguments, run_bench

# CPU: 32 tokens per frame keeps 256 frames at 8K visual tokens (the baseline's prefill is then a few seconds).
CPU_DEFAULTS = {"frames": "8,16,32,64,128,256", "tokens_per_frame": 32}
GPU_DEFAULTS = {"frames": "8,16,32,64,128,256,512,1024", "tokens_per_frame": 144}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    parser.set_defaults(families="vamba", tokens_per_frame=None)
    args = parser.parse_args(argv)
    defaults = GPU_DEFAULTS if args.size == "1b" else CPU_DEFAULTS
    if not (args.tokens or args.frames or args.resolutions):
        args.frames = defaults["frames"]
    if args.tokens_per_frame is None:
        args.tokens_per_frame = defaults["tokens_per_frame"]
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
