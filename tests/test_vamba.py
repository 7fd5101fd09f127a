"""Vamba decoder: weight names, reduction to the source LM, masking semantics, SSM causality, batching, caching,
generation, initialisation, options. Tiny random models; every test runs in about a second on a CPU."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen2Config
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hybrid_vlm import compat
from hybrid_vlm.vamba import (
    VERIFIED_MODEL_TYPES,
    VambaCache,
    VambaLanguageModel,
    VambaOptions,
    init_cross_attention_from_self_attention,
    init_vamba_module,
    init_visual_mixers,
)

HIDDEN = 32
VOCAB = 64
VISUAL_ID = 63
TINY_SSM = dict(ssm_d_state=8, ssm_head_dim=16, ssm_chunk_size=4)
TOL = dict(atol=2e-5, rtol=1e-4)


def text_config(model_type: str = "qwen2", attn: str = "sdpa", **overrides):
    values = dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=VOCAB,
        pad_token_id=0,
    )
    values.update(overrides)
    config = CONFIG_MAPPING[model_type](**values)
    if model_type == "qwen2_vl_text":  # M-RoPE sections must add up to head_dim / 2
        if isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters["mrope_section"] = [2, 3, 3]
        else:
            config.rope_scaling = {"type": "mrope", "rope_type": "default", "mrope_section": [2, 3, 3]}
    config._attn_implementation = attn
    return config


def tiny_lm(model_type: str = "qwen2", seed: int = 0, attn: str = "sdpa", **options) -> VambaLanguageModel:
    torch.manual_seed(seed)
    options = {**TINY_SSM, **options}
    return VambaLanguageModel(text_config(model_type, attn), VambaOptions(**options)).eval()


def run(lm: VambaLanguageModel, embeds: torch.Tensor, visual: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return lm(inputs_embeds=embeds, visual_mask=visual, use_cache=False, **kwargs).last_hidden_state


def layout(*parts: str | int) -> torch.Tensor:
    """A (1, seq) visual mask from parts: an int n is n visual tokens, "t" one text token."""
    flags: list[bool] = []
    for part in parts:
        flags.extend([True] * part if isinstance(part, int) else [False])
    return torch.tensor([flags])


def embeds_for(mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(*mask.shape, HIDDEN, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_weight_names_are_vambas_and_the_lm_keeps_its_own(model_type):
    lm = tiny_lm(model_type)
    keys = set(lm.state_dict())
    base_keys = set(lm.base_model.state_dict())
    assert base_keys <= keys
    bias = model_type == "qwen2"  # Qwen2 has q/k/v biases, Llama none: the cross-attention mirrors that
    for i in range(2):
        layer = lm.layers[i]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert f"layers.{i}.cross_attn.{name}.weight" in keys
            assert getattr(layer.cross_attn, name).weight.shape == getattr(layer.self_attn, name).weight.shape
            has_bias = f"layers.{i}.cross_attn.{name}.bias" in keys
            assert has_bias == (getattr(layer.self_attn, name).bias is not None)
        assert (f"layers.{i}.cross_attn.q_proj.bias" in keys) == bias
        assert f"layers.{i}.alpha" in keys
        assert f"layers.{i}.vision_mixer.norm.weight" in keys
        for name in ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"):
            assert f"layers.{i}.vision_mixer.mixer.{name}" in keys
    extra = {
        k for k in keys - base_keys if not any(f".{part}" in k for part in ("cross_attn", "alpha", "vision_mixer"))
    }
    assert not extra
    assert float(lm.layers[0].alpha.detach()) == 0.5


def test_visual_mixer_none_adds_no_ssm_weights_and_mamba1_has_its_own():
    assert not any("vision_mixer" in k for k in tiny_lm(visual_mixer="none").state_dict())
    keys = set(tiny_lm(visual_mixer="mamba1").state_dict())
    assert {"layers.0.vision_mixer.mixer.x_proj.weight", "layers.0.vision_mixer.mixer.dt_proj.bias"} <= keys


def test_incompatible_and_malformed_lms_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="scales the input embeddings"):
        VambaLanguageModel(text_config("gemma"), VambaOptions(**TINY_SSM))
    with pytest.raises(TypeError, match="text config or a language model"):
        VambaLanguageModel("qwen2")


# ---------------------------------------------------------------------------------------------------------------
# Reduction to the source LM
# ---------------------------------------------------------------------------------------------------------------

_INSTALLED_VERIFIED = [t for t in VERIFIED_MODEL_TYPES if t in CONFIG_MAPPING]


@pytest.mark.parametrize(
    "model_type,attn", [("qwen2", "eager"), ("llama", "eager")] + [(t, "sdpa") for t in _INSTALLED_VERIFIED]
)
def test_without_visual_tokens_the_model_is_the_plain_lm(model_type, attn):
    lm = tiny_lm(model_type, attn=attn)
    embeds = torch.randn(2, 7, HIDDEN)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        reference = lm.base_model(inputs_embeds=embeds).last_hidden_state
        ours = run(lm, embeds, torch.zeros(2, 7, dtype=torch.bool))
        assert torch.equal(ours, reference)
        assert torch.equal(head(ours), head(reference))
        # and with alpha = 1 (Vamba's reduction: a=1 switches the cross-attention off)
        for layer in lm.layers:
            layer.alpha.fill_(1.0)
        assert torch.equal(run(lm, embeds, torch.zeros(2, 7, dtype=torch.bool)), reference)


@pytest.mark.parametrize("model_type", _INSTALLED_VERIFIED)
def test_cross_attention_is_the_lms_self_attention_restricted_to_visual_keys(model_type):
    """What makes "initialise from self-attention" meaningful: same projections, norms and RoPE as the LM's own."""
    lm = tiny_lm(model_type, attn="eager")
    layer = lm.layers[0]
    visual = torch.tensor([[True] * 4 + [False] * 3])
    hidden = layer.input_layernorm(torch.randn(1, 7, HIDDEN))
    positions = torch.arange(7)[None]
    rope = lm.rotary_emb(hidden, positions[None].expand(3, 1, 7) if lm._mrope else positions)
    # text queries see the visual keys only; visual queries see themselves (any non-empty row will do)
    allowed = (visual[:, None, :] & ~visual[:, :, None]) | (torch.eye(7, dtype=torch.bool) & visual[:, :, None])
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        expected = layer.self_attn(hidden_states=hidden, position_embeddings=rope, attention_mask=mask)[0][:, 4:]
        keys, values = layer.cross_attn.project_visual(hidden[:, :4], tuple(r[..., :4, :] for r in rope))
        crossed = layer.cross_attn(hidden[:, 4:], keys, values, None, tuple(r[..., 4:, :] for r in rope))
    torch.testing.assert_close(crossed, expected, **TOL)


