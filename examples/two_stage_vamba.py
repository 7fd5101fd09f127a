"""Vamba's two training stages on the tiny preset: stage 1 trains only the new layers (cross-attention, alpha, the
visual Mamba), stage 2 everything but the vision tower.

    python examples/two_stage_vamba.py                    # vamba-tiny, ~45 s on 2 CPU cores
    python examples/two_stage_vamba.py --max-steps 2

With a real model, stage 1 starts from a VLM converted with `hybrid_vlm.build_vamba` (see docs/vamba.md).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from sft_images import shapes_dataset  # the example next to this one
from trl import SFTConfig, SFTTrainer

import hybrid_vlm
from hybrid_vlm.training import count_parameters, freeze_for_stage


def _part(name: str) -> str:
    """`cross_attn` for `model.language_model.layers.3.cross_attn.q_proj.weight`, `model.vision_tower` for ..."""
    parts = name.split(".")
    return parts[4] if name.startswith("model.language_model.layers.") else ".".join(parts[:2])


def run_stage(model, processor, stage: str, steps: int, learning_rate: float, output_dir: str) -> list[float]:
    trainable = freeze_for_stage(model, stage)
    print(f"stage {stage!r}: {trainable:,} of {count_parameters(model)[1]:,} parameters train")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = SFTTrainer(
        model=model,
        processing_class=processor,
        train_dataset=shapes_dataset(4 * steps, seed=len(stage)),
        args=SFTConfig(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=4,
            learning_rate=learning_rate,
            logging_steps=max(1, steps // 5),
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
        ),
    )
    trainer.train()
    moved = sorted({_part(name) for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])})
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"  loss {losses[0]:.3f} -> {losses[-1]:.3f}; changed: {', '.join(moved)}")
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=10, help="steps per stage")
    args = parser.parse_args()

    model, processor = hybrid_vlm.from_preset("vamba-tiny")
    with tempfile.TemporaryDirectory() as scratch:
        run_stage(model, processor, "new-layers", args.max_steps, 1e-3, f"{scratch}/stage1")
        run_stage(model, processor, "projector+lm", args.max_steps, 5e-4, f"{scratch}/stage2")


if __name__ == "__main__":
    main()
