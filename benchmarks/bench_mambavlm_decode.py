"""MambaVLM's Table 4 setting: generation speed with a long visual sequence on a Mamba LM against a transformer
baseline with the short one (seed 004, section 4.5: MambaVLM-2.8B with 1458 visual tokens, 131 tokens/s, against
TinyLLaVA with 576, 40 tokens/s; 256 output tokens each; 3.3x).

Here both language models have the same width and depth (`--size`), random weights, and the visual tokens enter as
fixed embeddings (the vision towers and projectors are skipped, as in `hybrid-vlm bench`). Reported per model:
prefill seconds, decode tokens/s (single-token steps only) and end-to-end tokens/s (output tokens over prefill +
decode: the paper's "speed"), then the ratios hybrid/baseline. The baseline is also run with the hybrid's visual
tokens, to separate the effect of the LM from that of the shorter prompt.

CPU, small models (one thread is steadier on a shared machine):
    python benchmarks/bench_mambavlm_decode.py --threads 1 --out bench-results/cpu
GPU (~1B text models, bf16; install mamba-ssm + causal-conv1d first or the Mamba LM runs transformers' torch path):
    python benchmarks/bench_mambavlm_decode.py --device cuda --dtype bf16 --size 1b --out bench-results/gpu
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hybrid_vlm.benchmark import (
    DTYPES,
    SIZES,
    BenchModel,
    BenchSettings,
    format_table,
    header_line,
    measure_generation,
    pyplot,
    rows_of,
    write_csv,
)

PAPER = {"hybrid": ("MambaVLM (Mamba-2.8B)", 1458, 131.07), "baseline": ("TinyLLaVA (Phi2-2.7B)", 576, 39.64)}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hybrid", default="mambavlm", help="hybrid family (default: mambavlm, Mamba-1 LM)")
    parser.add_argument("--baseline", default="llava", help="transformer family of the same width and depth")
    parser.add_argument("--visual-tokens", type=int, default=1458, help="the hybrid's visual tokens (2 x 27x27)")
    parser.add_argument("--baseline-visual-tokens", type=int, default=576, help="the baseline's (24x24)")
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per row (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out", default=None, help="folder for the CSV and the PNG plot")
    return parser.parse_args(argv)


def plot(rows: list[dict], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        print(f"matplotlib is not installed: skipped {path.name}")
        return None
    labels = [f"{r['model']}\n{r['visual_tokens']} visual" for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in zip(axes, ("e2e_tok_s", "decode_tok_s"), ("end-to-end tokens/s", "decode tokens/s")):
        axis.bar(labels, [r[key] for r in rows], color=["tab:green", "tab:blue", "tab:gray"][: len(rows)])
        axis.set_title(title)
        axis.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"MambaVLM Table 4 setting: {rows[0]['output_tokens']} output tokens")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(size=args.size, device=args.device, dtype=DTYPES[args.dtype], repeats=args.repeats)
    print(header_line(torch.device(args.device), args.dtype, args.size, args.repeats, "median"))
    results, described = [], []
    for family, token_counts in (
        (args.hybrid, [args.visual_tokens]),
        (args.baseline, [args.baseline_visual_tokens, args.visual_tokens]),
    ):
        bench = BenchModel.build(family, args.size, args.device, settings.dtype)
        described.append(bench.describe())
        bench.prefill_and_decode(*bench.inputs(16), 4)  # warm-up
        results += [measure_generation(bench, n, args.output_tokens, args.repeats) for n in token_counts]
        bench.release()
    print()
    print(format_table(described, title="models"))
    rows = rows_of(results)
    print()
    print(format_table(rows, ["model", "visual_tokens", "seq_len", "output_tokens", "prefill_s", "decode_tok_s",
                              "e2e_tok_s", "lm_params"], title="generation (median of repeats)"))
    hybrid, baseline, same = rows
    ratios = [
        {"comparison": f"{hybrid['model']}@{hybrid['visual_tokens']} / {other['model']}@{other['visual_tokens']}",
         "e2e_tok_s_ratio": hybrid["e2e_tok_s"] / other["e2e_tok_s"],
         "decode_tok_s_ratio": hybrid["decode_tok_s"] / other["decode_tok_s"],
         "prefill_s_ratio": hybrid["prefill_s"] / other["prefill_s"]}
        for other in (baseline, same)
    ]
    ratios.append({"comparison": "paper, Table 4: MambaVLM@1458 / TinyLLaVA@576",
                   "e2e_tok_s_ratio": PAPER["hybrid"][2] / PAPER["baseline"][2]})
    print()
    print(format_table(ratios, title="hybrid / baseline (tokens/s > 1 favours the hybrid; target >= 3)"))
    if args.out:
        out = Path(args.out)
        written = [write_csv(rows, out / "mambavlm_decode.csv"), write_csv(ratios, out / "mambavlm_decode_ratios.csv")]
        picture = plot(rows, out / "mambavlm_decode.png")
        print("wrote " + ", ".join(str(p) for p in [*written, *([picture] if picture else [])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
