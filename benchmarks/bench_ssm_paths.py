"""Our SSM mixers (hybrid_vlm.ssm: Vamba's visual stream, the Mamba projector) on each compute path: forward (and
forward + backward) time of the chunked PyTorch path against the mamba-ssm kernels (CUDA, when installed) and the
sequential reference recurrence (short inputs only). Issue 7's target: the torch path within 3x of the kernels.

CPU (torch vs reference; there are no kernels on CPU):
    python benchmarks/bench_ssm_paths.py --threads 1
GPU (torch vs kernels, the 1b shape: hidden 2048, head dim 64, state 128, chunk 256):
    python benchmarks/bench_ssm_paths.py --device cuda --dtype bf16 --size 1b --lengths 4096,16384,65536
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from hybrid_vlm.benchmark import DTYPES, SIZES, format_table, header_line
from hybrid_vlm.path_report import own_ssm_path
from hybrid_vlm.ssm import Mamba1Mixer, Mamba2Mixer


def timed(run, device: torch.device, repeats: int) -> float:
    run()  # warm-up (kernels compile, caches fill)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--lengths", default="256,1024,4096,16384")
    parser.add_argument("--reference-max", type=int, default=1024, help="longest input for the sequential path")
    parser.add_argument("--kinds", default="mamba2,mamba1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype, shape = torch.device(args.device), DTYPES[args.dtype], SIZES[args.size]
    print(header_line(device, args.dtype, args.size, args.repeats, "median"))
    rows = []
    for kind in args.kinds.split(","):
        torch.manual_seed(0)
        if kind == "mamba2":
            mixer = Mamba2Mixer(shape.hidden_size, d_state=shape.ssm_state_size, head_dim=shape.ssm_head_dim,
                                chunk_size=shape.ssm_chunk_size)
        else:
            mixer = Mamba1Mixer(shape.hidden_size, d_state=16)
        mixer = mixer.to(device=device, dtype=dtype)
        auto_path, reason = own_ssm_path(mixer)
        paths = ["torch", "reference"] + (["kernels"] if "kernels" in auto_path else [])
        for length in (int(n) for n in args.lengths.split(",")):
            hidden = torch.randn(1, length, shape.hidden_size, device=device, dtype=dtype)
            row = {"mixer": kind, "tokens": length}
            for path in paths:
                if path == "reference" and length > args.reference_max:
                    continue
                mixer.compute_path = path
                with torch.no_grad():
                    row[f"{path}_fwd_s"] = timed(lambda m=mixer, h=hidden: m(h), device, args.repeats)
                x = hidden.clone().requires_grad_(True)
                row[f"{path}_fwd_bwd_s"] = timed(
                    lambda m=mixer, h=x: m(h).float().sum().backward(), device, args.repeats
                )
            mixer.compute_path = None
            for other in ("kernels", "reference"):
                if f"{other}_fwd_s" in row:
                    row[f"torch/{other}_fwd"] = row["torch_fwd_s"] / row[f"{other}_fwd_s"]
                    row[f"torch/{other}_fwd_bwd"] = row["torch_fwd_bwd_s"] / row[f"{other}_fwd_bwd_s"]
            rows.append(row)
        print(f"{kind}: automatic path here: {auto_path} ({reason})")
    print()
    print(format_table(rows, title="seconds per call (median) and torch-path / other-path ratios"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
