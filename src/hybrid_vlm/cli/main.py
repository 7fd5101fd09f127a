"""`hybrid-vlm` command line: demo, generate, train, convert, bench, env, presets."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@contextmanager
def _step(label: str, timings: list[tuple[str, float]]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    timings.append((label, elapsed))
    print(f"[{elapsed:7.2f}s] {label}")


def demo_image(size: int = 96) -> Image.Image:
    """A deterministic test picture: a colour gradient with a dark square, so no file or download is needed."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    pixels[size // 4 : size // 2, size // 4 : size // 2] = 20
    return Image.fromarray(pixels, mode="RGB")


def demo_video(path: Path, num_frames: int = 24, fps: int = 8, side: int = 32) -> Path:
    """A deterministic test clip written with PyAV: a dark square moving across a gradient."""
    import av

    y, x = np.mgrid[0:side, 0:side]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            pixels = np.stack([x * 255 // side, y * 255 // side, np.full_like(x, 128)], axis=-1).astype(np.uint8)
            left = i * (side - 8) // max(num_frames - 1, 1)
            pixels[side // 2 - 4 : side // 2 + 4, left : left + 8] = 20
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def _chat_inputs(processor, image: Image.Image | None, question: str, video: Path | None = None):
    block = {"type": "image"} if video is None else {"type": "video"}
    messages = [{"role": "user", "content": [block, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if video is not None:
        return processor(text=text, videos=[str(video)], return_tensors="pt")
    return processor(text=text, images=[image], return_tensors="pt")


def expanded_layout(processor, input_ids, limit: int = 400) -> str:
    """The prompt after placeholder expansion, shortened: runs of a placeholder as `<image>×144`, repeated frame
    groups as `[...]×7`, newlines as `\\n`, and the middle cut when it is still longer than `limit` characters."""
    import re

    text = processor.tokenizer.decode(list(input_ids), skip_special_tokens=False)
    for token in dict.fromkeys([processor.image_token, processor.video_token]):
        text = re.sub(f"(?:{re.escape(token)})+", lambda m, t=token: f"{t}×{len(m.group(0)) // len(t)}", text)
    text = re.sub(r"((?:<img>|<\|vision_start\|>)[^\n]*?(?:</img>|<\|vision_end\|>)(?:<t>)?)\1+",
                  lambda m: f"[{m.group(1)}]×{len(m.group(0)) // len(m.group(1))}", text)
    text = text.replace("\n", "\\n")
    if len(text) > limit:
        text = f"{text[: limit // 2]} … {text[-limit // 2 :]}"
    return text


def run_demo(preset: str, output: str | None, max_new_tokens: int, question: str) -> int:
    """Build a tiny preset, answer a question about a generated image and one about a generated video (showing the
    expanded prompt layouts), save, reload through the Auto classes and check the reload changes nothing."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm
    from hybrid_vlm import HybridVLMProcessor

    timings: list[tuple[str, float]] = []
    print(f"hybrid_vlm {hybrid_vlm.__version__} demo with preset '{preset}' (random weights: the text is noise)")
    with _step(f"build preset {preset}", timings):
        model, processor = hybrid_vlm.from_preset(preset)
    print(f"          {model.num_parameters():,} parameters; LM: {model.config.text_config.model_type}")
    image = demo_image()
    with _step("process chat turn (1 image)", timings):
        inputs = _chat_inputs(processor, image, question)
    print(f"          {inputs['input_ids'].shape[1]} tokens, pixel_values {tuple(inputs['pixel_values'].shape)}")
    print(f"          prompt layout ({processor.image_layout}): {expanded_layout(processor, inputs['input_ids'][0])}")
    with _step(f"generate {max_new_tokens} tokens (greedy)", timings), torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    print(f"          answer: {processor.decode(new_tokens, skip_special_tokens=True)!r}")

    with tempfile.TemporaryDirectory() as scratch:
        video = demo_video(Path(scratch) / "clip.mp4")
        video_question = "What moves in this video?"
        with _step("process chat turn (1 generated video)", timings):
            video_inputs = _chat_inputs(processor, None, video_question, video)
        frames = tuple(video_inputs["pixel_values_videos"].shape)
        print(f"          {video_inputs['input_ids'].shape[1]} tokens, pixel_values_videos {frames}")
        print(f"          prompt layout ({processor.video_layout}): "
              f"{expanded_layout(processor, video_inputs['input_ids'][0])}")
        with _step(f"generate {max_new_tokens} tokens about the video (greedy)", timings), torch.no_grad():
            video_generated = model.generate(**video_inputs, max_new_tokens=max_new_tokens)
        video_answer = video_generated[0, video_inputs["input_ids"].shape[1] :]
        print(f"          answer: {processor.decode(video_answer, skip_special_tokens=True)!r}")
        # The same turn in LongLLaVA's layout (markers around images and frames), to show what a layout changes.
        longllava = HybridVLMProcessor.from_model_config(
            model.config, processor.tokenizer, image_processor=processor.image_processor,
            video_processor=processor.video_processor, layout="longllava",
        )
        shown = _chat_inputs(longllava, None, video_question, video)["input_ids"][0]
        print(f"          the same turn in the longllava layout: {expanded_layout(longllava, shown)}")

        folder = Path(output) if output else Path(scratch) / "model"
        with _step(f"save to {folder}", timings):
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        with _step("reload with AutoModelForImageTextToText / AutoProcessor", timings):
            reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
            reloaded_processor = AutoProcessor.from_pretrained(folder)
        with _step("reload check (same inputs, logits and tokens)", timings), torch.no_grad():
            again = _chat_inputs(reloaded_processor, image, question)
            video_again = _chat_inputs(reloaded_processor, None, video_question, video)
            same_inputs = torch.equal(again["input_ids"], inputs["input_ids"]) and torch.equal(
                video_again["input_ids"], video_inputs["input_ids"]
            )
            diff = max(
                (model(**inputs).logits - reloaded(**again).logits).abs().max().item(),
                (model(**video_inputs).logits - reloaded(**video_again).logits).abs().max().item(),
            )
            regenerated = reloaded.generate(**again, max_new_tokens=max_new_tokens)
            video_regenerated = reloaded.generate(**video_again, max_new_tokens=max_new_tokens)
    same_tokens = torch.equal(regenerated, generated) and torch.equal(video_regenerated, video_generated)
    ok = same_inputs and same_tokens and diff == 0.0
    print(
        f"reload check: {type(reloaded).__name__}; identical inputs: {same_inputs}; max |logit diff|: {diff:.3g}; "
        f"identical tokens: {same_tokens} -> {'OK' if ok else 'FAILED'}"
    )
    print(f"total {sum(t for _, t in timings):.2f}s")
    return 0 if ok else 1


def load_model(name: str, dtype: torch.dtype | None = None, allow_adapter: bool = True) -> tuple[Any, Any, str]:
    """`(model, processor, kind)` for a command-line model argument: a preset (random weights), a saved folder, a
    LoRA adapter folder (loaded onto its base) or a Hub id. The argument is checked locally first, so a typo fails at
    once with the options instead of waiting for the network."""
    from transformers import AutoProcessor

    import hybrid_vlm
    from hybrid_vlm.compat import auto_model_for_image_text_to_text
    from hybrid_vlm.model_args import resolve_model_source

    kind, source = resolve_model_source(name)
    if kind == "preset":
        model, processor = hybrid_vlm.from_preset(name)
        return model, processor, kind  # fp32 weights; `--bf16` training autocasts
    if kind == "adapter":
        if not allow_adapter:
            raise ValueError(
                f"{name!r} holds a LoRA adapter, not a model. Load it with PeftModel.from_pretrained and merge it "
                "(merge_and_unload + save_pretrained) to train on, or pass its base model."
            )
        return (*_load_adapter(name, source, dtype), kind)
    auto = auto_model_for_image_text_to_text()
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = auto.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as error:
        if kind != "hub":
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{name!r} could not be loaded from the Hub ({first}). It is not a local folder nor a preset "
            "(`hybrid-vlm presets` lists them); set HF_HUB_OFFLINE=1 to fail at once without a network."
        ) from None
    return model, processor, kind


def _load_adapter(name: str, folder: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """A PEFT adapter folder on its base (a preset or a folder recorded in adapter_config.json)."""
    import json

    from hybrid_vlm.model_args import resolve_model_source

    base = json.loads((Path(folder) / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    try:
        resolve_model_source(base)
    except ValueError as error:
        raise ValueError(
            f"The LoRA adapter {name!r} was trained on the base model {base!r}, which is missing here: {error}"
        ) from None
    from peft import PeftModel
    from transformers import AutoProcessor

    model, processor, _ = load_model(base, dtype, allow_adapter=False)
    if (Path(folder) / "processor_config.json").is_file() or (Path(folder) / "tokenizer_config.json").is_file():
        processor = AutoProcessor.from_pretrained(folder)
    return PeftModel.from_pretrained(model, folder), processor


def open_image(path: str) -> Image.Image:
    """An RGB image from a file, with one-line errors for the usual mistakes (missing, a folder, not an image)."""
    from PIL import UnidentifiedImageError

    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--image {path!r} is a folder; pass one image file (PNG, JPEG, ...).")
    if not file.is_file():
        raise FileNotFoundError(f"--image file not found: {path}")
    try:
        with Image.open(file) as opened:
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"--image {path!r} is not an image Pillow can read ({type(error).__name__}).") from None


def _check_prompt(prompt: str, processor: Any) -> None:
    for token in dict.fromkeys([processor.image_token, processor.video_token, "<image>", "<video>"]):
        if token and token in prompt:
            raise ValueError(
                f"--prompt contains {token!r}: leave it out; the CLI adds the image/video block for --image/--video "
                "itself, before the prompt."
            )


def run_generate(model_path: str, image_path: str | None, prompt: str, max_new_tokens: int,
                 video_path: str | None = None) -> int:
    """Answer `prompt` about an image or a video with a saved folder, a LoRA adapter folder, a preset or a Hub id."""
    import hybrid_vlm  # noqa: F401  (registers the Auto classes)
    from hybrid_vlm.model_args import resolve_model_source

    resolve_model_source(model_path)  # a bad model argument fails first, and at once
    if (image_path is None) == (video_path is None):
        raise ValueError("generate needs exactly one of --image FILE or --video FILE.")
    image = open_image(image_path) if image_path is not None else None
    video = None
    if video_path is not None:
        video = Path(video_path)
        if video.is_dir():
            raise ValueError(f"--video {video_path!r} is a folder; pass one video file (.mp4, ...).")
        if not video.is_file():
            raise FileNotFoundError(f"--video file not found: {video_path}")
    model, processor, kind = load_model(model_path)
    model.eval()
    _check_prompt(prompt, processor)
    try:
        inputs = _chat_inputs(processor, image, prompt, video)
    except (ValueError, RuntimeError, OSError) as error:
        if video is None:
            raise
        raise ValueError(f"--video {video_path!r} could not be decoded: {str(error).splitlines()[0]}") from None
    if kind == "preset":
        print(f"note: {model_path!r} is a preset: random weights, so the answer is noise.", file=sys.stderr)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)
    print(processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_env() -> int:
    """Print versions, what compat's probes found, and which compute paths would run."""
    import hybrid_vlm
    from hybrid_vlm.compat import feature_report
    from hybrid_vlm.kernels import KERNEL_PACKAGES, installed_kernels, mamba_kernels_usable

    rows = [
        ("hybrid_vlm", hybrid_vlm.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
    ]
    rows += [(f"  {name}", value) for name, value in feature_report()]
    rows += [(name, _version(name)) for name in ("trl", "peft", "accelerate", "datasets", "av", "torchvision")]
    cuda = torch.cuda.is_available()
    rows.append(("cuda", torch.cuda.get_device_name(0) if cuda else "not available"))
    for module, package in KERNEL_PACKAGES.items():
        rows.append((package, "installed" if installed_kernels()[module] else "not installed"))
    ssm_path = "mamba-ssm / causal-conv1d kernels" if mamba_kernels_usable() else "pure PyTorch"
    attention = "flash_attention_2 (opt-in) / sdpa" if installed_kernels()["flash_attn"] and cuda else "sdpa"
    rows += [("SSM path", ssm_path), ("attention", attention)]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    _print_compute_paths()
    return 0


# Tiny presets whose modules cover every path choice: our SSMs (visual stream, projector), transformers' SSM LMs,
# self- and cross-attention.
ENV_PATH_PRESETS = ("vamba-tiny", "mambavlm-tiny", "jamba-llava-tiny")


def _print_compute_paths() -> None:
    """Which path each module of a few tiny presets takes here (on CUDA when there is one), and why."""
    import hybrid_vlm
    from hybrid_vlm.kernels import compute_paths, format_compute_paths

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ENV_PATH_PRESETS:
        model, _ = hybrid_vlm.from_preset(name, device=device)
        print(f"\ncompute paths of {name} on {device}:")
        print(format_compute_paths(compute_paths(model)))


def run_presets(count: bool) -> int:
    """List presets; with --count, build each on the meta device and print its parameter count."""
    import hybrid_vlm

    for name, description in hybrid_vlm.list_presets().items():
        line = f"{name:<20} {description}"
        if count:
            model, _ = hybrid_vlm.from_preset(name, device="meta")
            line = f"{name:<20} {_human_count(model.num_parameters()):>8}  {description}"
        print(line)
    return 0


def _human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-vlm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="tiny preset: chat turn on a generated image, save, reload, compare")
    demo.add_argument("--preset", default="jamba-llava-tiny")
    demo.add_argument("--output", default=None, help="folder to keep the saved model in (default: a temp folder)")
    demo.add_argument("--max-new-tokens", type=int, default=12)
    demo.add_argument("--question", default="What is in this image?")
    generate = commands.add_parser("generate", help="answer a prompt about an image or a video with a saved model")
    generate.add_argument(
        "model", help="a saved model folder, a LoRA adapter folder from `train --lora`, a preset name or a Hub id"
    )
    media = generate.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="an image file")
    media.add_argument("--video", help="a video file (.mp4, ...)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    commands.add_parser("env", help="versions and which kernel paths are available / used")
    from .convert import add_convert_subcommand

    add_convert_subcommand(commands)
    from .benchmark import add_bench_subcommand, run_bench

    add_bench_subcommand(commands).set_defaults(handler=run_bench)
    from .train_cli import add_train_subcommand

    add_train_subcommand(commands)
    presets = commands.add_parser("presets", help="list the named presets")
    presets.add_argument("--count", action="store_true", help="print parameter counts (built on the meta device)")
    return parser


# Bad input reported by the commands: printed as one line (no traceback); HYBRID_VLM_TRACEBACK=1 shows the traceback.
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except USER_ERRORS as error:
        if os.environ.get("HYBRID_VLM_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:  # sub-commands registered by their own module: `set_defaults(handler=run_x)`
        return handler(args)
    if args.command == "demo":
        return run_demo(args.preset, args.output, args.max_new_tokens, args.question)
    if args.command == "generate":
        return run_generate(args.model, args.image, args.prompt, args.max_new_tokens, args.video)
    if args.command == "env":
        return run_env()
    if args.command == "convert":
        from .convert import run_convert

        return run_convert(args)
    return run_presets(args.count)


if __name__ == "__main__":
    sys.exit(main())
