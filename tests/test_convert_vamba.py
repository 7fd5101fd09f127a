"""`--from vamba`: TIGER-AI-Lab/Vamba checkpoints (qwen2_vl model_type + cross_attn/alpha/vision_mixer weights) into
HybridVLM's Vamba family with Qwen2-VL's vision tower, checked tensor by tensor on a synthetic tiny checkpoint that has
the reference code's exact names, shapes and config fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_qwen2vl_vision import TINY_QWEN2VL_VISION, tiny_qwen2vl

import hybrid_vlm
from hybrid_vlm.convert import ConversionError, convert, detect_unconverted_vamba

TINY_SSM = {"ssm_d_state": 16, "ssm_head_dim": 16, "ssm_chunk_size": 16}


def vamba_name(name: str) -> str:
    """HybridVLM name -> the name Vamba's reference code saves (Qwen2-VL's 2024 layout)."""
    if name.startswith("model.vision_tower."):
        return "visual." + name[len("model.vision_tower."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def vamba_config() -> dict:
    """config.json as Vamba writes it: a flat qwen2_vl config plus its extra fields."""
    vision = {k: v for k, v in TINY_QWEN2VL_VISION.items() if k != "model_type"}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "vocab_size": 128, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]},
        "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 32768,
        "max_window_layers": 28, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "image_token_id": 120, "video_token_id": 121, "vision_start_token_id": 122, "vision_end_token_id": 123,
        "vision_config": {**vision, "model_type": "qwen2_vl", "in_chans": 3, "spatial_patch_size": 14,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "use_alpha_balancing": True, "cross_attn_use_position_embeddings": False, "cross_attn_use_layer_norm": False,
        "distill_coeff": 0.0,
        "vision_mamba_mixer_config": {"enable": True, "hidden_dim": 48, "d_state": 16, "d_conv": 4, "expand": 2,
                                      "headdim": 16, "ngroups": 1, "chunk_size": 16, "norm_type": "rmsnorm",
                                      "rmsnorm": True, "norm_before_gate": False, "bias": False, "conv_bias": True},
        "torch_dtype": "float32", "transformers_version": "4.45.0",
    }


def write_vamba_checkpoint(folder: Path, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A Vamba folder with random weights; returns the same tensors under HybridVLM's names."""
    model = hybrid_vlm.build_vamba(tiny_qwen2vl(), vamba_options=TINY_SSM)
    torch.manual_seed(1)
    ours = {}
    for name, tensor in model.state_dict().items():
        ours[name] = (torch.rand_like(tensor) if name.endswith(".alpha") else torch.randn_like(tensor) * 0.05)
    state = {vamba_name(n): (t.reshape(1) if n.endswith(".alpha") else t) for n, t in ours.items()}  # alpha: [1]
    state.update(extra or {})
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(vamba_config()))
    return ours


def quiet() -> dict:
    return {"progress": False}


def test_vamba_conversion_is_lossless_and_generates(tmp_path):
    ours = write_vamba_checkpoint(tmp_path / "vamba")
    assert detect_unconverted_vamba(tmp_path / "vamba")
    report = convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    assert len(report.mapped) == len(ours) and not report.dropped
    assert report.mapped["visual.merger.mlp.2.weight"] == "model.vision_tower.merger.mlp.2.weight"
    assert report.mapped["model.layers.1.vision_mixer.mixer.A_log"] == "model.language_model.layers.1.vision_mixer.mixer.A_log"
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(written) == sorted(ours)
    for name, tensor in ours.items():  # every tensor bit-exact at its new name (alpha back to a scalar)
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["decoder_type"] == "vamba" and config["projector_type"] == "identity"
    assert config["text_config"]["model_type"] == "qwen2"
    options = config["vamba_options"]
    assert (options["mix"], options["visual_mixer"], options["cross_attention_kv_norm"]) == ("alpha", "mamba2", False)
    assert (options["ssm_d_state"], options["ssm_head_dim"], options["ssm_expand"], options["ssm_chunk_size"]) == (
        16, 16, 2, 16)
    assert options["cross_attention_rope"] is False  # the reference trained without RoPE in its cross-attention

    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    loaded = model.state_dict()
    for name, tensor in ours.items():
        assert torch.equal(loaded[name], tensor), name
    image_tokens = [120] * 4  # a 56x56 picture: 2x2 merged tokens
    ids = torch.tensor([[1, 5, 122, *image_tokens, 123, 7, 9]])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 3)