def test_cross_attention_without_rope_is_position_free():
    """`cross_attention_rope=False` (the released Vamba): the cross-attention equals the LM's self-attention with an
    identity rotation (cos 1, sin 0), so moving the text to other positions changes nothing."""
    lm = tiny_lm("qwen2", attn="eager", cross_attention_rope=False)
    layer = lm.layers[0]
    hidden = layer.input_layernorm(torch.randn(1, 7, HIDDEN))
    rope = lm.rotary_emb(hidden, torch.arange(7)[None])
    identity = (torch.ones_like(rope[0]), torch.zeros_like(rope[1]))
    visual = torch.tensor([[True] * 4 + [False] * 3])
    allowed = (visual[:, None, :] & ~visual[:, :, None]) | (torch.eye(7, dtype=torch.bool) & visual[:, :, None])
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        expected = layer.self_attn(hidden_states=hidden, position_embeddings=identity, attention_mask=mask)[0][:, 4:]
        keys, values = layer.cross_attn.project_visual(hidden[:, :4], tuple(r[..., :4, :] for r in rope))
        crossed = layer.cross_attn(hidden[:, 4:], keys, values, None, tuple(r[..., 4:, :] for r in rope))
        shifted = lm.rotary_emb(hidden, torch.arange(7)[None] + 11)
        moved = layer.cross_attn(hidden[:, 4:], keys, values, None, tuple(r[..., 4:, :] for r in shifted))
    torch.testing.assert_close(crossed, expected, **TOL)
    torch.testing.assert_close(moved, crossed, **TOL)
    with_rope = tiny_lm("qwen2", attn="eager").layers[0].cross_attn
    assert with_rope.use_rope and not layer.cross_attn.use_rope


