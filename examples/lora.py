"""LoRA with the library's safe targets: train an adapter with SFTTrainer, save it, reload it on a fresh base, merge.

    python examples/lora.py                               # jamba-llava-tiny, 2-4 min on 2 CPU cores
    python examples/lora.py --model mamba2-llava-tiny --projector --max-steps 2

`lora_config` targets the language model's attention/MLP Linears and the SSM `in_proj` (never `out_proj`/`conv1d`,
which Mamba kernels read directly, never the vision tower or `lm_head`). For QLoRA see docs/training.md.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import PeftModel
from sft_images import shapes_dataset  # the example next to this one
from trl import SFTConfig, SFTTrainer

import hybrid_vlm
from hybrid_vlm.training import count_parameters, lora_config, lora_target_modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jamba-llava-tiny", help="a tiny preset name")
    parser.add_argument("--projector", action="store_true", help="adapters on the projector too")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args()

    model, processor = hybrid_vlm.from_preset(args.model)
    peft_config = lora_config(model, r=args.rank, alpha=2 * args.rank, include_projector=args.projector)
    print(f"{len(lora_target_modules(model, include_projector=args.projector))} Linear layers get adapters")

    with tempfile.TemporaryDirectory() as scratch:
        trainer = SFTTrainer(
            model=model,
            processing_class=processor,
            train_dataset=shapes_dataset(4 * args.max_steps),
            peft_config=peft_config,
            args=SFTConfig(
                output_dir=scratch,
                max_steps=args.max_steps,
                per_device_train_batch_size=4,
                learning_rate=5e-3,
                logging_steps=max(1, args.max_steps // 5),
                save_strategy="no",
                report_to=[],
                use_cpu=not torch.cuda.is_available(),
            ),
        )
        trainable, total = count_parameters(trainer.model)
        print(f"trainable: {trainable:,} of {total:,} parameters (the adapters)")
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f}")

        adapter_dir = f"{scratch}/adapter"
        trainer.model.save_pretrained(adapter_dir)  # adapter weights only (a few hundred KB here)
        base, _ = hybrid_vlm.from_preset(args.model)  # the same base weights (same seed)
        reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
        batch = trainer.data_collator([trainer.train_dataset[0]])
        batch = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            adapter_logits = reloaded(**batch).logits
            merged = reloaded.merge_and_unload()  # a plain HybridVLM model again
            merged_logits = merged(**batch).logits
        diff = (adapter_logits - merged_logits).abs().max()
        print(f"reloaded adapter vs merged model: max |logit diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
