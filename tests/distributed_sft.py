"""Train a tiny preset with TRL's SFTTrainer for a few steps and write the logged losses to a JSON file.

Run alone (`python tests/distributed_sft.py out.json --per-device-batch 4`) or as 2 DDP processes on CPU
(`accelerate launch --multi_gpu --num_processes 2 tests/distributed_sft.py out.json --per-device-batch 2`; on a machine
without CUDA this is torchrun + gloo, and `use_cpu=True` keeps the model on the CPU): with the same global batch the two
runs must log the same losses (tests/test_distributed.py compares them). Every sample has the same
length, so the mean of the per-process token means equals the single process's token mean.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig, SFTTrainer

import hybrid_vlm


def dataset(n: int) -> Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Some noise."}]},
                ],
                "images": [image],
            }
        )
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--preset", default="mamba2-llava-tiny")
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    start = time.perf_counter()
    model, processor = hybrid_vlm.from_preset(args.preset)
    config = SFTConfig(
        output_dir=args.work_dir or args.output + ".run",
        max_steps=args.steps,
        per_device_train_batch_size=args.per_device_batch,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = SFTTrainer(model=model, processing_class=processor, train_dataset=dataset(24), args=config)
    trainer.train()
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {
            "losses": losses,
            "world_size": trainer.accelerator.num_processes,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "global_batch": args.per_device_batch * trainer.accelerator.num_processes,
            "seconds": time.perf_counter() - start,
        }
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