@pytest.mark.parametrize("positions", ["text", "sequence"])
def test_alpha_one_ignores_the_visual_tokens_for_text_and_padding_matches_the_lm(positions):
    """With a = 1 the text stream is the LM on the text tokens alone, whatever the visual tokens are: at text-only
    positions 0, 1, 2, ... (the reference's `text_positions="text"`), or at their sequence positions."""
    lm = tiny_lm("llama", attn="eager", text_positions=positions)
    for layer in lm.layers:
        layer.alpha.data.fill_(1.0)
    mask = layout("t", "t", 3, "t", 2, "t", "t")
    embeds = embeds_for(mask)
    text = ~mask[0]
    expected_positions = torch.arange(int(text.sum())) if positions == "text" else torch.arange(10)[text]
    with torch.no_grad():
        reference = lm.base_model(inputs_embeds=embeds[:, text], position_ids=expected_positions[None])
    torch.testing.assert_close(run(lm, embeds, mask)[:, text], reference.last_hidden_state, **TOL)
    # left padding: the plain LM with the same padding mask and position ids gives the same text outputs
    padded = torch.cat([torch.zeros(1, 2, HIDDEN), embeds[:, text]], 1)
    attention = torch.tensor([[0, 0] + [1] * int(text.sum())])
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = lm.base_model(inputs_embeds=padded, attention_mask=attention, position_ids=positions)
    ours = run(lm, padded, torch.zeros_like(attention, dtype=torch.bool), attention_mask=attention)
    torch.testing.assert_close(ours[:, 2:], plain.last_hidden_state[:, 2:], **TOL)


# ---------------------------------------------------------------------------------------------------------------
# Semantics
# ---------------------------------------------------------------------------------------------------------------


CAUSAL = dict(cross_attention_visibility="causal", text_positions="sequence")  # the stricter, non-reference reading


def test_every_text_token_sees_every_visual_token_of_its_sample():
    """The reference: the system prompt before the video cross-attends to it too (and gets the alpha mix)."""
    lm = tiny_lm()
    mask = layout("t", "t", 4, "t", "t")
    embeds = embeds_for(mask)
    perturbed = embeds.clone()
    perturbed[mask] += torch.randn_like(perturbed[mask])
    before, after = run(lm, embeds, mask), run(lm, perturbed, mask)
    for position in (0, 1, 6, 7):
        assert not torch.allclose(before[:, position], after[:, position], atol=1e-4)


def test_text_outputs_do_not_depend_on_where_the_visual_tokens_sit():
    """All-visible cross-attention without RoPE and text-only positions (the released Vamba): moving the video
    within the prompt changes no text output, as the reference has no visual tokens in its text sequence."""
    lm = tiny_lm(cross_attention_rope=False)
    first, second = layout("t", 4, "t", "t", "t"), layout("t", "t", "t", 4, "t")
    text, visual = torch.randn(1, 4, HIDDEN), torch.randn(1, 4, HIDDEN)

    def place(mask):
        embeds = torch.zeros(1, mask.shape[1], HIDDEN)
        embeds[0, mask[0]], embeds[0, ~mask[0]] = visual[0], text[0]
        return embeds

    one, two = run(lm, place(first), first), run(lm, place(second), second)
    torch.testing.assert_close(one[~first], two[~second], **TOL)
    torch.testing.assert_close(one[first], two[second], **TOL)


def test_visual_stream_norm_replaces_the_visual_stream_by_its_norm():
    """`visual_stream_norm` (the reference's cross_attn_use_layer_norm): each layer's input norm is applied to the
    visual stream itself; without an SSM block the visual output is the norms applied in turn."""
    lm = tiny_lm(visual_mixer="none", visual_stream_norm=True)
    mask = layout("t", 3, "t")
    embeds = embeds_for(mask)
    expected = embeds[mask]
    with torch.no_grad():
        for layer in lm.layers:
            expected = layer.input_layernorm(expected)
    torch.testing.assert_close(run(lm, embeds, mask)[mask], expected, **TOL)
    kv_only = tiny_lm(visual_mixer="none")
    assert torch.equal(run(kv_only, embeds, mask)[mask], embeds[mask])
    with pytest.raises(ValueError, match="needs cross_attention_kv_norm"):
        VambaOptions(visual_stream_norm=True, cross_attention_kv_norm=False)


def test_visual_pre_norm_eps_is_mamba_ssms_default_unless_asked_for_the_lms():
    assert tiny_lm().layers[0].vision_mixer.norm.eps == 1e-5
    lm = tiny_lm(ssm_norm_eps=None)
    assert lm.layers[0].vision_mixer.norm.eps == lm.config.rms_norm_eps != 1e-5


def test_causal_visibility_text_before_the_video_never_sees_it_and_text_after_does():
    lm = tiny_lm(**CAUSAL)
    mask = layout("t", "t", 4, "t", "t")
    embeds = embeds_for(mask)
    perturbed = embeds.clone()
    perturbed[mask] += torch.randn_like(perturbed[mask])
    before, after = run(lm, embeds, mask), run(lm, perturbed, mask)
    assert torch.equal(before[:, :2], after[:, :2])  # the system prompt is untouched, bit for bit
    assert not torch.allclose(before[:, 6:], after[:, 6:], atol=1e-4)


