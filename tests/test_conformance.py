"""What transformers' own common model tests expect of a model class, checked on ours with tiny models.

Each test reproduces one way HybridVLM differed from transformers' LLaVA-style models (keyword outputs, tuples,
cache length, class attributes, feature API, assisted generation, fp16 loading, padded cache continuations).
"""

from __future__ import annotations

import pytest
import torch
from conftest import CORE_LMS, prompt, tiny_model

from hybrid_vlm import compat


def test_keep_in_fp32_modules_is_a_set_that_combines_with_the_strict_set():
    """transformers 5 keeps both lists as sets and joins them; 4.x iterates them."""
    for lm, expected in (("mamba2", {"A_log", "D", "dt_bias"}), ("llama", set())):
        model = tiny_model(lm)
        assert isinstance(model._keep_in_fp32_modules, set)
        assert model._keep_in_fp32_modules >= expected
        assert model._keep_in_fp32_modules & set(model._keep_in_fp32_modules_strict or set()) == set()


def test_lm_head_has_the_tensor_parallel_style_of_transformers_causal_lms():
    from transformers import LlamaForCausalLM

    model = tiny_model("llama")
    assert type(model)._tp_plan == {"lm_head": compat.LM_HEAD_TP_STYLE}
    assert compat.LM_HEAD_TP_STYLE == LlamaForCausalLM._tp_plan["lm_head"]
    assert model.supports_tp_plan


def _bare_causal_lm(model):
    """The model's LM as transformers' own causal-LM class, with the same weights."""
    from transformers import AutoModelForCausalLM

    from hybrid_vlm.compat import disable_unusable_mixer_kernels

    bare = AutoModelForCausalLM.from_config(model.config.text_config)
    bare.base_model.load_state_dict(model.model.language_model.state_dict())
    bare.lm_head.load_state_dict(model.lm_head.state_dict())
    disable_unusable_mixer_kernels(bare)  # as HybridVLM does (4.x Jamba's kernels need CUDA)
    return bare.train(model.training)


@pytest.mark.parametrize("lm", CORE_LMS)
def test_output_flags_reach_the_language_model(lm):
    """LMs that read output_attentions / output_hidden_states from **kwargs (Llama; Jamba on 5.x) return them too."""
    model = tiny_model(lm)
    model.set_attn_implementation("eager")
    bare = _bare_causal_lm(model)
    bare.set_attn_implementation("eager")
    ids = torch.tensor([prompt(5, 6, 7, 8)])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        ref = bare(input_ids=ids, output_attentions=True, output_hidden_states=True)
    assert out.hidden_states is not None and len(out.hidden_states) == len(ref.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1])
    if lm == "mamba2":
        assert not out.attentions
    else:
        assert len([a for a in out.attentions if a is not None]) == len([a for a in ref.attentions if a is not None])
        assert len(out.attentions) > 0


@pytest.mark.parametrize("from_config", [False, True])
def test_moe_aux_loss_in_training_matches_the_bare_causal_lm(from_config):
    """Jamba's load-balancing loss is part of the training loss, asked for by argument or by the LM config."""
    model = tiny_model("jamba", text={"output_router_logits": from_config}).train()
    bare = _bare_causal_lm(model)
    ids = torch.tensor([prompt(5, 6, 7, 8, 9, 10)])
    flag = None if from_config else True
    out = model(input_ids=ids, labels=ids, output_router_logits=flag)
    ref = bare(input_ids=ids, labels=ids, output_router_logits=flag)
    assert ref.aux_loss is not None and out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, ref.aux_loss)
    torch.testing.assert_close(out.loss, ref.loss)
    assert len(out.router_logits) == len([r for r in ref.router_logits if r is not None])


@pytest.mark.parametrize("where", ["argument", "config"])
def test_return_dict_false_gives_tuples_of_the_set_fields(where):
    model = tiny_model("llama")
    ids = torch.tensor([prompt(5, "img", 7, 8)])
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixel_values, labels=ids)
        base_reference = model.model(input_ids=ids, pixel_values=pixel_values)
        if where == "config":
            model.config.return_dict = False
            kwargs = {}
        else:
            kwargs = {"return_dict": False}
        full = model(input_ids=ids, pixel_values=pixel_values, labels=ids, **kwargs)
        base = model.model(input_ids=ids, pixel_values=pixel_values, **kwargs)
    for output, expected in ((full, reference), (base, base_reference)):
        assert isinstance(output, tuple)
        assert len(output) == len(expected.to_tuple())
        torch.testing.assert_close(output[0], expected[0])
    torch.testing.assert_close(full[1], reference.logits)
    torch.testing.assert_close(base[0], base_reference.last_hidden_state)


