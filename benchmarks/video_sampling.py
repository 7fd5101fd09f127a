"""Sampling a few frames from a long video: the video processor's seeking decoder against decoding every frame.

Generates (once; later runs reuse the cached file) a long, small, low bit-rate H.264 video with PyAV: by default
21 minutes at 25 fps, 64x64 px, one keyframe every 250 frames. Then, for 8, 32 and 128 uniformly sampled frames, it
times `HybridVLMVideoProcessor` (index the packets, seek to the keyframe before each wanted frame, decode forward to
it, resize/normalise) and a plain PyAV loop that decodes every frame and keeps the same ones, and prints how many
frames each decoded.

    python benchmarks/video_sampling.py                       # 21 min video, counts 8 32 128
    python benchmarks/video_sampling.py --minutes 60 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from hybrid_vlm.video_processing_hybrid_vlm import HybridVLMVideoProcessor, uniform_indices


def video_path(cache_dir: Path, minutes: float, fps: int, side: int, gop: int) -> Path:
    return cache_dir / f"long_{minutes:g}min_{fps}fps_{side}px_gop{gop}.mp4"


def generate_video(path: Path, minutes: float, fps: int, side: int, gop: int, bit_rate: int) -> None:
    """Write the test video: a moving gradient with a frame counter bar, so frames differ and encode cheaply."""
    total = int(round(minutes * 60 * fps))
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    partial = path.with_name(path.name + ".partial")
    y, x = np.mgrid[0:side, 0:side]
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bit_rate
        stream.codec_context.gop_size = gop
        if codec == "libx264":  # a fixed GOP: keyframes every `gop` frames, no scene-cut keyframes in between
            stream.codec_context.options = {"sc_threshold": "0", "keyint_min": str(gop), "preset": "veryfast"}
        for i in tqdm(range(total), desc=f"writing {path.name} ({codec})", unit="frame", mininterval=1.0):
            pixels = np.stack([(x + i) % 256, (y + 2 * i) % 256, np.full_like(x, (i // fps) % 256)], axis=-1)
            pixels[: side // 8, : (i * side) // total + 1] = 255  # progress bar: position in the video
            frame = av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(partial, path)  # complete files only: an interrupted run never leaves a truncated cache


def decode_everything(path: Path, wanted: Sequence[int]) -> tuple[int, list[np.ndarray]]:
    """The naive way: decode every frame in order, keep the wanted ones."""
    keep = set(wanted)
    kept: list[np.ndarray] = []
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            decoded += 1
            if index in keep:
                kept.append(frame.to_ndarray(format="rgb24"))
    return decoded, kept


def count_frames(path: Path) -> int:
    """Frames in the file, counted from the packet index (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=21.0, help="video length (default 21)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--side", type=int, default=64, help="frame width and height in pixels")
    parser.add_argument("--gop", type=int, default=250, help="frames between keyframes")
    parser.add_argument("--bit-rate", type=int, default=64_000)
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 32, 128], help="frame counts to sample")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (the median is shown)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "hybrid_vlm_bench")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.fps < 1 or args.side < 16 or args.gop < 1 or args.repeats < 1:
        parser.error("--minutes, --fps, --gop, --repeats must be positive and --side at least 16")

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = video_path(args.cache_dir, args.minutes, args.fps, args.side, args.gop)
    if path.is_file():
        print(f"using cached {path}")
    else:
        generate_video(path, args.minutes, args.fps, args.side, args.gop, args.bit_rate)
    total = count_frames(path)
    print(f"{path.name}: {total} frames, {total / args.fps / 60:.1f} min, {path.stat().st_size / 1e6:.1f} MB")

    processor = HybridVLMVideoProcessor(size={"shortest_edge": args.side}, crop_size=args.side)
    rows = []
    runs = [(count, method) for count in args.counts for method in ("seek", "all")]
    for count, method in tqdm(runs, desc="sampling", unit="run"):
        wanted = uniform_indices(total, count)
        times, decoded = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            if method == "seek":
                meta = processor(str(path), num_frames=count, return_metadata=True)["video_metadata"][0]
                if meta["frame_indices"] != wanted:
                    raise RuntimeError(f"the video processor returned other frames than {count} uniform ones")
                decoded = int(meta["decoded_frames"])
            else:
                decoded, kept = decode_everything(path, wanted)
                if len(kept) != count:
                    raise RuntimeError(f"decoding everything kept {len(kept)} frames, not {count}")
            times.append(time.perf_counter() - start)
        rows.append((count, method, statistics.median(times), decoded))

    print()
    print("| frames | seeking (s) | decoded | decode all (s) | decoded | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in args.counts:
        seek = next(r for r in rows if r[0] == count and r[1] == "seek")
        full = next(r for r in rows if r[0] == count and r[1] == "all")
        print(f"| {count} | {seek[2]:.2f} | {seek[3]} | {full[2]:.2f} | {full[3]} | {full[2] / seek[2]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