def test_causal_visibility_text_between_two_videos_sees_only_the_first():
    lm = tiny_lm(**CAUSAL)
    mask = layout("t", 3, "t", 3, "t")
    embeds = embeds_for(mask)
    perturbed = embeds.clone()
    perturbed[0, 5:8] += 1.0  # the second video
    before, after = run(lm, embeds, mask), run(lm, perturbed, mask)
    assert torch.equal(before[:, :5], after[:, :5])  # first video and the text between the videos
    assert not torch.allclose(before[:, 8], after[:, 8], atol=1e-4)


@pytest.mark.parametrize("mixer", ["mamba2", "mamba1"])
def test_a_later_visual_token_never_changes_an_earlier_output(mixer):
    """(With causal visibility, so that the text token in front is an earlier output too; the visual stream is
    causal under either visibility.)"""
    lm = tiny_lm(visual_mixer=mixer, **CAUSAL)
    mask = layout("t", 6, "t")
    embeds = embeds_for(mask)
    for changed in (2, 4, 5):  # visual tokens 1..6 sit at positions 1..6; chunk 4 puts 4 and 5 across a boundary
        perturbed = embeds.clone()
        perturbed[0, changed] += 1.0
        before, after = run(lm, embeds, mask), run(lm, perturbed, mask)
        assert torch.equal(before[:, :changed], after[:, :changed])
        assert not torch.allclose(before[:, changed:], after[:, changed:], atol=1e-4)


def test_the_visual_stream_is_updated_by_the_ssm_and_only_by_it():
    mask = layout("t", 4, "t")
    embeds = embeds_for(mask)
    assert torch.equal(run(tiny_lm(visual_mixer="none"), embeds, mask)[mask], embeds[mask])
    assert not torch.allclose(run(tiny_lm(), embeds, mask)[mask], embeds[mask])


