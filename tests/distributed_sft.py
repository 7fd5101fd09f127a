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
import os
import time

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig, SFTTrainer

import hybrid_vlm
from hybrid_vlm.training import causal_lm_loss


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


def use_fsdp_on_cpu() -> None:
    """Let `accelerate launch --use_fsdp` shard on CPU processes.

    accelerate (up to 1.16 at least) turns FSDP on only when the processes run on an accelerator (CUDA, XPU, ...);
    CPU processes become `MULTI_CPU`, i.e. plain DDP, and the FSDP settings are ignored without a word. torch's
    FSDP itself runs on CPU over gloo, so the process state is marked as an accelerator run before the Trainer builds
    its Accelerator: accelerate then takes its FSDP path (plugin from the launcher's FSDP_* variables), on the CPU.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # the gate of accelerate's FSDP branch; device stays CPU


def sharded_parameter_count(model: torch.nn.Module) -> int:
    """Parameters held as shards: DTensors under FSDP2, flat parameters under FSDP1; 0 under DDP."""
    count = 0
    for parameter in model.parameters():
        count += type(parameter).__name__ in ("DTensor", "FlatParameter") or hasattr(parameter, "_local_tensor")
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--preset", default="mamba2-llava-tiny")
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--model-loss", action="store_true", help="compute_loss_func=hybrid_vlm.training.causal_lm_loss")
    parser.add_argument("--save", default=None, help="save the trained model and processor here (trainer.save_model)")
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
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        config.device  # noqa: B018 (TrainingArguments sets up the process state here; it resets it first)
        use_fsdp_on_cpu()
    loss = causal_lm_loss if args.model_loss else None
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=dataset(24), args=config, compute_loss_func=loss
    )
    trainer.train()
    if args.save:
        trainer.save_model(args.save)  # under FSDP: gathers the full state dict on the main process
        if trainer.accelerator.is_main_process:
            processor.save_pretrained(args.save)
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {
            "losses": losses,
            "world_size": trainer.accelerator.num_processes,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "fsdp_version": getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "fsdp_version", None),
            "sharded_parameters": sharded_parameter_count(trainer.model_wrapped),
            "global_batch": args.per_device_batch * trainer.accelerator.num_processes,
            "seconds": time.perf_counter() - start,
        }
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
