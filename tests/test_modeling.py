"""Model behaviour: fusion, loss, errors, batching, caches, generation, checkpointing, MoE, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    CORE_LMS,
    GREEDY,
    IMAGE_TOKEN_ID,
    assert_same_continuation,
    left_pad,
    prompt,
    tiny_config,
    tiny_model,
    tokens_per_image,
)

from hybrid_vlm.compat import projected_features
from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration
from hybrid_vlm.token_counts import VisualTokenSpec, count_image_tokens


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_image_features_replace_placeholders_and_nothing_else():
    model = tiny_model("llama")
    ids = torch.tensor([prompt(5, 6, "img", 7, 8)])
    pixel_values = _images(1)
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixel_values)
        features = projected_features(model.get_image_features(pixel_values))
    hook.remove()
    embeds = captured["embeds"][0]
    text_embeds = model.get_input_embeddings()(ids)[0]
    image_positions = (ids[0] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
    torch.testing.assert_close(embeds[image_positions], features[0])
    text_positions = (ids[0] != IMAGE_TOKEN_ID).nonzero().squeeze(-1)
    torch.testing.assert_close(embeds[text_positions], text_embeds[text_positions])


def test_labels_give_shifted_cross_entropy():
    model = tiny_model("llama")
    ids = torch.tensor([prompt(5, "img", 7, 8, 9)])
    labels = ids.clone()
    labels[ids == IMAGE_TOKEN_ID] = -100
    out = model(input_ids=ids, pixel_values=_images(1), labels=labels)
    expected = F.cross_entropy(out.logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("strategy,extra", [("default", 0), ("full", 1)])
def test_feature_count_matches_token_count_function(strategy, extra):
    model = tiny_model("llama", vision_feature_select_strategy=strategy)
    features = projected_features(model.get_image_features(_images(2)))
    spec = VisualTokenSpec.from_config(model.config)
    assert features.shape == (2, count_image_tokens(spec, 28, 28), model.config.text_config.hidden_size)
    assert features.shape[1] == tokens_per_image() + extra


def test_siglip_has_no_cls_token_to_drop():
    from transformers import SiglipVisionConfig

    config = tiny_config("llama")
    config.vision_config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
    )
    model = HybridVLMForConditionalGeneration(config)
    assert projected_features(model.get_image_features(_images(1))).shape[1] == tokens_per_image()


def test_placeholder_mismatch_error_states_both_numbers():
    model = tiny_model("llama")
    ids = torch.tensor([prompt(5, "img", 7)[:-2]])  # one placeholder cut off
    with pytest.raises(ValueError) as info:
        model(input_ids=ids, pixel_values=_images(1))
    message = str(info.value)
    assert f"{tokens_per_image() - 1} image placeholder tokens" in message
    assert f"give {tokens_per_image()} feature tokens" in message


def test_placeholders_without_images_are_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=torch.tensor([prompt(5, "img", 7)]))


@pytest.mark.parametrize("lm", CORE_LMS)
def test_left_padded_batch_equals_one_by_one(lm):
    """Padding must not leak into recurrent state: same tokens and logits as each prompt alone."""
    model = tiny_model(lm)
    rows = [prompt(5, 6, "img", 7, 8, 9, 10, 11), prompt(12, "img", 13)]
    pixel_values = _images(2)
    ids, mask = left_pad(rows)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits
    generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, max_new_tokens=6, **GREEDY)
    for i, row in enumerate(rows):
        single_ids = torch.tensor([row])
        with torch.no_grad():
            alone = model(input_ids=single_ids, pixel_values=pixel_values[i : i + 1]).logits
        torch.testing.assert_close(batched[i, -len(row) :], alone[0], atol=1e-5, rtol=1e-4)
        single = model.generate(input_ids=single_ids, pixel_values=pixel_values[i : i + 1], max_new_tokens=6, **GREEDY)
        assert_same_continuation(generated[i, ids.shape[1] :], single[0, len(row) :])


@pytest.mark.parametrize("lm", CORE_LMS)
@pytest.mark.parametrize("mode", ["greedy", "beam", "sample"])
def test_cached_generation_equals_no_cache_reference(lm, mode):
    model = tiny_model(lm)
    ids = torch.tensor([prompt(5, 6, "img", 7, 8)])
    pixel_values = _images(1)
    options = dict(max_new_tokens=8, **GREEDY)
    if mode == "beam":
        options.update(num_beams=3)
    if mode == "sample":
        options.update(do_sample=True, top_k=0, temperature=1.0)
    results = []
    for use_cache in (True, False):
        torch.manual_seed(1234)
        results.append(model.generate(input_ids=ids, pixel_values=pixel_values, use_cache=use_cache, **options))
    assert results[0].tolist() == results[1].tolist()


@pytest.mark.parametrize("lm", CORE_LMS)
def test_continuing_a_conversation_from_the_returned_cache(lm):
    """Second turn on the first turn's cache, passing every image again, equals recomputing from scratch."""
    model = tiny_model(lm)
    pixel_values = _images(2)
    first = model.generate(
        input_ids=torch.tensor([prompt(5, "img", 6, 7)]), pixel_values=pixel_values[:1], max_new_tokens=3,
        return_dict_in_generate=True, **GREEDY,
    )
    second_turn = torch.cat([first.sequences, torch.tensor([prompt(20, "img", 21, 22)])], dim=1)
    options = dict(input_ids=second_turn, pixel_values=pixel_values, max_new_tokens=5, output_scores=True,
                   return_dict_in_generate=True, **GREEDY)
    cached = model.generate(past_key_values=first.past_key_values, **options)
    reference = model.generate(use_cache=False, **options)
    assert cached.sequences.tolist() == reference.sequences.tolist()
    for a, b in zip(cached.scores, reference.scores):
        finite = torch.isfinite(b)
        torch.testing.assert_close(a[finite], b[finite], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lm", CORE_LMS)
def test_gradient_checkpointing_gives_the_same_gradients(lm):
    ids = torch.tensor([prompt(5, "img", 7, 8, 9)])
    pixel_values = _images(1)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(lm).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        flags = {m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")}
        assert flags == {checkpointing}
        model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_moe_router_logits_and_aux_loss_pass_through():
    model = tiny_model("jamba", text={"output_router_logits": True, "router_aux_loss_coef": 0.5})
    ids = torch.tensor([prompt(5, "img", 7, 8)])
    out = model(input_ids=ids, pixel_values=_images(1), labels=ids)
    moe_layers = sum(1 for n in model.config.text_config.layers_num_experts if n > 1)
    assert len([r for r in out.router_logits if r is not None]) == moe_layers
    assert torch.isfinite(out.aux_loss) and out.aux_loss > 0
    plain = F.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, plain + 0.5 * out.aux_loss)


def test_no_split_modules_cover_vision_and_language_layers():
    model = tiny_model("jamba")
    if hasattr(model, "_get_no_split_modules"):  # transformers 4.x
        modules = set(model._get_no_split_modules("auto"))
    else:  # transformers 5 gathers the sub-models' lists in post_init
        modules = set(model._no_split_modules)
    assert {"CLIPEncoderLayer", "JambaAttentionDecoderLayer", "JambaMambaDecoderLayer"} <= modules


@pytest.mark.parametrize("lm", ["jamba", "mamba2"])
def test_ssm_parameters_stay_fp32_when_loading_fp16(lm, tmp_path):
    model = tiny_model(lm)
    model.save_pretrained(tmp_path)
    loaded = HybridVLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16)
    ssm = {n: p.dtype for n, p in loaded.named_parameters() if n.split(".")[-1] in ("A_log", "D", "dt_bias")}
    assert ssm and set(ssm.values()) == {torch.float32}
    assert loaded.lm_head.weight.dtype == torch.float16