@pytest.mark.parametrize("lm", CORE_LMS)
def test_generate_runs_the_prompt_in_one_forward_pass(lm):
    """A fresh cache holds no tokens, so the prompt is a prefill (one LM call), not a token-by-token continuation."""
    from hybrid_vlm.caching import cache_seq_length, new_language_model_cache

    model = tiny_model(lm)
    text_config = model.config.text_config
    for batch in (1, 3):
        fresh = new_language_model_cache(text_config, batch, torch.float32, torch.device("cpu"))
        assert cache_seq_length(fresh) == 0
    ids = torch.tensor([prompt(5, 6, "img", 7, 8)] * 3)
    calls = []
    hook = model.model.language_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    generated = model.generate(
        input_ids=ids, pixel_values=torch.randn(3, 3, 28, 28), max_new_tokens=3, min_new_tokens=3, do_sample=False
    )
    hook.remove()
    assert generated.shape[1] == ids.shape[1] + 3
    assert len(calls) == 3  # the prefill and two decode steps


@pytest.mark.parametrize(
    "model_type,extra", [("jamba", {"attn_layer_period": 2, "attn_layer_offset": 1}), ("zamba", {})]
)
def test_a_fresh_hybrid_cache_holds_no_tokens(model_type, extra):
    from transformers import AutoConfig

    from hybrid_vlm.caching import cache_seq_length, new_language_model_cache

    text_config = AutoConfig.for_model(
        model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, **extra,
    )
    cache = new_language_model_cache(text_config, 3, torch.float32, torch.device("cpu"))
    assert cache_seq_length(cache) == 0


@pytest.mark.parametrize("lm", ["jamba", "mamba2"])
def test_a_model_loaded_in_fp16_runs_with_its_ssm_parameters_in_fp32(lm, tmp_path):
    """The SSM parameters stay fp32 (the scan's precision); every other layer, the mixers' projections included,
    runs in fp16 as in the bare LM loaded the same way."""
    from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration

    model = tiny_model(lm)
    model.save_pretrained(tmp_path)
    loaded = HybridVLMForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert loaded.model.language_model.get_input_embeddings().weight.dtype == torch.float16
    assert {p.dtype for n, p in loaded.named_parameters() if n.endswith(".A_log")} == {torch.float32}
    ids = torch.tensor([prompt(5, 6, 7, 8)])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        logits = loaded(input_ids=ids).logits
        generated = loaded.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert logits.dtype == torch.float16
    torch.testing.assert_close(logits.float(), reference, atol=2e-2, rtol=2e-2)
    assert generated.shape[1] == ids.shape[1] + 3


@pytest.mark.parametrize("lm", ["mamba2", "jamba"])
def test_padding_inside_a_cache_continuation_leaves_no_trace(lm):
    """A new turn whose rows are left-padded to one length: the padded tokens must not reach the recurrent state,
    so every row's logits equal that row's own full forward (no padding, no cache)."""
    from conftest import PAD_ID

    model = tiny_model(lm)
    first = [[5, 6, 7, 8], [12, 13, 14, 15]]
    second = [[9, 10, 11], [16]]
    width = max(len(r) for r in second)
    turn_ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in second])
    turn_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in second])
    with torch.no_grad():
        prefill = model(input_ids=torch.tensor(first), use_cache=True)
        mask = torch.cat([torch.ones(2, 4, dtype=torch.long), turn_mask], dim=1)
        cache = {compat.GENERATE_CACHE_NAME: compat.output_cache(prefill)}
        turn = model(input_ids=turn_ids, attention_mask=mask, use_cache=True, **cache)
        for row in range(2):
            alone = model(input_ids=torch.tensor([first[row] + second[row]])).logits[0, len(first[row]) :]
            torch.testing.assert_close(turn.logits[row, width - len(second[row]) :], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("assistant_lm", ["llama", "jamba"])
def test_assisted_generation_with_a_hybrid_vlm_assistant_equals_greedy(assistant_lm):
    """The assistant's first forward of a prompt carries the images, though generate() marks it as a later
    iteration; greedy assisted decoding then gives the main model's greedy tokens."""
    from conftest import GREEDY

    cache_class = compat.legacy_cache_class(assistant_lm)
    if cache_class is not None and not hasattr(cache_class, "crop"):
        pytest.skip("this transformers' own cache class for the LM cannot be cropped (nor assist for the bare LM)")
    model = tiny_model("llama")
    assistant = tiny_model(assistant_lm, seed=1)
    ids = torch.tensor([prompt(5, 6, "img", 7, 8)])
    pixel_values = torch.randn(1, 3, 28, 28)
    greedy = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=8, **GREEDY)
    assisted = model.generate(
        input_ids=ids, pixel_values=pixel_values, max_new_tokens=8, assistant_model=assistant, **GREEDY
    )
    assert assisted.tolist() == greedy.tolist()


