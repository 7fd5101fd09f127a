"""Training step time (forward + backward) and peak memory against the number of video frames, for each hybrid
family and the pure-transformer baseline of the same width and depth: the setting of Vamba's Fig. 3. Prints the
measured table, the ratios hybrid/baseline, the fitted growth exponents and the largest frame count in a memory
budget (real runs on CUDA, an extrapolation of the measured peaks on CPU).

CPU, small models (a few minutes on 2 cores):
    python benchmarks/bench_training.py --threads 1 --out bench-results/cpu
GPU, ~1.1B-parameter text models (random weights, bf16; the baseline is expected to run out of memory first):
    python benchmarks/bench_training.py --device cuda --dtype bf16 --size 1b --out bench-results/gpu

Every `hybrid-vlm bench` option works here too (--families vamba --frames 8,...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hybrid_vlm.benchmark import add_bench_arguments, run_bench

# On CPU Jamba is left out by default: transformers' pure-PyTorch Jamba scan is a Python loop over tokens whose
# backward re-materialises the full (d_inner, seq, d_state) gradient at every step, so its training step grows
# quadratically (2 s at 128 tokens, 20 s at 512 with the small size). Pass --families jamba,... to see it.
CPU_DEFAULTS = {"frames": "8,16,32,64,128,256", "tokens_per_frame": 16, "families": "vamba,mamba2", "time_limit": 60.0}
GPU_DEFAULTS = {
    "frames": "8,16,32,64,128,256,512",
    "tokens_per_frame": 144,
    "families": "jamba,mamba2,vamba",
    "time_limit": None,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    parser.set_defaults(mode="training", tokens_per_frame=None, families=None, time_limit=None)
    args = parser.parse_args(argv)
    defaults = GPU_DEFAULTS if args.size == "1b" else CPU_DEFAULTS
    if not (args.tokens or args.frames or args.resolutions):
        args.frames = defaults["frames"]
    for key in ("tokens_per_frame", "families", "time_limit"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