@pytest.mark.parametrize("lm", CORE_LMS)
def test_bf16_model_generates_and_matches_fp32_roughly(lm):
    model = tiny_model(lm)
    ids = torch.tensor([prompt(5, "img", 7, 8)])
    pixel_values = _images(1)
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixel_values).logits
        model.to(torch.bfloat16)
        logits = model(input_ids=ids, pixel_values=pixel_values).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.1)
    out = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=4, **GREEDY)
    assert out.shape == (1, ids.shape[1] + 4)


def test_video_frames_fill_video_placeholders_in_order():
    model = tiny_model("llama", video_token_id=98)
    video = torch.randn(1, 3, 3, 28, 28)  # one video, three frames
    frame_tokens = tokens_per_image()
    ids = torch.tensor([[5] + [98] * (3 * frame_tokens) + [6]])
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids=ids, pixel_values_videos=video)
        frames = projected_features(model.get_image_features(video[0]))
    hook.remove()
    torch.testing.assert_close(captured["embeds"][0, 1:-1], frames.reshape(-1, frames.shape[-1]))
    with pytest.raises(ValueError, match=f"give {3 * frame_tokens} feature tokens"):
        model(input_ids=ids[:, :-3], pixel_values_videos=video)


def test_videos_of_different_lengths_as_a_list_and_generation():
    model = tiny_model("jamba", video_token_id=98)
    videos = [torch.randn(2, 3, 28, 28), torch.randn(1, 3, 28, 28)]
    ids = torch.tensor([[5] + [98] * (3 * tokens_per_image()) + [6]])
    cached = model.generate(input_ids=ids, pixel_values_videos=videos, max_new_tokens=4, **GREEDY)
    reference = model.generate(input_ids=ids, pixel_values_videos=videos, max_new_tokens=4, use_cache=False, **GREEDY)
    assert cached.tolist() == reference.tolist()
