"""Peak memory of a video prefill against the number of frames: one pass vs. `prefill_in_chunks` (16 frames a chunk).

For each family's tiny preset (its real architecture at test width), a random video of N frames is prefilled with its
placeholders, once in one forward and once in chunks with the cache carried. Memory is exact tensor accounting
(`TensorMemoryTracker`: every storage an op creates, while alive; the weights and the input pixels, which exist
before the call, are not counted). With chunks, the SSM families' peak should not grow with the video (their state
is constant); families with attention layers grow by their KV cache only.

    python benchmarks/bench_chunked_prefill.py --out bench-results/chunked       # 256 -> 4096 frames
    python benchmarks/bench_chunked_prefill.py --frames 64,256 --families mamba2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hybrid_vlm import from_preset, prefill_in_chunks
from hybrid_vlm.benchmark import MIB, TensorMemoryTracker, format_table, pyplot, write_csv
from hybrid_vlm.token_counts import video_frame_tokens

PRESETS = {"mamba2": "mamba2-llava-tiny", "mambavlm": "mambavlm-tiny", "jamba": "jamba-llava-tiny",
           "vamba": "vamba-tiny", "llava": "llava-tiny"}


def video_prompt(model: Any, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, seq) ids with a short prompt around the video's placeholders, and the video (frames, 3 x encoders, H, W)."""
    size = model.config.vision_config.image_size
    per_frame = video_frame_tokens(model.model.visual_token_spec, size, size)
    ids = [5, 6, 7, *[model.config.video_token_id] * (frames * per_frame), 8, 9, 10]
    channels = 3 * len(model.config.vision_configs)
    video = torch.randn(frames, channels, size, size, generator=torch.Generator().manual_seed(frames))
    return torch.tensor([ids]), video


def peak(run: Any, model: Any, inputs: Sequence[torch.Tensor]) -> int:
    """Peak bytes of the storages `run()` creates; the weights and `inputs` (which exist before it) not counted."""
    with torch.no_grad(), TensorMemoryTracker([*model.parameters(), *model.buffers(), *inputs]) as tracker:
        run()
    return tracker.peak


def measure(families: Sequence[str], frames: Sequence[int], chunk_frames: int, one_pass_max: int,
            progress: bool) -> list[dict[str, Any]]:
    rows = []
    bar = tqdm(total=len(families) * len(frames), desc="chunked prefill", disable=not progress)
    for family in families:
        model, _ = from_preset(PRESETS[family], seed=0)
        model.eval()
        for count in frames:
            ids, video = video_prompt(model, count)
            videos = video[None]

            def chunks(model: Any = model, ids: torch.Tensor = ids, videos: torch.Tensor = videos) -> Any:
                return prefill_in_chunks(model, ids, videos, chunk_frames=chunk_frames)

            def whole(model: Any = model, ids: torch.Tensor = ids, videos: torch.Tensor = videos) -> Any:
                return model(input_ids=ids, pixel_values_videos=videos, logits_to_keep=1)

            chunked = peak(chunks, model, [ids, video, videos])
            one_pass = peak(whole, model, [ids, video, videos]) if count <= one_pass_max else None
            rows.append({"family": family, "frames": count, "tokens": ids.shape[1],
                         "one_pass_mib": None if one_pass is None else one_pass / MIB,
                         "chunked_mib": chunked / MIB})
            bar.update()
        for row in rows:
            if row["family"] == family:
                first = next(r for r in rows if r["family"] == family)
                row["chunked_vs_first"] = row["chunked_mib"] / first["chunked_mib"]
    bar.close()
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for family in dict.fromkeys(r["family"] for r in rows):
        points = [r for r in rows if r["family"] == family]
        line, = axis.plot([r["frames"] for r in points], [r["chunked_mib"] for r in points], "o-",
                          label=f"{family}, chunks")
        full = [r for r in points if r["one_pass_mib"] is not None]
        axis.plot([r["frames"] for r in full], [r["one_pass_mib"] for r in full], "x--", color=line.get_color(),
                  label=f"{family}, one pass")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("video frames")
    axis.set_ylabel("peak tensor memory of the prefill (MiB)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="mamba2,mambavlm,jamba,vamba", help=f"of {', '.join(PRESETS)}")
    parser.add_argument("--frames", default="256,512,1024,2048,4096")
    parser.add_argument("--chunk-frames", type=int, default=16)
    parser.add_argument("--one-pass-max", type=int, default=1024, help="largest frame count also run in one pass")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for the CSV and PNG")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(PRESETS))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; choose from {', '.join(PRESETS)}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = [int(f) for f in args.frames.split(",") if f]
    rows = measure(families, frames, args.chunk_frames, args.one_pass_max, not args.no_progress)
    print(format_table(rows, title=f"Peak prefill memory, one pass vs chunks of {args.chunk_frames} frames"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print("wrote", write_csv(rows, out / "chunked_prefill.csv"), plot(rows, out / "chunked_prefill.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
