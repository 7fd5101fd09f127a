"""Fine-tune a hybrid VLM with TRL's SFTTrainer on a generated dataset of coloured shapes, then reload and ask it.

Runs on a CPU in about a minute (2 cores) with the default tiny preset (random weights, so the answer only shows that
training moved it):

    python examples/finetune_sft.py                                  # full fine-tuning of jamba-llava-tiny
    python examples/finetune_sft.py --stage projector                # stage 1: projector-only alignment
    python examples/finetune_sft.py --lora --model mamba2-llava-tiny # LoRA on the language model

Scale up by passing a checkpoint folder or Hub id as --model (and a real dataset in the same format: a `messages`
column with image blocks and an `images` column). See docs/training.md.
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
from hybrid_vlm.training import TRAINING_STAGES, count_parameters, freeze_for_stage, lora_config

COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("square", "circle")
QUESTION = "What is in the picture?"


def shape_image(color: str, shape: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    x, y = (int(v) for v in rng.integers(4, 24, 2))
    size = int(rng.integers(24, 36))
    box = (x, y, x + size, y + size)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
    return image


def shapes_dataset(n: int, seed: int = 0) -> Dataset:
    """TRL's vision format: chat `messages` with a bare image block, and the image in an `images` column."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"A {color} {shape}."}]},
                ],
                "images": [shape_image(color, shape, rng)],
            }
        )
    return Dataset.from_list(rows)


def load(name: str) -> tuple[torch.nn.Module, object]:
    if name in hybrid_vlm.list_presets():
        return hybrid_vlm.from_preset(name)
    auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
    return auto.from_pretrained(name), AutoProcessor.from_pretrained(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jamba-llava-tiny", help="a tiny preset name, a folder or a Hub id")
    parser.add_argument("--stage", default="full", choices=[s for s in TRAINING_STAGES if s != "new-layers"])
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (lora_config) instead")
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--output-dir", default=None, help="keep the fine-tuned model here (default: not kept)")
    args = parser.parse_args()

    model, processor = load(args.model)
    peft_config = None
    if args.lora:
        peft_config = lora_config(model, r=8, alpha=16)
        print(f"LoRA targets (regex): {peft_config.target_modules}")
    else:
        trainable = freeze_for_stage(model, args.stage)
        print(f"stage {args.stage!r}: {trainable:,} of {count_parameters(model)[1]:,} parameters trainable")

    with tempfile.TemporaryDirectory(prefix="hybrid_vlm_sft_") as scratch:
        train_and_ask(model, processor, peft_config, args, args.output_dir or scratch)


def train_and_ask(
    model: torch.nn.Module, processor: object, peft_config: object, args: argparse.Namespace, output_dir: str
) -> None:
    config = SFTConfig(
        output_dir=output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=2e-3 if "tiny" in args.model else 2e-5,
        logging_steps=max(1, min(4, args.max_steps)),
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        # TRL supports assistant-only loss for vision data from transformers 5.18; the chat template marks the turns.
        assistant_only_loss=Version(transformers.__version__) >= Version("5.18.0"),
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=processor,
        train_dataset=shapes_dataset(4 * args.max_steps),
        args=config,
        peft_config=peft_config,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f}")

    trained = trainer.model.merge_and_unload() if args.lora else trainer.model
    trained.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    print(f"saved to {output_dir}")

    # A fresh load through the Auto classes, as a user of the checkpoint would do it.
    model, processor = load(output_dir)
    image = shape_image("red", "circle", np.random.default_rng(1))
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}
    ]
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"Q: {QUESTION} (a red circle)\nA: {answer}")


if __name__ == "__main__":
    main()
