"""Run by the tests under the *other* transformers line: save a checkpoint there, or check one saved here.

usage: python cross_version_helper.py save DIR PRESET | check DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def reference_inputs(processor):
    from hybrid_vlm.cli.demo import demo_image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[demo_image()], return_tensors="pt")


def save(folder: Path, preset: str) -> None:
    import hybrid_vlm

    model, processor = hybrid_vlm.from_preset(preset)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with torch.no_grad():
        inputs = reference_inputs(processor)
        logits = model(**inputs).logits
    torch.save({"input_ids": inputs["input_ids"], "logits": logits}, folder / "reference.pt")


def check(folder: Path) -> None:
    """Load with the Auto classes, recompute, print the largest logit difference to the saved reference."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    reference = torch.load(folder / "reference.pt")
    inputs = reference_inputs(processor)
    assert torch.equal(inputs["input_ids"], reference["input_ids"]), "processor gives different input_ids"
    with torch.no_grad():
        logits = model(**inputs).logits
    print(f"MAXDIFF {(logits - reference['logits']).abs().max().item()}")


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "save":
        save(folder, sys.argv[3])
    else:
        check(folder)