def _left_pad(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(m.shape[1] for _, m in rows)
    embeds, masks, attention = [], [], []
    for emb, mask in rows:
        pad = width - mask.shape[1]
        embeds.append(torch.cat([torch.zeros(1, pad, HIDDEN), emb], 1))
        masks.append(torch.cat([torch.zeros(1, pad, dtype=torch.bool), mask], 1))
        attention.append(torch.tensor([[0] * pad + [1] * mask.shape[1]]))
    return torch.cat(embeds), torch.cat(masks), torch.cat(attention)


ROWS = [layout("t", 5, "t", "t"), layout("t", "t", 2, "t", 3, "t"), layout("t", "t", "t")]


@pytest.mark.parametrize("mixer", ["mamba2", "mamba1"])
def test_left_padded_batch_with_different_visual_lengths_equals_one_by_one(mixer):
    lm = tiny_lm(visual_mixer=mixer)
    rows = [(embeds_for(m, seed=i), m) for i, m in enumerate(ROWS)]
    embeds, mask, attention = _left_pad(rows)
    batched = run(lm, embeds, mask, attention_mask=attention)
    for i, (emb, m) in enumerate(rows):
        single = run(lm, emb, m)
        torch.testing.assert_close(batched[i, -m.shape[1] :], single[0], **TOL)


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------


def _prefill_and_decode(lm, embeds, mask, attention, steps: list[torch.Tensor], cache=None):
    """Prefill, then one text token per step; returns each step's output and the cache."""
    with torch.no_grad():
        out = lm(
            inputs_embeds=embeds, visual_mask=mask, attention_mask=attention, use_cache=True, past_key_values=cache
        )
    cache, outputs = out.past_key_values, [out.last_hidden_state]
    for step in steps:
        attention = torch.cat([attention, torch.ones(attention.shape[0], 1, dtype=attention.dtype)], 1)
        with torch.no_grad():
            out = lm(
                inputs_embeds=step,
                visual_mask=torch.zeros(step.shape[:2], dtype=torch.bool),
                attention_mask=attention,
                past_key_values=cache,
                use_cache=True,
            )
        outputs.append(out.last_hidden_state)
    return outputs, cache, attention


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefill_then_cached_decode_equals_full_recompute_at_every_step(attn):
    lm = tiny_lm(attn=attn)
    embeds, mask, attention = _left_pad([(embeds_for(m, seed=i), m) for i, m in enumerate(ROWS)])
    steps = [torch.randn(3, 1, HIDDEN, generator=torch.Generator().manual_seed(10 + s)) for s in range(4)]
    outputs, cache, _ = _prefill_and_decode(lm, embeds, mask, attention, steps)
    assert isinstance(cache, VambaCache)
    assert cache.get_seq_length() == embeds.shape[1] + len(steps)
    full, full_mask, full_attention = embeds, mask, attention
    for step, output in zip(steps, outputs[1:]):
        full = torch.cat([full, step], 1)
        full_mask = torch.cat([full_mask, torch.zeros(3, 1, dtype=torch.bool)], 1)
        full_attention = torch.cat([full_attention, torch.ones(3, 1, dtype=torch.long)], 1)
        reference = run(lm, full, full_mask, attention_mask=full_attention)
        torch.testing.assert_close(output[:, -1], reference[:, -1], **TOL)


@pytest.mark.parametrize("keep_ssm_states", [True, False])
def test_continuation_chunk_with_new_visual_tokens_equals_recompute(keep_ssm_states):
    """Only under causal visibility: with "all" (the reference) earlier, cached text cannot see later images."""
    lm = tiny_lm(**CAUSAL)
    first = layout("t", 3, "t", "t")
    second = layout("t", 2, "t", "t")  # a new turn with a new image
    embeds = embeds_for(torch.cat([first, second], 1))
    full = run(lm, embeds, torch.cat([first, second], 1))
    split = first.shape[1]
    with torch.no_grad():
        cache = VambaCache(keep_ssm_states=keep_ssm_states)
        head = lm(inputs_embeds=embeds[:, :split], visual_mask=first, past_key_values=cache, use_cache=True)
        torch.testing.assert_close(head.last_hidden_state, full[:, :split], **TOL)
        if not keep_ssm_states:
            with pytest.raises(ValueError, match="keep_ssm_states"):
                lm(inputs_embeds=embeds[:, split:], visual_mask=second, past_key_values=cache, use_cache=True)
            return
        tail = lm(inputs_embeds=embeds[:, split:], visual_mask=second, past_key_values=cache, use_cache=True)
        step = lm(
            inputs_embeds=torch.ones(1, 1, HIDDEN),
            visual_mask=torch.zeros(1, 1, dtype=torch.bool),
            past_key_values=cache,
            use_cache=True,
        )
    torch.testing.assert_close(tail.last_hidden_state, full[:, split:], **TOL)
    assert cache.get_seq_length() == embeds.shape[1] + 1
    everything = torch.cat([embeds, torch.ones(1, 1, HIDDEN)], 1)
    reference = run(lm, everything, torch.cat([first, second, torch.zeros(1, 1, dtype=torch.bool)], 1))
    torch.testing.assert_close(step.last_hidden_state[:, -1], reference[:, -1], **TOL)


def test_text_only_continuation_chunk_on_a_batch_equals_recompute():
    lm = tiny_lm()
    embeds, mask, attention = _left_pad([(embeds_for(m, seed=i), m) for i, m in enumerate(ROWS)])
    chunk = torch.randn(3, 3, HIDDEN)
    with torch.no_grad():
        cache = lm(inputs_embeds=embeds, visual_mask=mask, attention_mask=attention, use_cache=True).past_key_values
        full_attention = torch.cat([attention, torch.ones(3, 3, dtype=torch.long)], 1)
        tail = lm(
            inputs_embeds=chunk,
            visual_mask=torch.zeros(3, 3, dtype=torch.bool),
            attention_mask=full_attention,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
    reference = run(
        lm,
        torch.cat([embeds, chunk], 1),
        torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1),
        attention_mask=full_attention,
    )
    torch.testing.assert_close(tail, reference[:, -3:], **TOL)


def test_beam_reorder_and_batch_repeat_follow_the_rows():
    lm = tiny_lm()
    rows = [(embeds_for(m, seed=i), m) for i, m in enumerate(ROWS[:2])]
    embeds, mask, attention = _left_pad(rows)
    step = torch.randn(2, 1, HIDDEN)
    swapped_step = step.flip(0)
    _, cache, next_attention = _prefill_and_decode(lm, embeds, mask, attention, [])
    _, reference_cache, _ = _prefill_and_decode(lm, embeds.flip(0), mask.flip(0), attention.flip(0), [])
    cache.reorder_cache(torch.tensor([1, 0]))
    extended = torch.cat([next_attention.flip(0), torch.ones(2, 1, dtype=torch.long)], 1)
    with torch.no_grad():
        ours = lm(
            inputs_embeds=swapped_step,
            visual_mask=torch.zeros(2, 1, dtype=torch.bool),
            attention_mask=extended,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        reference = lm(
            inputs_embeds=swapped_step,
            visual_mask=torch.zeros(2, 1, dtype=torch.bool),
            attention_mask=extended,
            past_key_values=reference_cache,
            use_cache=True,
        ).last_hidden_state
    torch.testing.assert_close(ours, reference, **TOL)

    _, cache, _ = _prefill_and_decode(lm, embeds, mask, attention, [])
    cache.batch_repeat_interleave(2)
    assert cache.visual_keys[0].shape[0] == 4 and cache.text_valid.shape[0] == 4
    cache.batch_select_indices(torch.tensor([0, 2]))
    assert cache.ssm_states[1].ssm_state.shape[0] == 2 and cache.layers[0].keys.shape[0] == 2


def test_crop_rolls_back_text_tokens_but_never_the_visual_stream():
    lm = tiny_lm()
    mask = layout("t", 3, "t")
    embeds = embeds_for(mask)
    steps = [torch.randn(1, 1, HIDDEN) for _ in range(3)]
    outputs, cache, attention = _prefill_and_decode(lm, embeds, mask, torch.ones(1, 5, dtype=torch.long), steps)
    cache.crop(-2)  # transformers' "remove two tokens" (both lines); crop(n >= 0) keeps n tokens (4.x style)
    assert cache.get_seq_length() == 6 and cache.text_length() == 3
    with torch.no_grad():
        again = lm(
            inputs_embeds=steps[1],
            visual_mask=torch.zeros(1, 1, dtype=torch.bool),
            attention_mask=attention[:, :7],
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
    torch.testing.assert_close(again, outputs[2], **TOL)
    with pytest.raises(ValueError, match="visual stream cannot be rewound"):
        cache.crop(3)


def test_a_nonempty_foreign_cache_is_refused_and_an_empty_one_replaced():
    from transformers import DynamicCache

    lm = tiny_lm()
    mask = layout("t", 2, "t")
    with torch.no_grad():
        out = lm(inputs_embeds=embeds_for(mask), visual_mask=mask, past_key_values=DynamicCache(), use_cache=True)
        assert isinstance(out.past_key_values, VambaCache)
        foreign = DynamicCache()
        foreign.update(torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, 2, 16), 0)
        with pytest.raises(ValueError, match="needs a VambaCache"):
            lm(inputs_embeds=embeds_for(mask), visual_mask=mask, past_key_values=foreign, use_cache=True)


# ---------------------------------------------------------------------------------------------------------------
# Generation through transformers' generate() (greedy, beam search) on the installed line
# ---------------------------------------------------------------------------------------------------------------


class _TinyVambaForCausalLM(PreTrainedModel, GenerationMixin):
    """Minimal generate()-able wrapper: token VISUAL_ID marks a visual position (its embedding is the 'feature')."""

    config_class = Qwen2Config
    base_model_prefix = "model"
    _supports_sdpa = True

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.model = VambaLanguageModel(config, VambaOptions(**TINY_SSM))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        return_dict=None,
        **kwargs,
    ):
        outputs = self.model(
            input_ids=input_ids,
            visual_mask=input_ids == VISUAL_ID,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=compat.take_cache(kwargs, past_key_values=past_key_values),  # generate()'s name varies
            use_cache=use_cache,
        )
        return CausalLMOutputWithPast(
            logits=self.lm_head(outputs.last_hidden_state), **compat.cache_output_kwargs(compat.output_cache(outputs))
        )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_cache_equals_generate_without(num_beams):
    torch.manual_seed(0)
    model = _TinyVambaForCausalLM(text_config("qwen2", "sdpa")).eval()
    ids = torch.tensor([[0, 0, 5, VISUAL_ID, VISUAL_ID, VISUAL_ID, 7, 8], [9, VISUAL_ID, VISUAL_ID, 4, 5, 6, 7, 8]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    common = dict(max_new_tokens=5, do_sample=False, num_beams=num_beams, pad_token_id=0, suppress_tokens=[VISUAL_ID])
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=attention, use_cache=True, **common)
        uncached = model.generate(input_ids=ids, attention_mask=attention, use_cache=False, **common)
        single = model.generate(input_ids=ids[:1, 2:], attention_mask=attention[:1, 2:], use_cache=True, **common)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[0, 2:], single[0])


# ---------------------------------------------------------------------------------------------------------------
# Options and their effect
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options", [dict(mix="sum"), dict(visual_mixer="none"), dict(visual_mixer="mamba1"), dict(alpha_init=0.2)]
)
def test_variants_run_and_differ_from_the_default(options):
    mask = layout("t", 4, "t", "t")
    embeds = embeds_for(mask)
    default = run(tiny_lm(), embeds, mask)
    variant = run(tiny_lm(**options), embeds, mask)
    assert torch.isfinite(variant).all()
    assert not torch.allclose(default[:, 5:], variant[:, 5:], atol=1e-4)