def test_a_tensor_no_rule_covers_is_never_dropped_silently(tmp_path):
    write_vamba_checkpoint(tmp_path / "vamba", extra={"model.layers.0.mystery.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.mystery\.weight"):
        convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    assert not (tmp_path / "out").exists()
    report = convert(tmp_path / "vamba", tmp_path / "out", "vamba", allow_unused=[r"mystery"], **quiet())
    assert "model.layers.0.mystery.weight" in report.dropped


def test_a_missing_vamba_weight_fails_before_writing(tmp_path):
    write_vamba_checkpoint(tmp_path / "vamba")
    state = load_file(str(tmp_path / "vamba" / "model.safetensors"))
    del state["visual.blocks.1.mlp.fc2.weight"]
    save_file(state, str(tmp_path / "vamba" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model\.vision_tower\.blocks\.1\.mlp\.fc2\.weight"):
        convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    assert not (tmp_path / "out").exists()


def test_plain_qwen2vl_is_not_converted_as_vamba(tmp_path):
    source = tiny_qwen2vl()
    source.save_pretrained(tmp_path / "qwen2vl")
    with pytest.raises(ConversionError, match="plain Qwen2-VL"):
        convert(tmp_path / "qwen2vl", tmp_path / "out", "vamba", **quiet())


QWEN2VL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def write_qwen2vl_style_tokenizer(folder: Path) -> dict[str, int]:
    """A word-level tokenizer with Qwen2-VL's special tokens, the pads at the config's ids (image 120, video 121)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "system", "user", "assistant", "You", "are", "a", "helpful", ".", "Describe", "this", "image"]
    vocab = {word: i for i, word in enumerate(words)}
    ids = dict(zip(QWEN2VL_SPECIALS, [113, 114, 115, 122, 123, 119, 120, 121]))
    vocab.update(ids)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2VL_SPECIALS[1:]})
    tokenizer.save_pretrained(str(folder))
    return ids


def test_a_folder_with_its_tokenizer_converts_to_the_references_prompt_and_preprocessing(tmp_path):
    """Every released checkpoint has its Qwen2-VL tokenizer: the converted processor writes the reference's ChatML
    (Qwen's default system prompt) with `<|vision_start|>`, one `<|image_pad|>` per visual token, `<|vision_end|>`,
    and resizes with Qwen2-VL's smart_resize (min/max pixels from the source), not to a fixed square."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    write_vamba_checkpoint(tmp_path / "vamba")
    ids = write_qwen2vl_style_tokenizer(tmp_path / "vamba")
    (tmp_path / "vamba" / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor"}))
    convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert (model.config.image_token_id, model.config.video_token_id) == (120, 121)
    image = Image.new("RGB", (100, 70), (200, 30, 60))  # smart_resize: 70x100 -> 56x112 (2x4 merged tokens)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    inputs = processor(text=text, images=[image], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 56, 112)
    row = inputs["input_ids"][0].tolist()
    start = row.index(ids["<|vision_start|>"])
    assert row[start : start + 10] == [ids["<|vision_start|>"], *[120] * 8, ids["<|vision_end|>"]]
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
    frames = [Image.new("RGB", (112, 84), (10 * i, 0, 0)) for i in range(5)]  # an odd count loses its last frame
    video = processor(text="<|video_pad|>", videos=[frames], return_tensors="pt")
    assert tuple(video["pixel_values_videos"].shape) == (1, 4, 3, 84, 112)
    assert video["input_ids"][0].tolist().count(121) == 2 * 12  # two temporal patches of 3x4 merged tokens
    options = json.loads((tmp_path / "out" / "config.json").read_text())["vamba_options"]
    assert (options["cross_attention_visibility"], options["text_positions"], options["ssm_norm_eps"]) == (
        "all", "text", 1e-5)
    assert model.generation_config.suppress_tokens is None  # the reference suppresses nothing


def test_the_references_layer_norm_flag_norms_the_visual_stream(tmp_path):
    config = vamba_config()
    write_vamba_checkpoint(tmp_path / "vamba")
    (tmp_path / "vamba" / "config.json").write_text(json.dumps({**config, "cross_attn_use_layer_norm": True}))
    convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    options = json.loads((tmp_path / "out" / "config.json").read_text())["vamba_options"]
    assert options["cross_attention_kv_norm"] is True and options["visual_stream_norm"] is True


def test_position_embeddings_flag_rotates_keys_at_their_grid_places(tmp_path):
    """cross_attn_use_position_embeddings=True: queries at text positions, keys by M-RoPE at (t, h, w) of their
    token grid (from 0 per image/video), with the source's mrope_section."""
    from transformers import AutoModelForImageTextToText

    write_vamba_checkpoint(tmp_path / "vamba")
    config = {**vamba_config(), "cross_attn_use_position_embeddings": True}
    (tmp_path / "vamba" / "config.json").write_text(json.dumps(config))
    convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    options = json.loads((tmp_path / "out" / "config.json").read_text())["vamba_options"]
    assert options["cross_attention_rope"] is True and options["cross_attention_key_positions"] == "grid"
    assert options["mrope_section"] == [2, 2, 2]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 5, 122, *[120] * 8, 123, 7, 122, *[121] * 8, 123, 9]])
    pixels, video = torch.randn(1, 3, 56, 112), torch.randn(1, 4, 3, 56, 56)
    embeds = model.get_input_embeddings()(ids)
    positions = model.model._visual_grid_positions(ids, embeds, {"image": pixels, "video": video})
    image, clip = positions[:, 0, 3:11], positions[:, 0, 14:22]
    assert image.tolist() == [[0] * 8, [0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert clip.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1]]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, pixel_values_videos=video).logits
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids=ids, pixel_values=pixels, pixel_values_videos=video, max_new_tokens=2,
                         do_sample=False)
    assert out.shape == (1, ids.shape[1] + 2)
    del config["rope_scaling"]
    (tmp_path / "vamba" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="mrope_section"):
        convert(tmp_path / "vamba", tmp_path / "out2", "vamba", **quiet())


