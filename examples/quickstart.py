"""Quickstart: a tiny Jamba-backbone LLaVA, one chat turn on an image, a left-padded batch, save and reload.

Runs on a CPU in about 15 s (most of it importing torch) with random weights (the generated text is noise; the
mechanics are real):

    python examples/quickstart.py
"""

import argparse
import tempfile

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import hybrid_vlm

# No options; `--help` says what the script does instead of running it.
argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()

model, processor = hybrid_vlm.from_preset("jamba-llava-tiny")
print(f"{model.num_parameters():,} parameters; language model: {model.config.text_config.model_type}")

red = Image.new("RGB", (120, 80), (200, 30, 30))
blue = Image.new("RGB", (64, 64), (30, 30, 200))


def chat(question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# One prompt.
inputs = processor(text=chat("What colour is this?"), images=[red], return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=8)
print("answer:", processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

# A batch of prompts of different lengths, left-padded; each row equals running that prompt alone.
batch = processor(
    text=[chat("Describe the image in detail, please."), chat("Colour?")], images=[red, blue], padding=True,
    return_tensors="pt",
)
batched = model.generate(**batch, max_new_tokens=8)
alone = model.generate(**processor(text=chat("Colour?"), images=[blue], return_tensors="pt"), max_new_tokens=8)
assert torch.equal(batched[1, -8:], alone[0, -8:]), "batched and single results differ"
print("batched == one by one: True")

# Save and reload through the Auto classes.
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder)
    reloaded_processor = AutoProcessor.from_pretrained(folder)
    print("reloaded:", type(reloaded).__name__, type(reloaded_processor).__name__)
