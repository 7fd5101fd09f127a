"""`hybrid-vlm train`: fine-tune a preset or a saved model on a JSONL chat dataset with TRL's SFTTrainer.

The dataset is TRL's vision format, one JSON object per line: `{"messages": [...], "images": ["a.png", ...]}` (and/or
`"videos": ["clip.mp4"]`), with bare `{"type": "image"}` / `{"type": "video"}` blocks filled in order; relative paths
are resolved against the JSONL file's folder. Batches go through `VideoSFTCollator`, so images and videos,
assistant-only loss and over-long samples (dropped, never cut through visual tokens) work the same on both transformers
lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..cli.loading import load_model
from ..cli.model_args import resolve_model_source
from ..cli.registry import command_help
from ..path_report import compute_paths, say_torch_ssm_path_once
from .collator import VideoSFTCollator, chat_as_blocks
from .lora import lora_config
from .stages import TRAINING_STAGES, count_parameters, freeze_for_stage

STAGE_ALIASES = {"vamba-stage1": "new-layers", "vamba-stage2": "full", "lm": "projector+lm"}


def add_train_subcommand(commands: Any) -> argparse.ArgumentParser:
    """Register `train` on the `hybrid-vlm` sub-parsers (`hybrid_vlm.cli.registry` names this function)."""
    stages = [*TRAINING_STAGES, *STAGE_ALIASES]
    parser = commands.add_parser(
        "train",
        help=command_help("train"),
        description=__doc__.split("\n\n")[0] + " Stages: "
        + "; ".join(f"{name}: {text}" for name, text in TRAINING_STAGES.items())
        + ". Aliases: " + ", ".join(f"{a} = {s}" for a, s in STAGE_ALIASES.items()) + ".",
    )
    parser.add_argument("data", help="a .jsonl file, or a folder holding train.jsonl (or exactly one .jsonl)")
    parser.add_argument("--model", default="jamba-llava-tiny", help="a preset name, a model folder or a Hub id")
    parser.add_argument("--output-dir", required=True, help="checkpoints and the final model (or adapter) go here")
    parser.add_argument("--stage", default=None, choices=stages, help="which weights train (default: projector+lm)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter on the language model instead")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=4096, help="longer samples are dropped (never cut)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU); fp16 is not offered for SSMs")
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--resume", default=None,
                        help="a checkpoint folder to resume from, or 'last': the newest in --output-dir, if any")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per video while training")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_train)
    return parser


def _jsonl_path(data: str) -> Path:
    path = Path(data)
    if path.is_dir():
        if (path / "train.jsonl").is_file():
            return path / "train.jsonl"
        found = sorted(path.glob("*.jsonl"))
        if len(found) != 1:
            raise ValueError(
                f"{path} holds {len(found)} .jsonl files; name the training file train.jsonl or pass its path."
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"Dataset not found: {path} (pass a .jsonl file or a folder holding train.jsonl).")
    return path


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def load_jsonl(data: str) -> list[dict[str, Any]]:
    """Rows of a JSONL chat dataset, with media paths made absolute; a bad line raises naming its number."""
    path = _jsonl_path(data)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
        if isinstance(row, dict) and "messages" not in row and _is_chat(row.get("prompt")):
            if not _is_chat(row.get("completion")):
                raise ValueError(
                    f"{path}:{number}: a conversational 'prompt' needs a 'completion' list of messages too, e.g. "
                    '"completion": [{"role": "assistant", "content": "..."}].'
                )
            row = {**row, "messages": [*row.pop("prompt"), *row.pop("completion")]}
        if not isinstance(row, dict) or not _is_chat(row.get("messages")):
            raise ValueError(
                f"{path}:{number}: each line needs a 'messages' list of {{'role': ..., 'content': ...}} dicts "
                "(TRL's chat format; content is a string or a list of blocks), e.g. "
                '{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]}, '
                '{"role": "assistant", "content": "..."}], "images": ["img.png"]}'
            )
        for key in ("images", "videos"):
            items = row.get(key)
            if items is None:
                continue
            if isinstance(items, str):
                items = [items]
            resolved = []
            for item in items:
                if isinstance(item, str) and "://" not in item:
                    media = (path.parent / item).resolve()
                    if not media.exists():
                        raise FileNotFoundError(f"{path}:{number}: {key[:-1]} file not found: {media}")
                    item = str(media)
                resolved.append(item)
            row[key] = resolved
        # Strings become text blocks: Arrow cannot hold `"content": "..."` and block lists in one column.
        row["messages"] = chat_as_blocks(
            row["messages"], num_images=len(row.get("images") or []), num_videos=len(row.get("videos") or [])
        )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no examples.")
    return rows


def _load_model(name: str, bf16: bool) -> tuple[Any, Any, str]:
    model, processor, kind = load_model(name, torch.bfloat16 if bf16 else torch.float32, allow_adapter=False)
    return model, processor, kind


def _record_adapter_base(output_dir: str, name: str, kind: str) -> None:
    """Write a base that resolves from anywhere into adapter_config.json: the preset name, an absolute folder or the
    Hub id (PEFT writes the model's `name_or_path`, relative when the folder was given relative, empty for a preset)."""
    config_path = Path(output_dir) / "adapter_config.json"
    if not config_path.is_file():
        return
    folder = Path(name).expanduser()
    base = str(folder.resolve()) if kind != "preset" and folder.is_dir() else name  # else a preset or a Hub id
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _note_torch_ssm_path(model: Any) -> None:
    """Say before the progress bar starts (not in the middle of it) that SSM layers run without CUDA kernels."""
    if any(path.path.startswith(("torch", "transformers torch")) for path in compute_paths(model)):
        say_torch_ssm_path_once()


def run_train(args: argparse.Namespace) -> int:
    """Build the model, freeze for the stage (or configure LoRA), train with SFTTrainer, save."""
    from datasets import Dataset  # (optional dependencies: pip install hybrid_vlm[train])
    from trl import SFTConfig, SFTTrainer

    if args.lora and args.stage is not None:
        raise SystemExit("error: --lora trains adapters on the language model; it does not combine with --stage.")
    resolve_model_source(args.model)  # a typo fails here, at once, not after the dataset or a network wait
    rows = load_jsonl(args.data)
    model, processor, kind = _load_model(args.model, args.bf16)
    if args.num_frames is not None:
        processor.video_processor.num_frames = args.num_frames
    peft_config = None
    if args.lora:
        peft_config = lora_config(model, r=args.lora_rank, alpha=2 * args.lora_rank)
    else:
        stage = STAGE_ALIASES.get(args.stage or "projector+lm", args.stage or "projector+lm")
        trainable = freeze_for_stage(model, stage)
        print(f"stage {stage!r}: {trainable:,} of {count_parameters(model)[1]:,} parameters train")

    # Only the columns the collator reads; media paths stay strings (Arrow-friendly).
    columns = [key for key in ("messages", "images", "videos") if any(key in row for row in rows)]
    dataset = Dataset.from_list([{key: row.get(key) for key in columns} for row in rows])
    collator = VideoSFTCollator(processor, max_length=args.max_length, overflow="drop", assistant_only_loss=True)
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1 if 0 < args.max_steps <= 100 else 10,  # short runs: a loss every step, not one value
        save_steps=args.save_steps,
        report_to=[],
        seed=args.seed,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=processor,
        train_dataset=dataset,
        args=config,
        data_collator=collator,
        peft_config=peft_config,
    )
    if args.lora:
        trainable, total = count_parameters(trainer.model)
        print(f"LoRA: {trainable:,} of {total:,} parameters train")
    _note_torch_ssm_path(model)
    resume = args.resume
    if resume == "last":
        # "last" continues a run when there is one; the first run of the same command starts from the beginning.
        if any(Path(args.output_dir).glob("checkpoint-*")):
            resume = True
        else:
            print(f"--resume last: no checkpoint in {args.output_dir} yet, so training starts from the beginning")
            resume = None
    elif resume is not None and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint folder (or pass 'last').")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    if args.lora:
        _record_adapter_base(args.output_dir, args.model, kind)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if len(losses) > 1:
        print(f"loss: {losses[0]:.4f} -> {losses[-1]:.4f} over {trainer.state.global_step} steps")
    elif losses:
        print(f"loss: {losses[0]:.4f} (one logged value) over {trainer.state.global_step} steps")
    if collator.num_dropped:
        print(f"{collator.num_dropped} sample(s) longer than --max-length={args.max_length} were dropped")
    what = "adapter" if args.lora else "model"
    print(f"saved the {what} and the processor to {args.output_dir}")
    return 0
