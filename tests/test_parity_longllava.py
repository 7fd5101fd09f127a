"""Parity with LongLLaVA's own code: `hybrid-vlm convert --from longllava` on the reference checkpoint, then the
converted folder's processor and chat template on each case's raw inputs, must give the reference's ids, pixels,
logits and greedy tokens.

The fixtures (a tiny random LongLLaVA checkpoint saved by the unmodified research code, and what that code produced
for each case) live outside the repository, in `../shared/parity/longllava/` next to the checkout; their README says
how every file was made. Without them these tests skip.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import hybrid_vlm  # noqa: F401  (registers the Auto classes)


@functools.cache
def _parity_script():
    """benchmarks/parity_longllava.py (the table-printing script) as a module: one conversion recipe for both."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_longllava.py"
    spec = importlib.util.spec_from_file_location("parity_longllava", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "longllava"
CASES = sorted(p.name for p in (PARITY / "cases").iterdir() if (p / "case.json").is_file()) if PARITY.is_dir() else []
IMAGE_TOKEN_INDEX = -200  # the reference's placeholder id, one per image or frame

pytestmark = pytest.mark.skipif(
    not (PARITY / "LongLLaVA-tiny" / "config.json").is_file(),
    reason=f"LongLLaVA parity fixtures not found at {PARITY} (the shared/parity pack beside the checkout)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The reference checkpoint converted once (the parity script's own conversion: weights linked, not copied)."""
    return _parity_script().convert_reference(PARITY, tmp_path_factory.mktemp("longllava_parity"))


@pytest.fixture(scope="module")
def loaded(converted):
    model = AutoModelForImageTextToText.from_pretrained(converted).eval()
    processor = AutoProcessor.from_pretrained(converted)
    return model, processor


def _case(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = PARITY / "cases" / name
    return json.loads((folder / "case.json").read_text()), load_file(str(folder / "reference.safetensors"))


def _messages_and_media(case: dict, folder: Path) -> tuple[list[dict], list[Image.Image], list[list[Image.Image]]]:
    return _parity_script().messages_and_media(case, folder)


def _run_case(name: str, loaded) -> dict:
    model, processor = loaded
    case, reference = _case(name)
    messages, images, videos = _messages_and_media(case, PARITY / "cases" / name)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=images or None, videos=videos or None, return_tensors="pt")
    return {"case": case, "reference": reference, "prompt": prompt, "inputs": inputs, "model": model,
            "processor": processor}


def _reference_view(ids: torch.Tensor, processor) -> list[int]:
    """Our ids with every image/video placeholder as the reference's -200 (one per feature position)."""
    placeholders = {processor.image_token_id, processor.video_token_id}
    return [IMAGE_TOKEN_INDEX if int(i) in placeholders else int(i) for i in ids]


@pytest.mark.parametrize("name", CASES)
def test_prompt_and_ids_match_the_reference(name, loaded):
    run = _run_case(name, loaded)
    case, reference, processor = run["case"], run["reference"], run["processor"]
    assert run["prompt"].count("<|startoftext|>") == case["reference_prompt"].count("<|startoftext|>")
    ids = run["inputs"]["input_ids"][0]
    assert _reference_view(ids, processor) == reference["expanded_input_ids"][0].tolist()
    assert int(ids[0]) == processor.tokenizer.bos_token_id and int(ids[1]) != processor.tokenizer.bos_token_id


@pytest.mark.parametrize("name", CASES)
def test_pixels_match_the_reference(name, loaded):
    run = _run_case(name, loaded)
    reference, inputs = run["reference"], run["inputs"]
    if "pixel_values" not in reference:
        assert "pixel_values" not in inputs and "pixel_values_videos" not in inputs
        return
    ours = inputs["pixel_values_videos"][0] if "pixel_values_videos" in inputs else inputs["pixel_values"]
    assert ours.shape == reference["pixel_values"].shape
    tolerance = run["case"]["tolerance"]["pixels_max_abs"]
    assert float((ours - reference["pixel_values"]).abs().max()) <= tolerance


@pytest.mark.parametrize("name", CASES)
def test_logits_and_greedy_tokens_match_the_reference(name, loaded):
    run = _run_case(name, loaded)
    case, reference, inputs, model = run["case"], run["reference"], run["inputs"], run["model"]
    columns = case["reference_vocab_size"]
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    positions = reference["logit_positions"]
    difference = float((logits[positions, :columns] - reference["logits"]).abs().max())
    assert difference <= case["tolerance"]["logits_max_abs"], f"max |logit diff| {difference}"
    new = reference["generated"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == reference["generated"][0].tolist()


def test_non_square_images_are_padded_with_the_mean_colour(loaded):
    """LongLLaVA's image_aspect_ratio='pad': a wide image is centred on a square of RGB (122, 116, 104) first."""
    _, processor = loaded
    assert processor.image_processor.image_aspect_ratio == "pad"
    assert processor.video_processor.image_aspect_ratio == "pad"
    # video files: one frame a second, at most 128 (LongLLaVA's chat code); frames given in memory are kept
    video = processor.video_processor
    assert (video.sampling, video.fps, video.max_frames) == ("fps", 1.0, 128)
    wide = Image.new("RGB", (48, 24), (255, 0, 0))
    pixels = processor.image_processor(wide, return_tensors="pt")["pixel_values"][0]
    mean = torch.tensor(processor.image_processor.image_mean)[:, None]
    std = torch.tensor(processor.image_processor.image_std)[:, None]
    border = pixels[:, 0, :] * std + mean  # top row: padding
    assert torch.allclose(border * 255, torch.tensor([122.0, 116.0, 104.0])[:, None], atol=0.51)
    centre = pixels[:, 24, :] * std + mean
    assert torch.allclose(centre * 255, torch.tensor([255.0, 0.0, 0.0])[:, None], atol=0.51)


def test_a_templated_prompt_gets_one_bos(loaded):
    """The template writes <|startoftext|>; the processor must not add the tokenizer's BOS in front of it, while a
    prompt without it still gets one."""
    _, processor = loaded
    bos = processor.tokenizer.bos_token_id
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=prompt)["input_ids"][0]
    assert ids[0] == bos and ids[1] != bos
    tokenized = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(tokenized["input_ids"][0]) == list(ids)
    assert processor(text="Hi")["input_ids"][0][0] == bos
    with pytest.raises(ValueError, match="second BOS"):
        processor(text=[prompt, "Hi"], padding=True)


def test_converted_tokenizer_files_keep_the_source_tokenization(converted):
    """The converted folder tokenizes like the source's tokenizer.json (legacy SentencePiece: a `▁` opens every
    segment after a special token); its config needs neither sentencepiece nor tokenizer.model to load."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = PreTrainedTokenizerFast(tokenizer_file=str(PARITY / "LongLLaVA-tiny" / "tokenizer.json"))
    ours = AutoTokenizer.from_pretrained(converted)
    for text in ("<|startoftext|><|User|>\nWhat is this?", "<|startoftext|> leading space", "a\n<|endoftext|>b"):
        assert ours(text, add_special_tokens=False)["input_ids"] == source(text, add_special_tokens=False)["input_ids"]
    after_special = ours.convert_ids_to_tokens(ours("<|startoftext|>What", add_special_tokens=False)["input_ids"])
    assert after_special[0] == "<|startoftext|>" and after_special[1].startswith("\u2581")
    config = json.loads((converted / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def _clip_processor():
    """transformers' own CLIP image processor on the tower folder's settings (the reference's preprocessing after its
    padding step); the PIL one on 5.x, which needs no torchvision."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(str(PARITY / "clip_tiny"))


def _padded_square(image: Image.Image, fill) -> Image.Image:
    """The image centred on a square of its longer side (offsets rounded down), the rest `fill`, in its own mode."""
    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _synthetic(width: int, height: int, mode: str = "RGB") -> Image.Image:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    array = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
    image = Image.fromarray(array)
    return image.convert(mode) if mode != "RGB" else image


def test_clip_stand_in_reproduces_the_reference_pixels():
    """The stand-in used below (pad, then transformers' CLIP processor) gives the pack's pixels bit for bit."""
    case, reference = _case("image")
    image = Image.open(PARITY / "cases" / "image" / case["messages"][0]["content"][0]["path"]).convert("RGB")
    pixels = _clip_processor()(images=_padded_square(image, (122, 116, 104)), return_tensors="pt")["pixel_values"]
    assert float((pixels - reference["pixel_values"]).abs().max()) <= 1e-6


@pytest.mark.parametrize("size,mode", [((64, 40), "RGB"), ((30, 90), "RGB"), ((97, 96), "RGB"), ((20, 20), "RGB"),
                                       ((120, 48), "L"), ((33, 70), "RGBA")])
def test_other_image_shapes_match_the_reference_preprocessing(size, mode, loaded):
    """Non-square (both orientations, odd margins), small and large images, grayscale and (opaque) RGBA: the
    reference pads in the input's own mode, with one number when it is not RGB, and its transformers (4.44) then
    converts to RGB by dropping the alpha band."""
    _, processor = loaded
    image = _synthetic(*size, mode=mode)
    fill = (122, 116, 104) if mode == "RGB" else 122
    padded = _padded_square(image, fill).convert("RGB")
    expected = _clip_processor()(images=padded, return_tensors="pt")["pixel_values"]
    ours = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == expected.shape == (1, 3, 48, 48)
    assert float((ours - expected).abs().max()) <= 1e-5


def _reference_style_ids(prompt: str, per_image: int) -> list[int]:
    """How the reference tokenizes a prompt: split at <image>, each chunk on its own without special tokens, one
    -200 between chunks (then repeated once per image feature, as its forward expands it)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(PARITY / "LongLLaVA-tiny" / "tokenizer.json"))
    ids: list[int] = []
    for index, chunk in enumerate(prompt.split("<image>")):
        if index:
            ids += [IMAGE_TOKEN_INDEX] * per_image
        ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_other_frame_counts_give_the_reference_video_prompt(frames, loaded):
    """LongLLaVA's chat code joins `<img><image></img><t>` per frame, strips the characters '<', 't', '>' from the
    right (eating the last '>' too) and adds `</vid>` and the question; a lone frame, with no `</img>` left, is
    wrapped in `<img>...</img>` once more."""
    _, processor = loaded
    question = "What happens in the video?"
    if frames == 1:
        video = "<vid><img><img><image></img></img</vid>"
    else:
        video = "<vid>" + "<img><image></img><t>" * (frames - 1) + "<img><image></img</vid>"
    reference_prompt = f"<|startoftext|><|User|>\n{video}{question}\n<|startoftext|><|Assistant|>\n"
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    clip = [_synthetic(40 + i, 64) for i in range(frames)]
    inputs = processor(text=prompt, videos=[clip], return_tensors="pt")
    assert _reference_view(inputs["input_ids"][0], processor) == _reference_style_ids(reference_prompt, 144)
    assert inputs["pixel_values_videos"].shape == (1, frames, 3, 48, 48)
    count = processor.num_video_tokens(frames, 48, 48)
    text_only = len(processor.tokenizer(prompt.replace("<video>", ""), add_special_tokens=False)["input_ids"])
    assert count == inputs["input_ids"].shape[1] - text_only


def test_a_llama_tokenizer_keeps_its_legacy_flag_through_a_save(tmp_path):
    """The class-level trap itself: a LlamaTokenizer with legacy=True, saved and made portable, reloads with the same
    ids (transformers 5.x drops `legacy` on save, and the non-legacy rebuild loses the `▁` after special tokens); a
    folder that tokenizes differently from its tokenizer is refused with the prompt that differs."""
    from transformers import AutoTokenizer

    from hybrid_vlm.tokenizer_files import make_tokenizer_files_portable, verify_same_ids

    # add_prefix_space=None: 4.57 would otherwise rebuild from tokenizer.model, which needs sentencepiece
    tokenizer = AutoTokenizer.from_pretrained(PARITY / "LongLLaVA-tiny", add_prefix_space=None)
    assert tokenizer.legacy is True
    tokenizer.save_pretrained(tmp_path / "saved")
    make_tokenizer_files_portable(tmp_path / "saved", tokenizer=tokenizer)
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["legacy"] is True
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    text = "<|startoftext|><|User|>\nWhat is it?\n<|startoftext|><|Assistant|>\n"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]

    config["legacy"] = False  # what 5.x's own save leaves behind, in effect
    (tmp_path / "saved" / "tokenizer_config.json").write_text(json.dumps(config))
    changed = AutoTokenizer.from_pretrained(tmp_path / "saved")
    if changed(text)["input_ids"] != tokenizer(text)["input_ids"]:  # a line whose Llama class rebuilds (5.x)
        with pytest.raises(ValueError, match="tokenizes"):
            verify_same_ids(tokenizer, tmp_path / "saved")
    with pytest.raises(ValueError, match="tokenizes"):
        verify_same_ids(tokenizer, converted_tiny_tokenizer(tmp_path))


def converted_tiny_tokenizer(tmp_path: Path) -> Path:
    """A folder holding a different tokenizer (the package's tiny one)."""
    from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer

    load_tiny_tokenizer().save_pretrained(tmp_path / "other")
    return tmp_path / "other"


@pytest.mark.parametrize("name", CASES)
def test_chat_template_with_media_paths_tokenizes_to_the_reference(name, loaded):
    """The one-call route (apply_chat_template(tokenize=True)) with the media in the blocks as file paths, a video as
    the list of its frame files: the same ids and pixels as the reference."""
    model, processor = loaded
    case, reference = _case(name)
    folder = PARITY / "cases" / name
    messages = []
    for message in case["messages"]:
        content = []
        for block in message["content"]:
            if block["type"] == "image":
                content.append({"type": "image", "path": str(folder / block["path"])})
            elif block["type"] == "video":
                content.append({"type": "video", "video": [str(folder / frame) for frame in block["frames"]]})
            else:
                content.append(block)
        messages.append({"role": message["role"], "content": content})
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert _reference_view(inputs["input_ids"][0], processor) == reference["expanded_input_ids"][0].tolist()
    if "pixel_values" in reference:
        ours = inputs["pixel_values_videos"][0] if "pixel_values_videos" in inputs else inputs["pixel_values"]
        assert float((ours - reference["pixel_values"]).abs().max()) <= case["tolerance"]["pixels_max_abs"]
