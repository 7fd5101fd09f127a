"""Vamba's memory claim checked at the shape it was made for: peak tensor memory of a prefill (and of a training
step) of Vamba vs. its transformer baseline at Qwen2-VL-7B's layer proportions, 256-1,024 frames of 640x360 video.

"Vamba: Understanding Hour-Long Videos with Hybrid Mamba-Transformers" (arXiv:2503.11579) reports over 50% less GPU
memory than Qwen2-VL-7B for long videos, in training (Fig. 3a) and in prefill (Fig. 4a). A CPU cannot run a 7B model
on 150K tokens, so this script keeps what decides the ratio and shrinks the rest:

- Layer proportions of Qwen2-7B: hidden : MLP = 3584 : 18944, 28 query / 4 key-value heads, Vamba's Mamba-2 with
  64-wide heads, all widths divided by `--width-divisor` (8 by default: hidden 448, MLP 2368, head_dim 16).
  Every activation of either model is (tokens x width), so the ratio does not depend on the divisor as long as the
  visual tokens dominate (they are >99% of the sequence here).
- Depth 2 (activation memory of a prefill does not grow with depth; with checkpointing, a training step's grows by
  one saved hidden state per layer, counted in the "per extra layer" column).
- Visual tokens as Qwen2-VL makes them from 640x360 frames: smart_resize to 644x364, 14 px patches, 2x2 merge and
  2-frame temporal patches, so 299 tokens per 2 frames (1,024 frames = 153,088 tokens). Visual features are fixed
  random tensors (the vision tower is identical in both models and runs before the LM).
- Exact tensor accounting: every storage an ATen op creates is counted while alive (`TensorMemoryTracker`), weights
  excluded. Attention over more than 2**24 query-key pairs (the baseline's self-attention over the video) is
  replaced by a stand-in with the memory of a fused (flash) kernel and no compute: it allocates the output and the
  fp32 log-sum-exp, keeps them for backward, and returns zero gradients of q/k/v's sizes. Both models use flash
  attention in the paper. Everything else (projections, MLPs, Mamba-2's chunked scan, cross-attention) runs for real.

    python benchmarks/bench_vamba_memory.py --out bench-results/vamba-memory            # prefill + training
    python benchmarks/bench_vamba_memory.py --frames 256,512 --no-training --threads 2
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hybrid_vlm import HybridVLMForConditionalGeneration
from hybrid_vlm.benchmark import (
    MIB,
    TensorMemoryTracker,
    fit_power_law,
    fixed_visual_features,
    format_table,
    pyplot,
    write_csv,
)
from hybrid_vlm.presets import QWEN2VL_7B_TEXT, preset_config

TOKENS_PER_FRAME_PAIR = 13 * 23  # 640x360 -> smart_resize 644x364 -> 46x26 patches -> 2x2 merge -> 23x13
FUSED_ATTENTION_PAIRS = 2**24
PROMPT_TOKENS = (12, 20)  # text before and after the video (system prompt + question), as a chat prompt has


class _FusedAttentionMemory(torch.autograd.Function):
    """Flash attention's memory without its compute: output and fp32 log-sum-exp kept for backward."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = query.new_zeros(*query.shape[:-1], value.shape[-1])
        lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query, key, value, _, _ = ctx.saved_tensors
        return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)


@contextmanager
def fused_attention_memory() -> Iterator[None]:
    """Large attentions take the flash-memory stand-in; small ones (text self-attention, Vamba's text-to-video
    cross-attention, which is text x video) run torch's own kernel."""
    original = torch.nn.functional.scaled_dot_product_attention

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if query.shape[-2] * key.shape[-2] <= FUSED_ATTENTION_PAIRS:
            return original(query, key, value, *args, **kwargs)
        if kwargs.get("enable_gqa") and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        return _FusedAttentionMemory.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def scaled_text_config(divisor: int, layers: int) -> dict[str, Any]:
    """Qwen2-7B's proportions at 1/`divisor` of its width (heads keep their count; head_dim shrinks)."""
    if QWEN2VL_7B_TEXT["hidden_size"] % (divisor * QWEN2VL_7B_TEXT["num_attention_heads"]):
        raise ValueError(f"--width-divisor {divisor} does not divide Qwen2-7B's 28 heads x 128 evenly; use 1, 2, 4 "
                         "or 8.")
    return {
        "hidden_size": QWEN2VL_7B_TEXT["hidden_size"] // divisor,
        "intermediate_size": QWEN2VL_7B_TEXT["intermediate_size"] // divisor,
        "num_attention_heads": QWEN2VL_7B_TEXT["num_attention_heads"],
        "num_key_value_heads": QWEN2VL_7B_TEXT["num_key_value_heads"],
        "num_hidden_layers": layers,
        "vocab_size": 4096,  # logits are kept for one position in prefill and for ~30 text tokens in training
    }


def build(kind: str, divisor: int, layers: int) -> HybridVLMForConditionalGeneration:
    """`vamba` (Vamba-Qwen2-VL-7B's decoder) or `baseline` (Qwen2-VL-7B's: every token through every layer)."""
    text = scaled_text_config(divisor, layers)
    options: dict[str, Any] = {
        "text_config": text,
        # the vision tower is the same in both models and runs before the LM: a token one keeps the build cheap
        "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": text["hidden_size"]},
        "image_token_id": text["vocab_size"] - 2,
        "video_token_id": text["vocab_size"] - 1,
    }
    if kind == "vamba":
        options["vamba_options"] = {"ssm_d_state": 128, "ssm_head_dim": 64, "ssm_chunk_size": 256}
    else:
        options["decoder_type"] = "interleaved"
    config = preset_config("vamba-10b", **options)
    config.text_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return HybridVLMForConditionalGeneration(config).eval()


