"""Parity with Cobra's reference code (h-zhao1997/cobra): `hybrid-vlm convert --from cobra` on a tiny run the
reference built and saved, then the converted folder's own processor and chat template on each case's raw inputs, as
a user would run them. The fixture (`tests/fixtures/cobra`) was written by `benchmarks/make_cobra_fixture.py` from the
unmodified reference (see docs/converting.md): its prompts, ids, pixels, logits and greedy tokens.

What the reference does and what is compared: Cobra puts the image's patch features before all text (no BOS), so our
sequence must be `num_image_patches` image placeholders followed by exactly the reference's text ids; the DINOv2 and
SigLIP pixel tensors must match our pixel channels 0-2 and 3-5; the logits at the stored positions (which count the
patches) and the greedy continuation must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_parity_case

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cobra"
CASES = sorted(p.name for p in (FIXTURE / "cases").iterdir() if (p / "case.json").is_file())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reference run converted once, loaded with the Auto classes (model in eval mode, processor)."""
    from transformers import AutoProcessor

    import hybrid_vlm  # noqa: F401  (registers HybridVLM with the Auto classes)
    from hybrid_vlm.compat import auto_model_for_image_text_to_text
    from hybrid_vlm.convert import convert

    folder = tmp_path_factory.mktemp("cobra") / "converted"
    convert(FIXTURE / "cobra-tiny", folder, "cobra", vision_towers=(FIXTURE / "dinov2", FIXTURE / "siglip"),
            progress=False)
    model = auto_model_for_image_text_to_text().from_pretrained(folder).eval()
    return model, AutoProcessor.from_pretrained(folder)


def _case(name: str) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    return load_parity_case(FIXTURE / "cases" / name)


def _run(model, processor, name: str) -> dict:
    meta, reference, messages = _case(name)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    return dict(meta=meta, reference=reference, inputs=dict(inputs), logits=logits)


@pytest.mark.parametrize("name", CASES)
def test_prompt_and_ids_match_the_reference(converted, name):
    model, processor = converted
    meta, _, messages = _case(name)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    patches = meta["num_image_patches"]
    image_token = processor.tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    assert text.replace(image_token, "") == meta["reference_prompt"]
    ids = _run(model, processor, name)["inputs"]["input_ids"][0]
    assert (ids[:patches] == model.config.image_token_id).all()
    assert ids[patches:].tolist() == meta["input_ids"]
    # the processor on the rendered prompt gives the same ids (no BOS added, placeholders expanded once)
    images = [block["path"] for m in messages for block in m["content"] if block["type"] == "image"]
    from PIL import Image

    again = processor(text=text, images=[Image.open(p).convert("RGB") for p in images] or None, return_tensors="pt")
    assert again["input_ids"][0].tolist() == ids.tolist()


@pytest.mark.parametrize("name", [c for c in CASES if (FIXTURE / "cases" / c / "image.png").is_file()])
def test_pixels_match_the_reference(converted, name):
    model, processor = converted
    run = _run(model, processor, name)
    pixels = run["inputs"]["pixel_values"]
    reference = run["reference"]
    assert pixels.shape[1] == 6
    assert (pixels[:, :3] - reference["pixel_values_dino"]).abs().max() <= run["meta"]["tolerance"]["pixels"]
    assert (pixels[:, 3:] - reference["pixel_values_siglip"]).abs().max() <= run["meta"]["tolerance"]["pixels"]


@pytest.mark.parametrize("name", CASES)
def test_logits_and_greedy_tokens_match_the_reference(converted, name):
    model, processor = converted
    run = _run(model, processor, name)
    meta, reference = run["meta"], run["reference"]
    assert run["logits"].shape[0] == meta["sequence_length"]
    ours = run["logits"][reference["logit_positions"], : meta["reference_vocab_size"]]
    assert (ours - reference["logits"]).abs().max() <= meta["tolerance"]["logits"]
    with torch.no_grad():
        out = model.generate(**run["inputs"], max_new_tokens=len(meta["greedy_continuation"]), do_sample=False)
    assert out[0, -len(meta["greedy_continuation"]):].tolist() == meta["greedy_continuation"]


def _render(template: str, messages: list[dict]) -> str:
    """Render a chat template as transformers does (its `generation` block kept, `raise_exception` raising)."""
    import jinja2
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_keep"), [], [], body).set_lineno(lineno)

        def _keep(self, caller):
            return caller()

    def raise_exception(message):
        raise ValueError(message)

    env = jinja2.Environment(extensions=[Generation])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages)


def test_template_follows_the_prompt_builders_and_refuses_what_they_cannot_express():
    from hybrid_vlm.chat_templates import cobra_chat_template

    turns = [{"role": "user", "content": [{"type": "text", "text": " Hi <image>there "}, {"type": "image"}]},
             {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    # base Mamba LMs (mamba-2.8b-slimpj, Cobra-3B's "base" variant): MambaPromptBuilder's "In: / Out:"
    base = "<image>In: Hi there\nOut: ok<|endoftext|>\nIn: more\nOut: "
    assert _render(cobra_chat_template("mamba-2.8b-slimpj"), turns) == base
    assert _render(cobra_chat_template("mamba-2.8b-zephyr"), turns) == (
        "<image><|user|>\nHi there<|endoftext|>\n<|assistant|>\nok<|endoftext|>\n<|user|>\nmore<|endoftext|>\n"
        "<|assistant|>\n")
    with pytest.raises(ValueError, match="no system role"):
        _render(cobra_chat_template(), [{"role": "system", "content": "x"}, *turns])
    with pytest.raises(ValueError, match="at most one image"):
        _render(cobra_chat_template(), [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}])
    with pytest.raises(ValueError, match="alternate"):
        _render(cobra_chat_template(), [{"role": "assistant", "content": "x"}])