def test_a_qwen2vl_style_prompt_that_wraps_its_pad_gets_the_markers_once(tmp_path):
    """Prompts written by Qwen2-VL's own template (`<|vision_start|><|image_pad|><|vision_end|>`) give the same ids as
    the converted folder's template, which writes the bare pad."""
    from transformers import AutoProcessor

    write_vamba_checkpoint(tmp_path / "vamba")
    write_qwen2vl_style_tokenizer(tmp_path / "vamba")
    convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    image = torch.zeros(3, 56, 56)
    bare = processor(text="Describe <|image_pad|> this", images=[image])["input_ids"]
    wrapped = processor(text="Describe <|vision_start|><|image_pad|><|vision_end|> this", images=[image])["input_ids"]
    assert bare == wrapped and bare[0].count(122) == bare[0].count(123) == 1 and bare[0].count(120) == 4


def test_mixer_biases_follow_the_weights_and_unsupported_mixer_settings_are_refused(tmp_path):
    """mamba-ssm's `bias` / `conv_bias` show in the weights (in_proj.bias, conv1d.bias): the converted block has them
    too. A LayerNorm pre-norm or a dt limit, which the visual block does not compute, is refused with the reason."""
    model = hybrid_vlm.build_vamba(tiny_qwen2vl(), vamba_options={**TINY_SSM, "ssm_bias": True, "ssm_conv_bias": False})
    state = {vamba_name(n): (t.reshape(1) if n.endswith(".alpha") else t) for n, t in model.state_dict().items()}
    assert "visual.blocks.0.attn.qkv.weight" in state and "model.layers.0.vision_mixer.mixer.in_proj.bias" in state
    (tmp_path / "vamba").mkdir()
    save_file(state, str(tmp_path / "vamba" / "model.safetensors"), metadata={"format": "pt"})
    config = vamba_config()
    (tmp_path / "vamba" / "config.json").write_text(json.dumps(config))
    convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    options = json.loads((tmp_path / "out" / "config.json").read_text())["vamba_options"]
    assert options["ssm_bias"] is True and options["ssm_conv_bias"] is False
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(written["model.language_model.layers.1.vision_mixer.mixer.out_proj.bias"],
                       state["model.layers.1.vision_mixer.mixer.out_proj.bias"])
    for field, value in (("norm_type", "layernorm"), ("dt_limit", [0.0, 0.1])):
        mixer = {**config["vision_mamba_mixer_config"], field: value}
        (tmp_path / "vamba" / "config.json").write_text(json.dumps({**config, "vision_mamba_mixer_config": mixer}))
        with pytest.raises(NotImplementedError, match=field):
            convert(tmp_path / "vamba", tmp_path / f"out_{field}", "vamba", **quiet())


def test_a_checkpoint_without_alpha_or_visual_mixer_converts(tmp_path):
    """use_alpha_balancing=false (no alpha weights: text + SA + CA) and a disabled vision mixer (no vision_mixer
    weights: the visual stream is left as it is) are the reference's other settings; both convert and run."""
    from transformers import AutoModelForImageTextToText

    write_vamba_checkpoint(tmp_path / "vamba")
    state = load_file(str(tmp_path / "vamba" / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.endswith(".alpha") and ".vision_mixer." not in k}
    save_file(state, str(tmp_path / "vamba" / "model.safetensors"), metadata={"format": "pt"})
    config = vamba_config()
    config.update(use_alpha_balancing=False, vision_mamba_mixer_config={**config["vision_mamba_mixer_config"],
                                                                         "enable": False})
    (tmp_path / "vamba" / "config.json").write_text(json.dumps(config))
    report = convert(tmp_path / "vamba", tmp_path / "out", "vamba", **quiet())
    assert any("use_alpha_balancing=false" in note for note in report.notes)
    options = json.loads((tmp_path / "out" / "config.json").read_text())["vamba_options"]
    assert (options["mix"], options["visual_mixer"]) == ("sum", "none")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert all(layer.alpha.item() == 0.5 for layer in model.model.language_model.layers)
    ids = torch.tensor([[1, 5, 122, *[120] * 4, 123, 7, 9]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56)).logits).all()
