"""Cobra parity numbers: convert the fixture's reference run, run every case through the converted folder's own chat
template and processor, and print how far ids, pixels, logits and greedy tokens are from the reference's.

    python benchmarks/parity_cobra.py [--fixture tests/fixtures/cobra]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import hybrid_vlm  # noqa: F401  (registers the Auto classes)
from hybrid_vlm.compat import auto_model_for_image_text_to_text
from hybrid_vlm.convert import convert

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cobra"


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoProcessor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "converted"
        convert(args.fixture / "cobra-tiny", out, "cobra", progress=False,
                vision_towers=(args.fixture / "dinov2", args.fixture / "siglip"))
        model = auto_model_for_image_text_to_text().from_pretrained(out).eval()
        processor = AutoProcessor.from_pretrained(out)
    print(f"{'case':<11} {'ids equal':>9} {'max|dpixel|':>12} {'max|dlogit|':>12} {'max|logit|':>11} {'greedy':>7}")
    worst = 0.0
    for folder in sorted(p for p in (args.fixture / "cases").iterdir() if (p / "case.json").is_file()):
        meta = json.loads((folder / "case.json").read_text())
        reference = load_file(str(folder / "reference.safetensors"))
        messages = copy.deepcopy(meta["messages"])
        for message in messages:
            for block in message["content"]:
                if block["type"] == "image":
                    block["path"] = str(folder / block["path"])
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        ids, patches = inputs["input_ids"][0], meta["num_image_patches"]
        same_ids = bool((ids[:patches] == model.config.image_token_id).all()) and ids[patches:].tolist() == meta[
            "input_ids"]
        pixel = "-"
        if "pixel_values_dino" in reference:
            pixels = inputs["pixel_values"]
            pixel = max(float((pixels[:, :3] - reference["pixel_values_dino"]).abs().max()),
                        float((pixels[:, 3:] - reference["pixel_values_siglip"]).abs().max()))
            pixel = f"{pixel:.1e}"
        with torch.no_grad():
            logits = model(**inputs).logits[0]
            generated = model.generate(**inputs, max_new_tokens=len(meta["greedy_continuation"]), do_sample=False)
        ours = logits[reference["logit_positions"], : meta["reference_vocab_size"]]
        diff = float((ours - reference["logits"]).abs().max())
        worst = max(worst, diff)
        greedy = generated[0, -len(meta["greedy_continuation"]):].tolist() == meta["greedy_continuation"]
        print(f"{folder.name:<11} {str(same_ids):>9} {pixel:>12} {diff:>12.1e} "
              f"{float(reference['logits'].abs().max()):>11.1f} {str(greedy):>7}")
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
