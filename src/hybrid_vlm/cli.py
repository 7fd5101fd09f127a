"""`hybrid-vlm` command line: demo, generate, env, presets, convert, bench."""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

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


def _chat_inputs(processor, image: Image.Image, question: str):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, images=[image], return_tensors="pt")


def run_demo(preset: str, output: str | None, max_new_tokens: int, question: str) -> int:
    """Build a tiny preset, answer a question about a generated image, save, reload through the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm

    timings: list[tuple[str, float]] = []
    print(f"hybrid_vlm {hybrid_vlm.__version__} demo with preset '{preset}' (random weights: the text is noise)")
    with _step(f"build preset {preset}", timings):
        model, processor = hybrid_vlm.from_preset(preset)
    print(f"          {model.num_parameters():,} parameters; LM: {model.config.text_config.model_type}")
    image = demo_image()
    with _step("process chat turn (1 image)", timings):
        inputs = _chat_inputs(processor, image, question)
    print(f"          {inputs['input_ids'].shape[1]} tokens, pixel_values {tuple(inputs['pixel_values'].shape)}")
    with _step(f"generate {max_new_tokens} tokens (greedy)", timings), torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    print(f"          answer: {processor.decode(new_tokens, skip_special_tokens=True)!r}")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(output) if output else Path(scratch) / "model"
        with _step(f"save to {folder}", timings):
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        with _step("reload with AutoModelForImageTextToText / AutoProcessor", timings):
            reloaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
            reloaded_processor = AutoProcessor.from_pretrained(folder)
        with _step("reload check (same inputs, logits and tokens)", timings), torch.no_grad():
            again = _chat_inputs(reloaded_processor, image, question)
            same_inputs = torch.equal(again["input_ids"], inputs["input_ids"])
            diff = (model(**inputs).logits - reloaded(**again).logits).abs().max().item()
            regenerated = reloaded.generate(**again, max_new_tokens=max_new_tokens)
    same_tokens = torch.equal(regenerated, generated)
    ok = same_inputs and same_tokens and diff == 0.0
    print(
        f"reload check: {type(reloaded).__name__}; identical inputs: {same_inputs}; max |logit diff|: {diff:.3g}; "
        f"identical tokens: {same_tokens} -> {'OK' if ok else 'FAILED'}"
    )
    print(f"total {sum(t for _, t in timings):.2f}s")
    return 0 if ok else 1


def run_generate(model_path: str, image_path: str, prompt: str, max_new_tokens: int) -> int:
    """Answer `prompt` about an image with a saved HybridVLM folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hybrid_vlm  # noqa: F401  (registers the Auto classes)

    path = Path(image_path)
    if not path.is_file():
        raise SystemExit(f"error: image file not found: {path}")
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    inputs = _chat_inputs(processor, image, prompt)
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
    """Print versions and which compute paths would run."""
    import transformers

    import hybrid_vlm
    from hybrid_vlm.caching import IS_TRANSFORMERS_5
    from hybrid_vlm.kernels import KERNEL_PACKAGES, installed_kernels, mamba_kernels_usable

    rows = [
        ("hybrid_vlm", hybrid_vlm.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("transformers", f"{transformers.__version__} ({'5.x' if IS_TRANSFORMERS_5 else '4.x'} line)"),
    ]
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
    return 0


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
    generate = commands.add_parser("generate", help="answer a prompt about an image with a saved model folder")
    generate.add_argument("model", help="a local HybridVLM folder")
    generate.add_argument("--image", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    commands.add_parser("env", help="versions and which kernel paths are available / used")
    from .convert import add_convert_subcommand

    add_convert_subcommand(commands)
    from .benchmark import add_bench_subcommand, run_bench

    add_bench_subcommand(commands).set_defaults(handler=run_bench)
    presets = commands.add_parser("presets", help="list the named presets")
    presets.add_argument("--count", action="store_true", help="print parameter counts (built on the meta device)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:  # sub-commands registered by their own module: `set_defaults(handler=run_x)`
        return handler(args)
    if args.command == "demo":
        return run_demo(args.preset, args.output, args.max_new_tokens, args.question)
    if args.command == "generate":
        return run_generate(args.model, args.image, args.prompt, args.max_new_tokens)
    if args.command == "env":
        return run_env()
    if args.command == "convert":
        from .convert import run_convert

        return run_convert(args)
    return run_presets(args.count)


if __name__ == "__main__":
    sys.exit(main())
