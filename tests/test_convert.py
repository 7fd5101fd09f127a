"""Converters: transformers LLaVA / LLaVA-NeXT parity, lossless mapping of every supported source layout, LongLLaVA,
leftover keys, atomic writes, and the formats that are refused with a clear reason (Vamba, Cobra, OneVision).

Every source model or checkpoint is built here from tiny random weights with the source's exact key names.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedTokenizerFast,
)

import hybrid_vlm  # noqa: F401  (registers the Auto classes)
from hybrid_vlm.anyres import anyres_token_count, best_grid_pinpoints
from hybrid_vlm.chat_templates import CHAT_TEMPLATE
from hybrid_vlm.compat import projected_features
from hybrid_vlm.configuration_hybrid_vlm import HybridVLMConfig
from hybrid_vlm.convert import (
    ConversionError,
    UnconvertedVambaCheckpointError,
    add_convert_subcommand,
    check_unconverted_vamba,
    convert,
    convert_vamba_language_state_dict,
    detect_unconverted_vamba,
    map_vamba_language_keys,
    run_convert,
)
from hybrid_vlm.convert import writer as convert_writer
from hybrid_vlm.convert.engine import expected_weights
from hybrid_vlm.convert.reader import SourceTensor
from hybrid_vlm.convert.sources import longllava as longllava_source
from hybrid_vlm.tiny_tokenizer import load_tiny_tokenizer
from hybrid_vlm.token_counts import VisualTokenSpec

TILE = 28
PINPOINTS = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
VISION = dict(
    model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=TILE, patch_size=14, projection_dim=32,
)
TEXT = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    # attention + Mamba, dense + MoE layers: transformers 5 keeps the experts fused in memory, saves them per expert
    "jamba": dict(model_type="jamba", hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=1, num_experts=3, num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=8,
                  use_mamba_kernels=False),
}


def quiet(**kwargs):
    return {"progress": False, **kwargs}


def _tokenizer():
    return load_tiny_tokenizer()


def _image_processor_class(name: str):
    """The PIL-based image processors: `*Pil` on transformers 5, the plain name on 4.57 (fast ones need torchvision)."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _save_llava(folder: Path, lm: str = "llama", next_: bool = False, seed: int = 0, tie: bool = False,
                processor: bool = True) -> torch.nn.Module:
    """A tiny transformers LLaVA(-NeXT) saved with save_pretrained, plus its processor files, as users have them."""
    tokenizer = _tokenizer()
    text = dict(TEXT[lm], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tie)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(seed)
    if next_:
        config = LlavaNextConfig(vision_config=VISION, text_config=text, image_token_index=image_token_id,
                                 image_grid_pinpoints=PINPOINTS, tie_word_embeddings=tie)
        model = LlavaNextForConditionalGeneration(config)
    else:
        config = LlavaConfig(vision_config=VISION, text_config=text, image_token_index=image_token_id,
                             tie_word_embeddings=tie)
        model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # a trained-looking newline, not the default init
        if next_:
            newline = model.model.image_newline if hasattr(model, "model") and hasattr(model.model, "image_newline") \
                else model.image_newline
            newline.normal_()
    model.eval().save_pretrained(folder)
    if processor:
        size = {"shortest_edge": TILE}
        crop = {"height": TILE, "width": TILE}
        if next_:
            image_processor = _image_processor_class("LlavaNextImageProcessor")(
                size=size, crop_size=crop, image_grid_pinpoints=PINPOINTS
            )
            cls = transformers.LlavaNextProcessor
        else:
            image_processor = _image_processor_class("CLIPImageProcessor")(size=size, crop_size=crop)
            cls = transformers.LlavaProcessor
        cls(image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    return model


def _load_converted(folder: Path):
    return AutoModelForImageTextToText.from_pretrained(folder).eval()


def _image_ids(count: int) -> list[int]:
    return [_tokenizer().convert_tokens_to_ids("<image>")] * count


# ------------------------------------------------------------------------------------------------ LLaVA parity


@pytest.mark.parametrize("lm", ["llama", "qwen2", "jamba"])
def test_llava_logits_match_transformers(tmp_path, lm):
    source = _save_llava(tmp_path / "src", lm)
    report = convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    ours = _load_converted(tmp_path / "dst")
    assert type(ours).__name__ == "HybridVLMForConditionalGeneration"
    per_image = (TILE // 14) ** 2
    ids = torch.tensor([[1, 30, 31] + _image_ids(per_image) + [40, 41] + _image_ids(per_image) + [42, 43]])
    pixel_values = torch.randn(2, 3, TILE, TILE)
    with torch.no_grad():
        expected = source(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits
        got = ours(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not report.dropped and report.num_tensors == len(report.mapped)


def test_llava_tied_head_is_tied_again(tmp_path):
    source = _save_llava(tmp_path / "src", "qwen2", tie=True)
    report = convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    ours = _load_converted(tmp_path / "dst")
    assert ours.config.tie_word_embeddings
    assert ours.lm_head.weight.data_ptr() == ours.get_input_embeddings().weight.data_ptr()
    ids = torch.tensor([[1, 30] + _image_ids(4) + [31]])
    pixel_values = torch.randn(1, 3, TILE, TILE)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, pixel_values=pixel_values).logits,
                                   source(input_ids=ids, pixel_values=pixel_values).logits, atol=1e-5, rtol=1e-5)
    assert "lm_head.weight" not in report.mapped.values() or report.tied == []


def _next_inputs(sizes: list[tuple[int, int]]):
    """LLaVA-NeXT inputs built by hand, and the same pixels as HybridVLM AnyRes inputs.

    transformers' LlavaNext takes (num_images, max_views, 3, H, W) plus the original `image_sizes` and recomputes each
    image's grid from `image_grid_pinpoints`; HybridVLM takes the same pixels and sizes plus the grid (`image_grids`,
    from the same pinpoint rule, `anyres.best_grid_pinpoints`) and the real view count (`num_patches`).
    """
    grids = [best_grid_pinpoints(size, PINPOINTS, TILE) for size in sizes]
    views = [1 + rows * cols for rows, cols in grids]
    pixel_values = torch.zeros(len(sizes), max(views), 3, TILE, TILE)
    for i, count in enumerate(views):
        pixel_values[i, :count] = torch.randn(count, 3, TILE, TILE)
    spec = VisualTokenSpec(patch_size=14, num_prefix_tokens=1)
    counts = [anyres_token_count(spec, size, grid, TILE, newline=True, unpad=True) for size, grid in zip(sizes, grids)]
    ours = {"image_sizes": torch.tensor(sizes), "image_grids": torch.tensor(grids), "num_patches": torch.tensor(views)}
    return pixel_values, counts, ours


@pytest.mark.parametrize("lm", ["llama", "qwen2"])
def test_llava_next_logits_match_transformers(tmp_path, lm):
    source = _save_llava(tmp_path / "src", lm, next_=True)
    convert(tmp_path / "src", tmp_path / "dst", "llava-next", **quiet())
    ours = _load_converted(tmp_path / "dst")
    assert ours.config.image_newline and ours.config.anyres_unpad and ours.config.anyres_merge == "spatial"
    sizes = [(30, 50), (70, 20)]  # wide -> 1x2 tiles, tall -> 3x1 tiles: both un-pad
    pixel_values, counts, extra = _next_inputs(sizes)
    ids = torch.tensor([[1, 30] + _image_ids(counts[0]) + [31, 32] + _image_ids(counts[1]) + [33]])
    with torch.no_grad():
        expected = source(input_ids=ids, pixel_values=pixel_values, image_sizes=extra["image_sizes"]).logits
        got = ours(input_ids=ids, pixel_values=pixel_values, **extra).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _llava_next_processor():
    """transformers' own LlavaNextProcessor for the tiny source models (tokenizer built locally)."""
    return transformers.LlavaNextProcessor(
        image_processor=_image_processor_class("LlavaNextImageProcessor")(
            size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
        ),
        tokenizer=_tokenizer(), patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def _random_image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("lm", ["llama", "jamba"])
def test_converted_llava_next_takes_llava_next_processor_output(tmp_path, lm):
    """What transformers' LlavaNextProcessor returns (5-D pixel_values padded with zero views, image_sizes, no
    image_grids / num_patches) goes to the converted model as it is: the grids come from the config's pinpoints."""
    source = _save_llava(tmp_path / "src", lm, next_=True)
    convert(tmp_path / "src", tmp_path / "dst", "llava-next", **quiet())
    ours = _load_converted(tmp_path / "dst")
    assert ours.config.image_grid_pinpoints == PINPOINTS
    processor = _llava_next_processor()
    prompt = "<|im_start|>user\n<image>What is this?<|im_end|>\n"
    images = [_random_image(45, 80, 0), _random_image(90, 30, 1)]  # 2x2 and 3x1 grids: 5 and 4 views
    one = processor(text=prompt, images=images[:1], return_tensors="pt")
    two = processor(text=[prompt, "<image>and this one, with more words"], images=images, padding=True,
                    return_tensors="pt")
    two_images = processor(text="<image> then <image>", images=images, return_tensors="pt")
    for inputs in (one, two, two_images):
        assert "image_grids" not in inputs and "num_patches" not in inputs and inputs["pixel_values"].dim() == 5
        with torch.no_grad():
            expected = source(**inputs).logits
            got = ours(**inputs).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the shorter image's trailing view is zero padding: it must be dropped, as transformers drops it
    assert two["pixel_values"].shape[1] == 5 and not two["pixel_values"][1, 4].any()
    if lm == "llama":  # generate() too (transformers' Jamba cannot generate inside LLaVA-NeXT on 4.57)
        inputs = {k: v for k, v in two.items() if k != "token_type_ids"}  # 4.57's processor adds them
        expected = source.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert ours.generate(**inputs, max_new_tokens=3, do_sample=False).tolist() == expected.tolist()
    # get_image_features takes the same inputs
    features = projected_features(
        ours.model.get_image_features(pixel_values=two["pixel_values"], image_sizes=two["image_sizes"])
    )
    assert [len(f) for f in features] == [int((row == ours.config.image_token_id).sum()) for row in two["input_ids"]]


def test_llava_next_inputs_without_image_sizes_fail_clearly(tmp_path):
    _save_llava(tmp_path / "src", "llama", next_=True)
    convert(tmp_path / "src", tmp_path / "dst", "llava-next", **quiet())
    ours = _load_converted(tmp_path / "dst")
    inputs = _llava_next_processor()(text="<image> x", images=[_random_image(90, 30, 1)], return_tensors="pt")
    inputs = dict(inputs)
    sizes = inputs.pop("image_sizes")
    with pytest.raises(ValueError, match="need image_sizes"):
        ours(**inputs)
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        ours(**inputs, image_sizes=torch.cat([sizes, sizes]))
    # pixels cut to 2 views while the sizes ask for a 3x1 grid (4 views)
    with pytest.raises(ValueError, match="do not belong to these pixels"):
        ours(**{**inputs, "pixel_values": inputs["pixel_values"][:, :2]}, image_sizes=sizes)
    ours.config.image_grid_pinpoints = None  # a folder converted before the pinpoints were in the config
    with pytest.raises(ValueError, match="set config.image_grid_pinpoints"):
        ours(**inputs, image_sizes=sizes)


def test_llava_next_end_to_end_with_each_sides_processor(tmp_path):
    """The source's own LlavaNextProcessor + model against the converted folder's AutoProcessor + model."""
    source = _save_llava(tmp_path / "src", "llama", next_=True)
    convert(tmp_path / "src", tmp_path / "dst", "llava-next", **quiet())
    ours = _load_converted(tmp_path / "dst")
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    assert processor.image_processor.image_grid_pinpoints == PINPOINTS
    theirs_processor = _llava_next_processor()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (45, 80, 3), dtype=np.uint8))
    text = "<|im_start|>user\n<image>What is this?<|im_end|>\n"
    mine = processor(text=text, images=[image], return_tensors="pt")
    theirs = theirs_processor(text=text, images=[image], return_tensors="pt")
    assert mine["input_ids"].tolist() == theirs["input_ids"].tolist()
    torch.testing.assert_close(mine["pixel_values"], theirs["pixel_values"], atol=1e-6, rtol=0)
    with torch.no_grad():
        expected = source(**theirs).logits
        got = ours(**mine).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_converted_folder_loads_on_the_other_transformers_line(other_python, tmp_path):
    """A folder converted on this transformers line loads (model and processor) on the other one, same logits."""
    source = _save_llava(tmp_path / "src", "jamba")
    convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    ids = torch.tensor([[1, 30] + _image_ids(4) + [31, 32]])
    pixel_values = torch.randn(1, 3, TILE, TILE)
    with torch.no_grad():
        logits = source(input_ids=ids, pixel_values=pixel_values).logits
    torch.save({"input_ids": ids, "pixel_values": pixel_values, "logits": logits}, tmp_path / "reference.pt")
    script = textwrap.dedent(
        f"""
        import torch, hybrid_vlm
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / "dst")!r}).eval()
        AutoProcessor.from_pretrained({str(tmp_path / "dst")!r})
        reference = torch.load({str(tmp_path / "reference.pt")!r})
        with torch.no_grad():
            logits = model(input_ids=reference["input_ids"], pixel_values=reference["pixel_values"]).logits
        print("MAXDIFF", (logits - reference["logits"]).abs().max().item())
        """
    )
    result = subprocess.run([other_python, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("MAXDIFF")[-1].split()[0]) < 1e-4  # the two lines' kernels round differently


def test_converted_llava_generates_with_its_processor(tmp_path):
    _save_llava(tmp_path / "src", "qwen2")
    convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    model = _load_converted(tmp_path / "dst")
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    assert processor.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.fromarray(np.full((40, 60, 3), 120, dtype=np.uint8))
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    image_id = model.config.image_token_id
    assert image_id not in out[0, inputs["input_ids"].shape[1]:].tolist()  # placeholders are suppressed
    assert (tmp_path / "dst" / "README.md").read_text().count("HybridVLM conversion") == 1


# ------------------------------------------------------------------------------------------------ lossless mapping


def _hybrid_names(config: HybridVLMConfig) -> dict[str, tuple[int, ...]]:
    """HybridVLM weight names and shapes as saved on disk (per-expert MoE on both lines)."""
    return expected_weights(config)


def _llava_source_name(name: str, layout: str) -> str:
    """HybridVLM name -> the name a transformers LLaVA checkpoint of `layout` uses for it.

    v4-save: what 4.57's save_pretrained writes; v5-save: what 5.x writes (no CLIP `vision_model` level);
    v4-memory / v5-memory: the module names of 4.52+ / 5.x models (what a raw `torch.save(model.state_dict())` holds).
    """
    legacy = layout.endswith("save")
    wrapped = layout.startswith("v4")
    if name.startswith("model.vision_tower."):
        rest = name.removeprefix("model.vision_tower.")
        return ("" if legacy else "model.") + "vision_tower." + ("vision_model." if wrapped else "") + rest
    if name.startswith("model.multi_modal_projector."):
        return name.removeprefix("model.") if legacy else name
    if name.startswith("model.language_model."):
        return "language_model.model." + name.removeprefix("model.language_model.") if legacy else name
    if name == "lm_head.weight":
        return "language_model.lm_head.weight" if legacy else name
    if name == "model.image_newline":
        return "image_newline" if legacy else name
    raise AssertionError(name)


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _save_sharded(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Two safetensors shards and an index, as large checkpoints come."""
    names = list(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _read_converted(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def _assert_lossless(source: dict[str, torch.Tensor], converted: dict[str, torch.Tensor], expected: dict[str, str]):
    """Every source tensor is at its expected new name, bit for bit, and nothing else was written."""
    assert sorted(converted) == sorted(expected.values())
    for source_name, target in expected.items():
        assert converted[target].dtype == source[source_name].dtype, source_name
        assert torch.equal(converted[target], source[source_name]), f"{source_name} -> {target} changed"


@pytest.mark.parametrize("layout", ["v4-save", "v5-save", "v4-memory", "v5-memory"])
@pytest.mark.parametrize("kind", ["llava", "llava-next"])
def test_llava_layouts_map_losslessly(tmp_path, layout, kind):
    tokenizer = _tokenizer()
    text = dict(TEXT["llama"], vocab_size=len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    src = tmp_path / "src"
    src.mkdir()
    next_ = kind == "llava-next"
    if next_:
        LlavaNextConfig(vision_config=VISION, text_config=text, image_token_index=image_token_id,
                        image_grid_pinpoints=PINPOINTS).save_pretrained(src)
    else:
        LlavaConfig(vision_config=VISION, text_config=text, image_token_index=image_token_id).save_pretrained(src)
    target_config = HybridVLMConfig(vision_config=VISION, text_config=text, image_token_id=image_token_id,
                                    image_newline=next_)
    shapes = _hybrid_names(target_config)
    expected = {_llava_source_name(name, layout): name for name in shapes}
    state = _random_state({_llava_source_name(name, layout): shape for name, shape in shapes.items()})
    # buffers old checkpoints carry: dropped by name, never written
    buffers = {("" if layout.endswith("save") else "model.") + "vision_tower."
               + ("vision_model." if layout.startswith("v4") else "") + "embeddings.position_ids":
               torch.arange(5)[None],
               "language_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    _save_sharded({**state, **buffers}, src)
    report = convert(src, tmp_path / "dst", kind, **quiet())
    _assert_lossless(state, _read_converted(tmp_path / "dst"), expected)
    assert report.mapped == expected
    assert set(report.dropped) == set(buffers)
    assert all("buffer" in reason for reason in report.dropped.values())
    assert not (tmp_path / "dst" / "tokenizer.json").exists()  # no tokenizer in the source: model only
    assert any("no tokenizer" in note for note in report.notes)


def test_torch_bin_source_and_dtype_cast(tmp_path):
    """A `pytorch_model.bin` source (memory-mapped), cast to bf16 on the way; the config records the dtype."""
    tokenizer = _tokenizer()
    text = dict(TEXT["jamba"], vocab_size=len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    src = tmp_path / "src"
    src.mkdir()
    LlavaConfig(vision_config=VISION, text_config=text, image_token_index=image_token_id).save_pretrained(src)
    shapes = _hybrid_names(HybridVLMConfig(vision_config=VISION, text_config=text, image_token_id=image_token_id))
    state = _random_state({_llava_source_name(name, "v4-save"): shape for name, shape in shapes.items()})
    torch.save(state, src / "pytorch_model.bin")
    report = convert(src, tmp_path / "dst", "llava", dtype="bfloat16", max_shard_size="20KB", **quiet())
    converted = _read_converted(tmp_path / "dst")
    assert len(report.shards) > 1 and (tmp_path / "dst" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(converted)
    for source_name, tensor in state.items():
        target = report.mapped[source_name]
        if target.rsplit(".", 1)[-1] in ("A_log", "D"):  # SSM parameters stay fp32
            assert torch.equal(converted[target], tensor)
        else:
            assert torch.equal(converted[target], tensor.to(torch.bfloat16)), target
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "bfloat16"
    # per-expert names load on both lines (fused in memory on 5.x)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst", dtype="auto")
    assert model.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ leftovers, atomicity


def test_unknown_source_tensor_fails_and_is_listed(tmp_path):
    _save_llava(tmp_path / "src", "llama", processor=False)
    with safe_open(str(tmp_path / "src" / "model.safetensors"), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    state["language_model.model.layers.0.adapter.lora_A.weight"] = torch.randn(4, 64)
    save_file(state, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"1 source tensor\(s\) match no rule.*would be lost: .*adapter\.lora_A\.weight"):
        convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    assert not (tmp_path / "dst").exists()
    report = convert(tmp_path / "src", tmp_path / "dst", "llava", allow_unused=[r"\.lora_A\."], **quiet())
    assert report.dropped == {"language_model.model.layers.0.adapter.lora_A.weight": r"allowed by allow_unused '\\.lora_A\\.'"}
    assert "lora_A" in (tmp_path / "dst" / "README.md").read_text()
    assert not any("lora" in name for name in _read_converted(tmp_path / "dst"))


def test_missing_or_misshapen_weights_fail_before_writing(tmp_path):
    _save_llava(tmp_path / "src", "llama", processor=False)
    with safe_open(str(tmp_path / "src" / "model.safetensors"), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    del state["language_model.model.norm.weight"]
    state["multi_modal_projector.linear_2.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "src", tmp_path / "dst", "llava", **quiet())
    assert "model.language_model.norm.weight" in str(error.value) and "shape [3]" in str(error.value)
    assert not (tmp_path / "dst").exists()


def _leftover_temporaries(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".converting-" in p.name or ".old-" in p.name]


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    _save_llava(tmp_path / "src", "llama")
    calls = []

    def failing_save(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, str(path), metadata={"format": "pt"})

    monkeypatch.setattr(convert_writer, "save_shard", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path / "src", tmp_path / "dst", "llava", max_shard_size="20KB", **quiet())
    assert not (tmp_path / "dst").exists()
    assert _leftover_temporaries(tmp_path) == []


def test_overwrite_rules(tmp_path, monkeypatch):
    _save_llava(tmp_path / "src", "llama")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(tmp_path / "src", dst, "llava", **quiet())
    monkeypatch.setattr(convert_writer, "save_shard", lambda tensors, path: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        convert(tmp_path / "src", dst, "llava", overwrite=True, **quiet())
    assert (dst / "keep.txt").read_text() == "old"  # a failed overwrite leaves the old folder alone
    monkeypatch.undo()
    convert(tmp_path / "src", dst, "llava", overwrite=True, **quiet())
    assert not (dst / "keep.txt").exists() and (dst / "model.safetensors").is_file()
    assert _leftover_temporaries(tmp_path) == []


def test_kind_mismatch_is_named(tmp_path):
    _save_llava(tmp_path / "src", "llama", processor=False)
    with pytest.raises(ConversionError, match="--from llava"):
        convert(tmp_path / "src", tmp_path / "dst", "llava-next", **quiet())
    with pytest.raises(ValueError, match="unknown kind"):
        convert(tmp_path / "src", tmp_path / "dst", "llava2", **quiet())


# ------------------------------------------------------------------------------------------------ LongLLaVA


LONGLLAVA_JAMBA = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
    num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8, mamba_conv_bias=True,
    mamba_proj_bias=False, rms_norm_eps=1e-6, use_mamba_kernels=False,
)
# CLIP-shaped tower at 336 px / 14 px patches: the 24x24 grid LongLLaVA's 2-D pooling is written for.
LONGLLAVA_VISION = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=1, image_size=336, patch_size=14)


def _jamba_tokenizer() -> PreTrainedTokenizerFast:
    """A small word-level tokenizer shaped like Jamba's: <|startoftext|>/<|endoftext|>/<|pad|>, no <image> token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|User|>", "<|Assistant|>"]
    words += ["what", "is", "in", "the", "picture", "a", "cat", "dog", "img", "vid", "<", ">", "/", "?", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|pad|>", bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", additional_special_tokens=["<|User|>", "<|Assistant|>"],
    )


def _longllava_source_name(name: str, config) -> str:
    """HybridVLM name -> LongLLaVA's (vendored AI21 Jamba inside LLaVA) name, written out independently of the
    converter's rules."""
    if name.startswith("model.vision_tower."):
        return "model.vision_tower.vision_tower.vision_model." + name.removeprefix("model.vision_tower.")
    if name.startswith("model.multi_modal_projector."):
        return name.replace("multi_modal_projector.linear_1", "mm_projector.0").replace(
            "multi_modal_projector.linear_2", "mm_projector.2").replace("multi_modal_projector.linear_3", "mm_projector.4")
    if name in ("lm_head.weight", "model.image_newline"):
        return name
    rest = name.removeprefix("model.language_model.")
    match = re.match(r"layers\.(\d+)\.feed_forward\.(.+)$", rest)
    if match:
        layer, tail = match.groups()
        if tail.startswith(("experts.", "router.")):
            return f"model.layers.{layer}.moe.{tail}"
        return f"model.layers.{layer}.moe.experts.0.{tail}"  # a dense layer is the vendored model's single expert
    rest = rest.replace("pre_ff_layernorm", "pre_moe_layernorm")
    rest = rest.replace("mamba.b_layernorm", "mamba.B_layernorm").replace("mamba.c_layernorm", "mamba.C_layernorm")
    return "model." + rest


def _longllava_folder(folder: Path, *, vision: dict, raw_extra: dict, newline: bool = False,
                      tokenizer: bool = True, target_extra: dict | None = None) -> tuple[dict, dict, int]:
    """A LongLLaVA checkpoint folder: llava_jamba config.json, safetensors with its names, its tokenizer."""
    folder.mkdir()
    tok = _jamba_tokenizer()
    vocab = len(tok)
    if tokenizer:
        tok.save_pretrained(folder)
    raw = {
        "model_type": "llava_jamba", "architectures": ["LlavaJambaForCausalLM"], **LONGLLAVA_JAMBA,
        "vocab_size": vocab, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3, "n_ctx": 4096,
        "mamba_inner_layernorms": True, "sliding_window": None, "torch_dtype": "float32", "use_cache": True,
        "mm_hidden_size": vision["hidden_size"], "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 4096, "tokenizer_padding_side": "right",
        "use_mm_proj": True, **raw_extra,
    }
    (folder / "config.json").write_text(json.dumps(raw))
    target = HybridVLMConfig(
        vision_config=vision, text_config={"model_type": "jamba", **LONGLLAVA_JAMBA, "vocab_size": vocab},
        image_newline=newline, anyres_unpad=newline, anyres_merge="spatial" if newline else "flat",
        **(target_extra or {}),
    )
    shapes = _hybrid_names(target)
    expected = {_longllava_source_name(name, target): name for name in shapes}
    state = _random_state({source: shapes[name] for source, name in expected.items()}, seed=3)
    position_ids = {"model.vision_tower.vision_tower.vision_model.embeddings.position_ids": torch.arange(577)[None]}
    save_file({**state, **position_ids}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state, expected, vocab


def test_longllava_maps_losslessly(tmp_path):
    raw_extra = {"mm_vision_tower": "some-org/clip-vit-tiny-336", "mm_patch_merge_type": "flat",
                 "image_aspect_ratio": "pad", "resamplePooling": "2d"}
    state, expected, vocab = _longllava_folder(tmp_path / "src", vision=LONGLLAVA_VISION, raw_extra=raw_extra)
    report = convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    converted = _read_converted(tmp_path / "dst")
    # Jamba renames: every source name, including dense layers' moe.experts.0 -> feed_forward, lands as expected
    assert report.mapped == expected
    assert report.dropped == {"model.vision_tower.vision_tower.vision_model.embeddings.position_ids":
                              "position_ids buffer of the vision embeddings (rebuilt from the config on load)"}
    for source_name, target in expected.items():
        if target in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            # the tokenizer had no <image>/<video>: two zero rows appended, the trained rows untouched
            assert converted[target].shape[0] == vocab + 2
            assert torch.equal(converted[target][:vocab], state[source_name])
            assert not converted[target][vocab:].any()
        else:
            assert torch.equal(converted[target], state[source_name]), source_name
    assert sorted(converted) == sorted(expected.values())

    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["vision_pooled_grid"] == 12 and config["anyres_merge"] == "flat" and not config["image_newline"]
    assert config["vision_config"]["num_attention_heads"] == 1  # derived from the weights (64-wide heads)
    assert config["text_config"]["model_type"] == "jamba" and config["text_config"]["vocab_size"] == vocab + 2
    assert config["text_config"]["max_position_embeddings"] == 4096  # vendored n_ctx

    model = _load_converted(tmp_path / "dst")
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the picture ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|startoftext|><|User|>\n<image>\nwhat is in the picture ?\n<|startoftext|><|Assistant|>\n"
    image = Image.fromarray(np.full((50, 70, 3), 90, dtype=np.uint8))
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 144  # 24x24 pooled to 12x12
    # LongLLaVA's own prompt: the processor writes <img>...</img> as plain text around the image's tokens
    assert (processor.image_layout, processor.layout_markers) == ("longllava", "text")
    bare = processor.tokenizer(prompt.replace("<image>", ""), add_special_tokens=False)["input_ids"]
    markers = sum(len(processor.tokenizer(m, add_special_tokens=False)["input_ids"]) for m in ("<img>", "</img>"))
    assert inputs["input_ids"].shape[1] == len(bare) + 144 + markers
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    generation = json.loads((tmp_path / "dst" / "generation_config.json").read_text())
    assert set(generation["suppress_tokens"]) == {model.config.image_token_id, model.config.video_token_id}
    assert generation["eos_token_id"] == processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize("aspect,expected", [("pad", "pad"), (None, "pad"), ("square", None)])
def test_longllava_image_aspect_ratio_selects_padding(tmp_path, aspect, expected):
    """LongLLaVA pads images to a square unless its config says otherwise (its process_images defaults to "pad");
    the setting is saved with the image and video processors."""
    raw_extra = {"mm_vision_tower": "x/clip", "mm_patch_merge_type": "flat", "resamplePooling": "2d"}
    if aspect is not None:
        raw_extra["image_aspect_ratio"] = aspect
    _longllava_folder(tmp_path / "src", vision=LONGLLAVA_VISION, raw_extra=raw_extra)
    convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    assert processor.image_processor.image_aspect_ratio == expected
    assert processor.video_processor.image_aspect_ratio == expected
    assert json.loads((tmp_path / "dst" / "preprocessor_config.json").read_text())["image_aspect_ratio"] == expected
    wide = Image.fromarray(np.full((30, 60, 3), 200, dtype=np.uint8))
    corner = processor.image_processor(wide, return_tensors="pt")["pixel_values"][0, :, 0, 0]
    mean = torch.tensor(processor.image_processor.image_mean)
    std = torch.tensor(processor.image_processor.image_std)
    padded = bool(torch.allclose((corner * std + mean) * 255, torch.tensor([122.0, 116.0, 104.0]), atol=0.51))
    assert padded == (expected == "pad")
    assert (processor.image_layout, processor.video_layout) == ("longllava", "longllava-chat")


def test_longllava_mlp3x_projector(tmp_path):
    """LLaVA's mlp3x_gelu (mm_projector.0/.2/.4: vision -> LM, LM -> LM, LM -> LM) maps onto the 3-layer projector."""
    raw_extra = {"mm_vision_tower": "x/clip", "mm_patch_merge_type": "flat", "mm_projector_type": "mlp3x_gelu"}
    hidden = LONGLLAVA_JAMBA["hidden_size"]
    target_extra = {"projector_type": "mlp3x_gelu", "projector_intermediate_size": hidden}
    state, expected, _ = _longllava_folder(tmp_path / "src", vision=LONGLLAVA_VISION, raw_extra=raw_extra,
                                           target_extra=target_extra)
    assert "model.mm_projector.4.weight" in expected
    report = convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    assert report.mapped["model.mm_projector.4.weight"] == "model.multi_modal_projector.linear_3.weight"
    converted = _read_converted(tmp_path / "dst")
    assert torch.equal(converted["model.multi_modal_projector.linear_3.weight"], state["model.mm_projector.4.weight"])
    model = _load_converted(tmp_path / "dst")
    assert model.config.projector_type == "mlp3x_gelu"
    assert model.model.multi_modal_projector.linear_1.weight.shape == (hidden, LONGLLAVA_VISION["hidden_size"])


def test_longllava_anyres_newline_layout_generates(tmp_path):
    """spatial_unpad + anyres: image_newline is carried over, pinpoints (a string in LLaVA configs) are parsed, the
    vision config comes from the tower folder named in the config, and the converted model generates."""
    vision = dict(VISION)
    tower = tmp_path / "tower"
    tower.mkdir()
    CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"}).save_pretrained(tower)
    raw_extra = {"mm_vision_tower": str(tower), "mm_patch_merge_type": "spatial_unpad", "image_aspect_ratio": "anyres",
                 "image_grid_pinpoints": "[(28, 56), (56, 28), (56, 56)]"}
    state, _, _ = _longllava_folder(tmp_path / "src", vision=vision, raw_extra=raw_extra, newline=True)
    report = convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    converted = _read_converted(tmp_path / "dst")
    assert torch.equal(converted["model.image_newline"], state["model.image_newline"])
    model = _load_converted(tmp_path / "dst")
    assert model.config.image_newline and model.config.anyres_unpad and model.config.anyres_merge == "spatial"
    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    assert processor.image_processor.image_grid_pinpoints == [[28, 56], [56, 28], [56, 56]]
    assert any("tower folder" in note for note in report.notes)
    # the converted model generates (AnyRes tiles, learned newline, Jamba LM with MoE)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the picture ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.fromarray(np.full((30, 50, 3), 90, dtype=np.uint8))
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    assert inputs["image_grids"].tolist() == [[2, 2]]
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_longllava_clip_tower_from_its_name_and_weights():
    """LongLLaVA's config names the tower (openai/clip-vit-large-patch14-336) but not its shape: known names give
    the full config, checked against the weights' shapes (headers only: nothing is allocated here)."""
    prefix = "model.vision_tower.vision_tower.vision_model."

    def entries(hidden, patch, positions, layers, inner):
        shapes = {"embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
                  "embeddings.position_embedding.weight": (positions, hidden)}
        shapes.update({f"encoder.layers.{i}.mlp.fc1.weight": (inner, hidden) for i in range(layers)})
        return {prefix + k: SourceTensor(prefix + k, v, torch.float16, "x") for k, v in shapes.items()}

    config = longllava_source._clip_config_from_weights(entries(1024, 14, 577, 24, 4096), prefix,
                                                      "openai/clip-vit-large-patch14-336")
    assert (config["num_attention_heads"], config["image_size"], config["num_hidden_layers"]) == (16, 336, 24)
    with pytest.raises(ConversionError, match="weights differ"):
        longllava_source._clip_config_from_weights(entries(1024, 14, 257, 24, 4096), prefix,
                                                 "openai/clip-vit-large-patch14-336")
    with pytest.raises(ConversionError, match="head count"):
        longllava_source._clip_config_from_weights(entries(48, 14, 577, 2, 96), prefix, "someone/tower")


def test_longllava_refuses_what_it_cannot_reproduce(tmp_path):
    raw_extra = {"mm_vision_tower": "x/clip", "resamplePooling": "1d"}
    _longllava_folder(tmp_path / "src", vision=LONGLLAVA_VISION, raw_extra=raw_extra, tokenizer=False)
    with pytest.raises(NotImplementedError, match="1-D linear pooling"):
        convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config.update(resamplePooling=None, mamba_inner_layernorms=False)
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match="mamba_inner_layernorms"):
        convert(tmp_path / "src", tmp_path / "dst", "longllava", **quiet())
    assert not (tmp_path / "dst").exists()


# ------------------------------------------------------------------------------------------------ Vamba, Cobra, OneVision


def _vamba_language_state() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(Vamba's released names -> tensors, the same tensors under HybridVLM's names) for the tiny Vamba preset."""
    model, _ = hybrid_vlm.from_preset("vamba-tiny")
    ours = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.language_model.") or k == "lm_head.weight"}
    with torch.no_grad():
        for tensor in ours.values():
            tensor.normal_()
    vamba = {}
    for name, tensor in ours.items():
        source = "model." + name.removeprefix("model.language_model.") if name != "lm_head.weight" else name
        vamba[source] = tensor.reshape(1) if name.endswith(".alpha") else tensor  # Vamba stores alpha as [1]
    vamba["visual.blocks.0.attn.qkv.weight"] = torch.randn(12, 4)
    vamba["visual.merger.mlp.0.weight"] = torch.randn(4, 4)
    return vamba, ours


def _vamba_folder(folder: Path, vamba_keys: bool = True) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}))
    state, _ = _vamba_language_state()
    if not vamba_keys:
        state = {k: v for k, v in state.items() if not re.search(r"cross_attn|alpha|vision_mixer", k)}
    save_file(state, str(folder / "model.safetensors"))


def test_vamba_language_side_maps_losslessly():
    vamba, ours = _vamba_language_state()
    mapping = map_vamba_language_keys(vamba)
    assert "visual.blocks.0.attn.qkv.weight" not in mapping
    assert mapping["model.layers.0.cross_attn.q_proj.weight"] == "model.language_model.layers.0.cross_attn.q_proj.weight"
    assert mapping["model.layers.1.vision_mixer.mixer.A_log"] == "model.language_model.layers.1.vision_mixer.mixer.A_log"
    converted = convert_vamba_language_state_dict(vamba)
    assert sorted(converted) == sorted(ours)
    for name, tensor in ours.items():
        assert converted[name].shape == tensor.shape and torch.equal(converted[name], tensor), name
    assert converted["model.language_model.layers.0.alpha"].shape == ()
    model, _ = hybrid_vlm.from_preset("vamba-tiny")
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert all(not k.startswith("model.language_model.") for k in result.missing_keys)
    with pytest.raises(ConversionError, match="no rule"):
        map_vamba_language_keys(["extra.weight"])
    with pytest.raises(ConversionError, match=r"no rule \(or no target weight\) for \['model.layers.0.mystery'\]"):
        map_vamba_language_keys([*vamba, "model.layers.0.mystery"], target_names=model.state_dict())


def test_vamba_checkpoint_is_detected_and_refused(tmp_path):
    _vamba_folder(tmp_path / "vamba")
    _vamba_folder(tmp_path / "qwen2vl", vamba_keys=False)
    assert detect_unconverted_vamba(tmp_path / "vamba")
    assert not detect_unconverted_vamba(tmp_path / "qwen2vl")
    assert not detect_unconverted_vamba({"model_type": "llava"})
    assert detect_unconverted_vamba({"model_type": "qwen2_vl", "architectures": ["VambaQwen2VLForConditionalGeneration"]})
    config = transformers.AutoConfig.from_pretrained(tmp_path / "vamba")  # what stock transformers would load
    assert detect_unconverted_vamba(config)
    with pytest.raises(UnconvertedVambaCheckpointError, match="hybrid-vlm convert .* --from vamba"):
        check_unconverted_vamba(tmp_path / "vamba")
    check_unconverted_vamba(tmp_path / "qwen2vl")  # plain Qwen2-VL: nothing to say
    with pytest.raises(FileNotFoundError, match="no such folder"):  # a typo is not "not Vamba"
        detect_unconverted_vamba(tmp_path / "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no config.json"):
        detect_unconverted_vamba(tmp_path / "empty")
    with pytest.raises(ConversionError, match="no vision_config"):  # full conversion: tests/test_convert_vamba.py
        convert(tmp_path / "vamba", tmp_path / "dst", "vamba", **quiet())
    assert not (tmp_path / "dst").exists()


def test_cobra_without_its_vision_towers_is_refused_with_the_fix(tmp_path):
    (tmp_path / "cobra" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cobra" / "config.json").write_text(json.dumps(
        {"model": {"vision_backbone_id": "dinosiglip-vit-so-384px", "llm_backbone_id": "mamba-2.8b-zephyr",
                   "arch_specifier": "fused-gelu-mlp"}}))
    torch.save({"model": {"projector": {"0.weight": torch.zeros(1)}, "llm_backbone": {"w": torch.zeros(1)}}},
               tmp_path / "cobra" / "checkpoints" / "latest-checkpoint.pt")
    with pytest.raises(ConversionError, match="--vision-towers"):
        convert(tmp_path / "cobra", tmp_path / "dst", "cobra", **quiet())
    assert not (tmp_path / "dst").exists()


def test_llava_onevision_unknown_aspect_mode_is_refused_with_the_reason(tmp_path):
    src = tmp_path / "src"
    transformers.LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 28, "patch_size": 14},
        text_config=dict(TEXT["qwen2"], vocab_size=600), vision_aspect_ratio="pad",
    ).save_pretrained(src)
    save_file({"model.image_newline": torch.zeros(64)}, str(src / "model.safetensors"))
    with pytest.raises(NotImplementedError, match="anyres_max_N"):
        convert(src, tmp_path / "dst", "llava-onevision", **quiet())


# ------------------------------------------------------------------------------------------------ CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hybrid-vlm")
    add_convert_subcommand(parser.add_subparsers(dest="command"))
    return run_convert(parser.parse_args(argv))


def test_cli_convert(tmp_path, capsys):
    _save_llava(tmp_path / "src", "llama")
    assert _cli(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--from", "llava", "--no-progress"]) == 0
    assert "tensors mapped" in capsys.readouterr().out
    assert _cli(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--from", "llava", "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err
    assert _cli(["convert", str(tmp_path / "src"), str(tmp_path / "x"), "--from", "cobra", "--no-progress"]) == 1
    assert "not a Cobra/Prismatic config" in capsys.readouterr().err