def test_alpha_is_clamped_to_the_unit_interval():
    mask = layout("t", 4, "t", "t")
    embeds = embeds_for(mask)
    lm = tiny_lm()
    outputs = {}
    for value in (1.7, 1.0, -0.3, 0.0):
        for layer in lm.layers:
            layer.alpha.data.fill_(value)
        outputs[value] = run(lm, embeds, mask)
    assert torch.equal(outputs[1.7], outputs[1.0])
    assert torch.equal(outputs[-0.3], outputs[0.0])


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_cross_attention_starts_as_an_exact_copy_of_self_attention(model_type):
    lm = tiny_lm(model_type)
    for layer in lm.layers:  # perturb, then copy again: the copy must be bit-exact (weights, biases, q/k norms)
        for parameter in layer.cross_attn.parameters():
            parameter.data.normal_()
    assert init_cross_attention_from_self_attention(lm) == 2
    for layer in lm.layers:
        source = dict(layer.self_attn.named_parameters())
        copied = dict(layer.cross_attn.named_parameters())
        assert copied and set(copied) <= set(source)
        for name, parameter in copied.items():
            assert torch.equal(parameter, source[name]), name
    random = tiny_lm(model_type, cross_attention_init="random")
    assert not torch.equal(random.layers[0].cross_attn.q_proj.weight, random.layers[0].self_attn.q_proj.weight)


