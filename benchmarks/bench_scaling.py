"""Prefill latency, decode tokens/s and peak memory of each hybrid family against the pure-transformer baseline of
the same width and depth, as the visual input grows: videos (frames) and AnyRes images (resolutions). Also the
largest input that fits a memory budget, the ratios hybrid/baseline and the fitted growth exponents.

CPU, small models (a few minutes on 2 cores; one thread is steadier on a shared machine):
    python benchmarks/bench_scaling.py --threads 1 --out bench-results/cpu
GPU, ~1.1B-parameter text models of the papers' shapes (random weights, bf16):
    python benchmarks/bench_scaling.py --device cuda --dtype bf16 --size 1b --out bench-results/gpu

Every `hybrid-vlm bench` option works here too; explicit --tokens/--frames/--resolutions replace the defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybrid_vlm.benchmark import add_bench_arguments, run_bench

# CPU: 16 tokens per frame keeps 512 frames at 8K tokens; GPU: LongLLaVA's 144 tokens per frame, 8 -> 1024 frames,
# and AnyRes from 672 px (2,928 tokens) to MMJamba's 4368 px (98,232 tokens).
CPU_DEFAULTS = {
    "frames": "8,16,32,64,128,256,512",
    "tokens_per_frame": 16,
    "resolutions": "672,1008",
    "decode_tokens": 8,
}
GPU_DEFAULTS = {
    "frames": "8,16,32,64,128,256,512,1024",
    "tokens_per_frame": 144,
    "resolutions": "672,1344,2016,2688,4368",
    "decode_tokens": 32,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    parser.set_defaults(tokens_per_frame=None, decode_tokens=None)
    args = parser.parse_args(argv)
    defaults = GPU_DEFAULTS if args.size == "1b" else CPU_DEFAULTS
    if not (args.tokens or args.frames or args.resolutions):
        args.frames, args.resolutions = defaults["frames"], defaults["resolutions"]
    for key in ("tokens_per_frame", "decode_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