def _tiny_video_model():
    return tiny_model("llama", video_token_id=98)


@pytest.mark.parametrize("return_dict", [True, False, None])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_feature_getters_answer_as_transformers_vlms_do(kind, return_dict):
    """5.x: a BaseModelOutputWithPooling (pooler_output = the projected features per item, last_hidden_state = the
    tower's), a tuple for return_dict=False (argument or config). 4.x: the features themselves, as LLaVA-NeXT."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = _tiny_video_model()
    pixels = torch.randn(2, 3, 28, 28) if kind == "image" else torch.randn(2, 3, 3, 28, 28)
    getter = getattr(model, f"get_{kind}_features")
    internal = getattr(model.model, f"_{kind}_features")
    with torch.no_grad():
        expected = internal(pixels)
        if return_dict is not None:
            model.config.return_dict = return_dict
        output = getter(pixels)
        by_argument = getter(pixels, return_dict=False)
    vision_width = model.config.vision_config.hidden_size
    if not compat.FEATURE_GETTERS_RETURN_MODEL_OUTPUT:
        for features in (output, by_argument):
            assert len(features) == 2
            torch.testing.assert_close(torch.stack(list(features)), torch.stack(list(expected)))
        return
    assert isinstance(by_argument, tuple)
    if return_dict is False:
        assert isinstance(output, tuple)
        output = BaseModelOutputWithPooling(last_hidden_state=output[0], pooler_output=output[1])
    else:
        assert isinstance(output, BaseModelOutputWithPooling)
        assert output.hidden_states is None and output.attentions is None  # only on request
    frames = 1 if kind == "image" else 3
    assert output.last_hidden_state.shape[0] == 2 * frames and output.last_hidden_state.shape[-1] == vision_width
    assert len(output.pooler_output) == 2 and output.pooler_output[0].ndim == 2
    torch.testing.assert_close(torch.stack(list(output.pooler_output)), torch.stack(list(expected)))
    torch.testing.assert_close(compat.projected_features(by_argument), output.pooler_output)


@pytest.mark.skipif(not compat.FEATURE_GETTERS_RETURN_MODEL_OUTPUT, reason="4.x feature getters return features")
@pytest.mark.parametrize("where", ["argument", "config"])
def test_feature_getters_return_the_towers_hidden_states_and_attentions_on_request(where):
    model = _tiny_video_model()
    model.set_attn_implementation("eager")
    pixels = torch.randn(2, 3, 28, 28)
    layers = model.config.vision_config.num_hidden_layers
    with torch.no_grad():
        plain = model.get_image_features(pixels)
        if where == "config":
            model.config.output_hidden_states = model.config.output_attentions = True
            output = model.get_image_features(pixels)
        else:
            output = model.get_image_features(pixels, output_hidden_states=True, output_attentions=True)
        video = model.get_video_features(pixels[:, None], output_hidden_states=True, output_attentions=True)
    for result in (output, video):
        assert len(result.hidden_states) == layers + 1
        assert len(result.attentions) == layers and result.attentions[0].shape[0] == 2
    torch.testing.assert_close(output.pooler_output, plain.pooler_output)
    torch.testing.assert_close(output.hidden_states[-1], plain.last_hidden_state)


def test_assisted_generation_returns_attentions_and_hidden_states():
    """generate() reads the candidates' attentions back (4.57 crashed when the LM never received the flag)."""
    from conftest import GREEDY

    model, assistant = tiny_model("llama"), tiny_model("llama", seed=1)
    for m in (model, assistant):
        m.set_attn_implementation("eager")
    ids = torch.tensor([prompt(5, 6, "img", 7, 8)])
    out = model.generate(
        input_ids=ids, pixel_values=torch.randn(1, 3, 28, 28), max_new_tokens=4, assistant_model=assistant,
        output_attentions=True, output_hidden_states=True, return_dict_in_generate=True, **GREEDY,
    )
    layers = model.config.text_config.num_hidden_layers
    assert len(out.attentions) == 4 and len(out.attentions[0]) == layers
    assert len(out.hidden_states[0]) == layers + 1