def test_visual_mixer_init_follows_the_mamba_reference():
    lm = tiny_lm()
    assert init_visual_mixers(lm) == 2
    mixer = lm.layers[0].vision_mixer.mixer
    A = torch.exp(mixer.A_log)
    assert A.dtype == torch.float32 and bool(((A >= 1) & (A <= 16)).all())
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert bool(((dt >= 1e-4 - 1e-7) & (dt <= 0.1 + 1e-6)).all())
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    bound = (1.0 / mixer.out_proj.in_features) ** 0.5 / 2**0.5  # kaiming bound / sqrt(num_layers = 2)
    assert float(mixer.out_proj.weight.detach().abs().max()) <= bound + 1e-6


def test_gradients_reach_cross_attention_alpha_and_the_visual_mixer():
    lm = tiny_lm().train()
    mask = layout("t", 4, "t", "t")
    embeds = embeds_for(mask)
    # the last layer's SSM output feeds nothing the text reads, so the loss also takes the visual outputs
    out = lm(inputs_embeds=embeds, visual_mask=mask, use_cache=False).last_hidden_state
    (out[:, 5:].pow(2).mean() + out[mask].pow(2).mean()).backward()
    for i, layer in enumerate(lm.layers):
        for name, parameter in [
            *layer.cross_attn.named_parameters(),
            ("alpha", layer.alpha),
            *layer.vision_mixer.named_parameters(),
        ]:
            assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), f"layer {i}: {name}"


def test_gradient_checkpointing_gives_the_same_gradients():
    mask = layout("t", 4, "t", "t")
    embeds = embeds_for(mask)
    grads = []
    for checkpointing in (False, True):
        lm = tiny_lm().train()
        for layer in lm.layers:
            layer.gradient_checkpointing = checkpointing
            layer._gradient_checkpointing_func = functools.partial(
                torch.utils.checkpoint.checkpoint, use_reentrant=False
            )
        lm(inputs_embeds=embeds, visual_mask=mask).last_hidden_state[:, 5:].sum().backward()
        grads.append(lm.layers[0].cross_attn.k_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_init_hook_initialises_a_meta_built_model_like_the_constructor():
    """What a PreTrainedModel's `_init_weights` does for weights a checkpoint lacks (built on the meta device)."""
    with torch.device("meta"):
        lm = VambaLanguageModel(text_config(), VambaOptions(alpha_init=0.25, **TINY_SSM))
    lm.to_empty(device="cpu")
    handled = {type(m).__name__ for m in lm.modules() if init_vamba_module(m, lm.options, lm.num_layers)}
    assert handled == {"VambaCrossAttention", "SSMBlock", "Qwen2DecoderLayer"}
    assert float(lm.layers[1].alpha.detach()) == 0.25
    mixer = lm.layers[0].vision_mixer.mixer
    assert torch.equal(mixer.D, torch.ones_like(mixer.D)) and bool((torch.exp(mixer.A_log) >= 1).all())
    assert torch.isfinite(lm.layers[0].cross_attn.q_proj.weight).all()


def test_hidden_states_cover_every_layer_at_full_length():
    lm = tiny_lm()
    mask = layout("t", 3, "t")
    embeds = embeds_for(mask)
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, visual_mask=mask, use_cache=False, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and all(h.shape == embeds.shape for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], embeds) and torch.equal(out.hidden_states[-1], out.last_hidden_state)


