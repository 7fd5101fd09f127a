"""What transformers' own common model tests expect of a model class, checked on ours with tiny models.

Each test reproduces one way HybridVLM differed from transformers' LLaVA-style models (keyword outputs, tuples,
cache length, class attributes, feature API, assisted generation, fp16 loading, padded cache continuations).
"""

from __future__ import annotations

from conftest import tiny_model

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