def inputs(model: Any, visual_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    before, after = PROMPT_TOKENS
    ids = torch.full((1, before + visual_tokens + after), 100)
    ids[0, before : before + visual_tokens] = model.config.image_token_id
    hidden = model.config.text_config.hidden_size
    features = torch.randn(visual_tokens, hidden, generator=torch.Generator().manual_seed(0))
    return ids, features


def peak_bytes(model: Any, ids: torch.Tensor, features: torch.Tensor, training: bool) -> int:
    """Peak bytes of the tensors a prefill (or a forward + backward with checkpointing) creates, weights excluded."""
    stub = torch.zeros(1, 3, 1, 1)
    weights = [*model.parameters(), *model.buffers()]
    with fused_attention_memory(), fixed_visual_features(model, features), TensorMemoryTracker(weights) as tracker:
        if training:
            model.train()
            labels = ids.masked_fill(ids == model.config.image_token_id, -100)
            out = model(input_ids=ids, pixel_values=stub, labels=labels, use_cache=False)
            out.loss.backward()
            del out
            model.zero_grad(set_to_none=False)  # gradients are weights' companions, not activations: kept
            model.eval()
        else:
            with torch.no_grad():
                model(input_ids=ids, pixel_values=stub, use_cache=True, logits_to_keep=1)
    return tracker.peak


def measure(frames: Sequence[int], divisor: int, layers: int, training: bool, progress: bool) -> list[dict[str, Any]]:
    rows = []
    modes = ["prefill", "training"] if training else ["prefill"]
    total = len(frames) * len(modes) * 2
    bar = tqdm(total=total, desc="vamba memory", disable=not progress)
    for mode in modes:
        for kind in ("baseline", "vamba"):
            model = build(kind, divisor, layers)
            if mode == "training":
                model.gradient_checkpointing_enable()
            for count in frames:
                tokens = count // 2 * TOKENS_PER_FRAME_PAIR
                ids, features = inputs(model, tokens)
                peak = peak_bytes(model, ids, features, training=mode == "training")
                rows.append({"mode": mode, "model": kind, "frames": count, "visual_tokens": tokens,
                             "peak_mib": peak / MIB})
                bar.update()
            del model
            gc.collect()
    bar.close()
    return rows


def ratio_table(rows: Sequence[dict[str, Any]], divisor: int) -> list[dict[str, Any]]:
    by_key = {(r["mode"], r["model"], r["frames"]): r for r in rows}
    table = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for count in dict.fromkeys(r["frames"] for r in rows):
            base, vamba = by_key[(mode, "baseline", count)], by_key[(mode, "vamba", count)]
            table.append({
                "mode": mode,
                "frames": count,
                "visual_tokens": base["visual_tokens"],
                "baseline_mib": base["peak_mib"],
                "vamba_mib": vamba["peak_mib"],
                "vamba/baseline": vamba["peak_mib"] / base["peak_mib"],
                "reduction_%": 100 * (1 - vamba["peak_mib"] / base["peak_mib"]),
                f"baseline_gib_x{divisor}": base["peak_mib"] * divisor / 1024,
                f"vamba_gib_x{divisor}": vamba["peak_mib"] * divisor / 1024,
            })
    return table


def exponents(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for kind in ("baseline", "vamba"):
            points = [r for r in rows if r["mode"] == mode and r["model"] == kind]
            if len(points) >= 2:
                slope, _ = fit_power_law([p["visual_tokens"] for p in points], [p["peak_mib"] for p in points])
                out.append({"mode": mode, "model": kind, "memory_growth_exponent": slope})
    return out


def plot(table: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in table))
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for axis, mode in zip(axes[0], modes):
        points = [r for r in table if r["mode"] == mode]
        frames = [r["frames"] for r in points]
        axis.plot(frames, [r["baseline_mib"] for r in points], "o-", label="baseline (Qwen2-VL-7B decoder)")
        axis.plot(frames, [r["vamba_mib"] for r in points], "s-", label="Vamba")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("frames (640x360, 299 tokens per 2 frames)")
        axis.set_ylabel("peak activation memory (MiB, scaled model)")
        axis.set_title(f"{mode}")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="256,512,1024", help="frame counts, comma-separated (even numbers)")
    parser.add_argument("--width-divisor", type=int, default=8, help="Qwen2-7B widths divided by this (1, 2, 4, 8)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of both models")
    parser.add_argument("--no-training", action="store_true", help="prefill only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="folder for the CSV and PNG")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    frames = [int(f) for f in args.frames.split(",") if f.strip()]
    if any(f <= 0 or f % 2 for f in frames):
        raise SystemExit("--frames: positive even numbers (Qwen2-VL pairs frames into temporal patches).")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(frames, args.width_divisor, args.layers, not args.no_training, not args.no_progress)
    table = ratio_table(rows, args.width_divisor)
    print(format_table(table, title=f"Peak activation memory, Qwen2-7B proportions / {args.width_divisor}, "
                                    f"{args.layers} layers, fp32 (GiB columns: x{args.width_divisor} = full width)"))
    print(format_table(exponents(rows), title="Growth of peak memory with visual tokens (power-law exponent)"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print("wrote", write_csv(table, out / "vamba_memory.csv"), plot(table, out / "vamba_memory.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