def test_options_validate_and_round_trip():
    options = VambaOptions(alpha_init=0.3, mix="sum", visual_mixer="mamba1", ssm_d_state=4)
    assert VambaOptions.from_dict(options.to_dict()) == options
    with pytest.raises(ValueError, match="alpha_init must be in"):
        VambaOptions(alpha_init=1.5)
    with pytest.raises(ValueError, match="visual_mixer must be one of"):
        VambaOptions(visual_mixer="mamba3")
    with pytest.raises(ValueError, match="mix must be one of"):
        VambaOptions(mix="gate")
    with pytest.raises(ValueError, match="Unknown Vamba option"):
        VambaOptions.from_dict({"alpha": 0.5})
    with pytest.raises(ValueError, match="ssm_chunk_size must be a positive integer"):
        VambaOptions(ssm_chunk_size=0)


def test_input_errors_are_clear():
    lm = tiny_lm()
    embeds = torch.randn(1, 4, HIDDEN)
    with pytest.raises(ValueError, match="visual_mask must be"):
        lm(inputs_embeds=embeds, visual_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D padding mask"):
        lm(inputs_embeds=embeds, attention_mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="attention_mask has 3 columns"):
        lm(inputs_embeds=embeds, attention_mask=torch.ones(1, 3))


def test_grid_key_positions_rotate_keys_by_qwen2vl_mrope_and_cache_them_unrotated():
    """`cross_attention_key_positions="grid"` (the reference's cross_attn_use_position_embeddings): keys rotated by
    Qwen2-VL's multimodal RoPE at their (t, h, w), in the forward that brings them; the cache keeps them unrotated."""
    from hybrid_vlm.vamba import _generic_rope

    lm = tiny_lm(cross_attention_key_positions="grid", mrope_section=[2, 3, 3])
    mask = layout("t", 4, "t")
    embeds = embeds_for(mask)
    grid = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1], [0, 1, 0, 1]])  # t, h, w of the four visual tokens
    positions = torch.zeros(3, 1, 6, dtype=torch.long)
    positions[:, 0, 1:5] = grid
    visual = embeds[:, 1:5]
    # M-RoPE by definition: frequency pair j turns by (t, h or w, by its section) * inv_freq[j], then rotate-half.
    inv_freq = lm.rotary_emb.inv_freq.float()
    source = torch.tensor([0] * 2 + [1] * 3 + [2] * 3)
    angles = grid[source].T.float() * inv_freq  # (4 tokens, 8 pairs)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    keys = torch.randn(1, 1, 4, 16)
    first, second = keys[..., :8], keys[..., 8:]
    expected = keys * cos + torch.cat([-second, first], -1) * sin
    ours_cos, ours_sin = lm._grid_rope(visual, grid[:, None])
    torch.testing.assert_close(_generic_rope(keys, ours_cos, ours_sin), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        out = lm(inputs_embeds=embeds, visual_mask=mask, visual_positions=positions, use_cache=True)
        layer = lm.layers[0]
        raw = layer.cross_attn.k_proj(layer.input_layernorm(visual)).view(1, 4, -1, 16).transpose(1, 2)
    torch.testing.assert_close(out.past_key_values.visual_keys[0], raw)
    moved = positions.clone()
    moved[0, 0, 1:5] = torch.tensor([3, 2, 1, 0])
    here, there = run(lm, embeds, mask, visual_positions=positions), run(lm, embeds, mask, visual_positions=moved)
    assert (here[~mask] - there[~mask]).abs().max() > 1e-5  # the text reads the keys at their grid places
    assert torch.equal(here[mask], there[mask])  # the visual stream has no positions
    with pytest.raises(ValueError, match="needs visual_positions"):
        run(lm, embeds, mask)
    with pytest.raises(ValueError, match="mrope_section"):
        VambaOptions(cross_attention_key_positions="grid")
