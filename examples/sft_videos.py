"""Fine-tune on videos: SFTTrainer with the library's VideoSFTCollator (TRL has no video column).

    python examples/sft_videos.py                     # mamba2-llava-tiny on generated clips, ~1 min on 2 CPU cores
    python examples/sft_videos.py --max-steps 2       # quicker
    python examples/sft_videos.py --video-dir clips/  # your own .mp4 files (answers are their file names)

Each example is a chat whose user turn has a bare `{"type": "video"}` block, and a `videos` column with the clip (a
path, or a list of frames as here). Frame sampling is the video processor's: `processor.video_processor.num_frames`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from trl import SFTConfig, SFTTrainer

import hybrid_vlm
from hybrid_vlm.training import VideoSFTCollator


def moving_square(direction: str, num_frames: int = 8, size: int = 48) -> list[Image.Image]:
    """A white square moving left or right on black: a clip as a list of frames."""
    frames = []
    for t in range(num_frames):
        pixels = np.zeros((size, size, 3), dtype=np.uint8)
        x = 4 + t * 4 if direction == "right" else size - 16 - t * 4
        pixels[18:30, x : x + 12] = 255
        frames.append(Image.fromarray(pixels))
    return frames


def video_rows(n: int, video_dir: str | None) -> list[dict]:
    if video_dir:
        folder = Path(video_dir)
        if not folder.is_dir():
            raise SystemExit(f"error: --video-dir {video_dir!r} is not a folder.")
        clips = sorted(folder.glob("*.mp4"))
        if not clips:
            raise SystemExit(f"error: --video-dir {video_dir!r} holds no *.mp4 files; put the clips to train on there.")
        items = [(str(path), path.stem.replace("_", " ")) for path in clips]
    else:
        items = [(moving_square(d), f"The square moves {d}.") for d in ("left", "right")]
    rows = []
    for i in range(n):
        video, answer = items[i % len(items)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "videos": [video],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mamba2-llava-tiny", help="a tiny preset name")
    parser.add_argument("--video-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--num-frames", type=int, default=4, help="frames sampled per clip while training")
    args = parser.parse_args()

    model, processor = hybrid_vlm.from_preset(args.model)
    processor.video_processor.num_frames = args.num_frames
    # Rows with lists of PIL frames do not fit an Arrow column: keep them in a plain list-backed dataset.
    rows = video_rows(2 * args.max_steps, args.video_dir)
    dataset = Dataset.from_dict({"index": list(range(len(rows)))})
    dataset = dataset.map(lambda example: {"messages": rows[example["index"]]["messages"]})

    def collate(batch: list[dict]) -> dict:
        return collator([rows[example["index"]] for example in batch])

    collator = VideoSFTCollator(processor, max_length=1024, overflow="drop", assistant_only_loss=True)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SFTTrainer(
            model=model,
            processing_class=processor,
            train_dataset=dataset,
            data_collator=collate,
            args=SFTConfig(
                output_dir=scratch,
                max_steps=args.max_steps,
                per_device_train_batch_size=2,
                learning_rate=2e-3,
                logging_steps=max(1, args.max_steps // 5),
                save_strategy="no",
                report_to=[],
                use_cpu=not torch.cuda.is_available(),
                remove_unused_columns=False,  # keep the columns for the collator
                dataset_kwargs={"skip_prepare_dataset": True},  # TRL must not tokenize the chats itself
            ),
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"loss: {losses[0]:.3f} -> {losses[-1]:.3f}; samples dropped for length: {collator.num_dropped}")


if __name__ == "__main__":
    main()
