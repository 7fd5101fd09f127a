"""How close a converted LongLLaVA checkpoint comes to LongLLaVA's own code, case by case.

Converts the reference checkpoint of the parity pack (`shared/parity/longllava/`, beside the checkout by default:
a tiny random checkpoint saved by the unmodified research code, and what that code produced for each case), runs
each case's chat messages through the converted folder's own chat template and processor, and prints, per case:
whether the ids equal the reference's (image/video placeholders read as its -200), the largest pixel difference,
the largest logit difference at the stored positions (over the reference's 65536 columns) and whether the greedy
continuation is the same.

    python benchmarks/parity_longllava.py
    python benchmarks/parity_longllava.py --pack /path/to/shared/parity/longllava
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import hybrid_vlm  # noqa: F401  (registers the Auto classes)
from hybrid_vlm.convert import convert

DEFAULT_PACK = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "longllava"
IMAGE_TOKEN_INDEX = -200


def convert_reference(pack: Path, work: Path) -> Path:
    """Convert the pack's checkpoint; its `mm_vision_tower` (relative to the pack) is made absolute in a copy."""
    source = work / "LongLLaVA-tiny"
    source.mkdir()
    for item in (pack / "LongLLaVA-tiny").iterdir():
        if item.name == "model.safetensors":
            (source / item.name).symlink_to(item)
        elif item.name != "config.json":
            shutil.copy(item, source / item.name)
    config = json.loads((pack / "LongLLaVA-tiny" / "config.json").read_text())
    config["mm_vision_tower"] = str(pack / config["mm_vision_tower"])
    (source / "config.json").write_text(json.dumps(config))
    convert(source, work / "converted", "longllava", progress=False)
    return work / "converted"


def messages_and_media(case: dict, folder: Path) -> tuple[list[dict], list[Image.Image], list[list[Image.Image]]]:
    """The case's chat messages with bare image/video blocks, and the PNGs they refer to (in order)."""
    images, videos, messages = [], [], []
    for message in case["messages"]:
        content = []
        for block in message["content"]:
            if block["type"] == "image":
                images.append(Image.open(folder / block["path"]).convert("RGB"))
                content.append({"type": "image"})
            elif block["type"] == "video":
                videos.append([Image.open(folder / frame).convert("RGB") for frame in block["frames"]])
                content.append({"type": "video"})
            else:
                content.append(dict(block))
        messages.append({"role": message["role"], "content": content})
    return messages, images, videos


def run_case(folder: Path, model, processor) -> dict[str, object]:
    case = json.loads((folder / "case.json").read_text())
    reference = load_file(str(folder / "reference.safetensors"))
    messages, images, videos = messages_and_media(case, folder)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=images or None, videos=videos or None, return_tensors="pt")
    placeholders = {processor.image_token_id, processor.video_token_id}
    ids = [IMAGE_TOKEN_INDEX if int(i) in placeholders else int(i) for i in inputs["input_ids"][0]]
    pixel_diff = None
    if "pixel_values" in reference:
        ours = inputs["pixel_values_videos"][0] if "pixel_values_videos" in inputs else inputs["pixel_values"]
        pixel_diff = float((ours - reference["pixel_values"]).abs().max())
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        new = reference["generated"].shape[1]
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    columns = case["reference_vocab_size"]
    logit_diff = float((logits[reference["logit_positions"], :columns] - reference["logits"]).abs().max())
    return {
        "case": folder.name,
        "ids equal": ids == reference["expanded_input_ids"][0].tolist(),
        "max |pixel diff|": "-" if pixel_diff is None else f"{pixel_diff:.1e}",
        "max |logit diff|": f"{logit_diff:.1e}",
        "greedy equal": out[0, inputs["input_ids"].shape[1]:].tolist() == reference["generated"][0].tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, help="the longllava folder of the parity pack")
    args = parser.parse_args(argv)
    pack = args.pack.resolve()
    if not (pack / "LongLLaVA-tiny" / "config.json").is_file():
        print(f"no LongLLaVA parity pack at {pack}; pass --pack", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as work:
        converted = convert_reference(pack, Path(work))
        model = AutoModelForImageTextToText.from_pretrained(converted).eval()
        processor = AutoProcessor.from_pretrained(converted)
        rows = [run_case(folder, model, processor) for folder in sorted((pack / "cases").iterdir())
                if (folder / "case.json").is_file()]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, float32 CPU")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
