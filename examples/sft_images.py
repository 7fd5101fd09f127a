"""Fine-tune on images with TRL's SFTTrainer, unmodified: TRL's vision format, TRL's collator, a training stage.

    python examples/sft_images.py                                   # jamba-llava-tiny, ~25 s on 2 CPU cores
    python examples/sft_images.py --stage projector --max-steps 50  # stage 1: projector-only alignment
    python examples/sft_images.py --model path/or/hub-id --output-dir out   # a real checkpoint (and a GPU)

The dataset (generated coloured shapes) has a `messages` column with bare `{"type": "image"}` blocks and an `images`
column; replace `shapes_dataset` with `datasets.load_dataset(...)` of the same shape. See docs/training.md.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
import transformers
from datasets import Dataset
from packaging.version import Version
from PIL import Image, ImageDraw
from transformers import AutoProcessor
from trl import SFTConfig, SFTTrainer

import hybrid_vlm
from hybrid_vlm.training import count_parameters, freeze_for_stage

COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220)}


def shapes_dataset(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(["square", "circle"]))
        image = Image.new("RGB", (64, 64), "white")
        x, y = (int(v) for v in rng.integers(4, 24, 2))
        draw = ImageDraw.Draw(image)
        (draw.rectangle if shape == "square" else draw.ellipse)((x, y, x + 30, y + 30), fill=COLORS[color])
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"A {color} {shape}."}]},
                ],
                "images": [image],
            }
        )
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jamba-llava-tiny", help="a preset name, a folder or a Hub id")
    parser.add_argument("--stage", default="projector+lm", choices=["projector", "projector+lm", "full"])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output-dir", default=None, help="keep checkpoints and the final model here")
    args = parser.parse_args()

    if args.model in hybrid_vlm.list_presets():
        model, processor = hybrid_vlm.from_preset(args.model)
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.bfloat16)
        processor = AutoProcessor.from_pretrained(args.model)
    trainable = freeze_for_stage(model, args.stage)
    print(f"stage {args.stage!r}: {trainable:,} of {count_parameters(model)[1]:,} parameters train")

    with tempfile.TemporaryDirectory() as scratch:
        output_dir = args.output_dir or scratch
        config = SFTConfig(
            output_dir=output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=2e-3 if "tiny" in args.model else 2e-5,
            logging_steps=max(1, args.max_steps // 5),
            save_strategy="no",
            report_to=[],
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # never fp16 with SSM layers
            use_cpu=not torch.cuda.is_available(),
            # assistant-only loss through TRL's collator needs transformers >= 5.18 for vision data
            assistant_only_loss=Version(transformers.__version__) >= Version("5.18.0"),
        )
        trainer = SFTTrainer(
            model=model,
            processing_class=processor,
            train_dataset=shapes_dataset(args.batch_size * args.max_steps),
            args=config,
        )
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f}")
        if args.output_dir:
            trainer.save_model(output_dir)
            processor.save_pretrained(output_dir)
            print(f"saved to {output_dir}")


if __name__ == "__main__":
    main()
