"""The SSM engine under transformers' LMs equals transformers' own PyTorch path on the same weights.

Every supported LM type the installed transformers has: outputs, cache states and gradients (fp32, 1e-5) with
and without padding, lengths around the chunk size, causality, and multi-token continuation from a cache.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from hybrid_vlm import ssm, ssm_engine
from hybrid_vlm.caching import new_language_model_cache
from hybrid_vlm.compat import cache_kwargs, legacy_cache_position, output_cache, read_mixer_state
from hybrid_vlm.ssm_engine import engine_path, engine_serves_every_ssm_layer, install_ssm_engine, set_ssm_engine

TOL = dict(atol=1e-5, rtol=1e-5)
CHUNK = 4

LM_CONFIGS = {
    "mamba": dict(hidden_size=32, num_hidden_layers=2, state_size=8, intermediate_size=64, time_step_rank=4),
    "jamba": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4,
        num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4, use_mamba_kernels=False,
    ),
    "mamba2": dict(
        hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=8, n_groups=2, chunk_size=CHUNK,
        time_step_limit=(0.01, 2.0),
    ),
    "bamba": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=CHUNK,
        attn_layer_indices=[1],
    ),
    "zamba2": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        mamba_headdim=16, mamba_ngroups=2, mamba_d_state=8, chunk_size=CHUNK, layers_block_type=["mamba", "hybrid"],
        hybrid_layer_ids=[1], attention_head_dim=8, n_mamba_heads=4,
    ),
    "nemotron_h": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        mamba_num_heads=4, mamba_head_dim=16, n_groups=2, ssm_state_size=8, chunk_size=CHUNK,
        hybrid_override_pattern="M*-",
    ),
    "falcon_h1": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=CHUNK, head_dim=8,
        mamba_d_ssm=64, ssm_in_multiplier=0.7, ssm_multipliers=[1.3, 0.8, 1.1, 0.9, 1.2],
    ),
    # FalconH1 variant without its gated RMSNorm (the output is gated by silu(z) instead)
    "falcon_h1-no_norm": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=CHUNK, head_dim=8,
        mamba_d_ssm=64, mamba_rms_norm=False,
    ),
}
AVAILABLE = [name for name in LM_CONFIGS if name.split("-")[0] in CONFIG_MAPPING_NAMES]


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    model_type = name.split("-")[0]
    config = AutoConfig.for_model(model_type, vocab_size=64, **LM_CONFIGS[name])
    torch.manual_seed(seed)
    lm = AutoModel.from_config(config).to(dtype).eval()
    with torch.no_grad():  # random (not unit) SSM parameters, so every term of the recurrence matters
        for module in lm.modules():
            if ssm_engine.mixer_kind(module) is not None:
                module.D.normal_()
                module.A_log.uniform_(-1.0, 1.5)
                for norm in ("norm", "dt_layernorm", "b_layernorm", "c_layernorm"):
                    weight = getattr(getattr(module, norm, None), "weight", None)
                    if weight is not None:
                        weight.uniform_(0.5, 1.5)
    assert install_ssm_engine(lm) > 0
    return lm


def run(lm: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor | None, cache=None, past: int = 0):
    """One LM forward on embeddings with a cache (created when None); returns (hidden, cache)."""
    config = lm.config
    if cache is None:
        cache = new_language_model_cache(config, embeds.shape[0], embeds.dtype, embeds.device)
    kwargs = {}
    if cache is not None:
        kwargs.update(cache_kwargs(lm.forward, cache))
    if "cache_position" in lm.forward.__code__.co_varnames or _takes(lm, "cache_position"):
        position = legacy_cache_position(config, past, embeds.shape[1], None, embeds.device)
        if position is not None:
            kwargs["cache_position"] = position
    out = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, return_dict=True, **kwargs)
    return out.last_hidden_state, output_cache(out) or cache


def _takes(lm: torch.nn.Module, name: str) -> bool:
    import inspect

    return name in inspect.signature(lm.forward).parameters


def mixer_states(lm: torch.nn.Module, cache, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    states = []
    for module in lm.modules():
        if ssm_engine.mixer_kind(module) is not None:
            conv, recurrent = read_mixer_state(cache, module.layer_idx, torch.tensor([1]), batch)
            assert conv is not None and recurrent is not None
            states.append((conv.clone(), recurrent.clone()))
    return states


def padded_inputs(batch_lengths: list[int], hidden: int, padding: str | None, seed: int = 1):
    torch.manual_seed(seed)
    width = max(batch_lengths)
    embeds = torch.randn(len(batch_lengths), width, hidden)
    mask = torch.zeros(len(batch_lengths), width, dtype=torch.long)
    for row, length in enumerate(batch_lengths):
        if padding == "right":
            mask[row, :length] = 1
        else:
            mask[row, width - length :] = 1
    if padding is None:
        mask[:] = 1
    return embeds, mask


def test_every_supported_mixer_class_is_known():
    """The registry names the classes of every LM type tested here (a renamed class would silently fall back)."""
    for name in AVAILABLE:
        lm = build(name)
        kinds = [ssm_engine.mixer_kind(m) for m in lm.modules() if "Mixer" in type(m).__name__]
        assert kinds and all(kinds), (name, [type(m).__name__ for m in lm.modules() if "Mixer" in type(m).__name__])
        assert engine_serves_every_ssm_layer(lm, lm.config.model_type)


@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("name", AVAILABLE)
def test_engine_equals_transformers_path(name, padding):
    lm = build(name)
    hidden = lm.config.hidden_size
    lengths = [11, 7] if padding else [11, 11]
    embeds, mask = padded_inputs(lengths, hidden, padding)
    with torch.no_grad():
        set_ssm_engine(lm, False)
        reference, reference_cache = run(lm, embeds, mask)
        set_ssm_engine(lm, True)
        engine, engine_cache = run(lm, embeds, mask)
    real = mask.bool()
    torch.testing.assert_close(engine[real], reference[real], **TOL)
    engine_states = mixer_states(lm, engine_cache, 2)
    if padding == "right":
        # transformers' own states then include the padded steps; the engine's are each row's own (run alone)
        for row, length in enumerate(lengths):
            with torch.no_grad():
                set_ssm_engine(lm, False)
                _, alone = run(lm, embeds[row : row + 1, :length], None)
                set_ssm_engine(lm, True)
            for (conv, state), (ref_conv, ref_state) in zip(engine_states, mixer_states(lm, alone, 1)):
                torch.testing.assert_close(conv[row : row + 1], ref_conv.to(conv.dtype), **TOL)
                torch.testing.assert_close(state[row : row + 1], ref_state.to(state.dtype), **TOL)
    else:
        for (conv, state), (ref_conv, ref_state) in zip(engine_states, mixer_states(lm, reference_cache, 2)):
            assert conv.shape == ref_conv.shape and state.shape == ref_state.shape
            assert conv.dtype == ref_conv.dtype and state.dtype == ref_state.dtype
            torch.testing.assert_close(conv, ref_conv, **TOL)
            torch.testing.assert_close(state, ref_state, **TOL)


@pytest.mark.parametrize("padding", [None, "left"])
@pytest.mark.parametrize("name", AVAILABLE)
def test_engine_gradients_equal_transformers(name, padding):
    lm = build(name)
    embeds, mask = padded_inputs([10, 6], lm.config.hidden_size, padding)
    weights = torch.randn(*embeds.shape[:2], lm.config.hidden_size)

    def grads(enabled: bool):
        set_ssm_engine(lm, enabled)
        lm.zero_grad()
        inputs = embeds.clone().requires_grad_(True)
        out = lm(inputs_embeds=inputs, attention_mask=mask, use_cache=False).last_hidden_state
        (out * weights * mask[..., None]).sum().backward()
        named = {n: p.grad.clone() for n, p in lm.named_parameters() if p.grad is not None}
        return inputs.grad.clone(), named

    reference_input, reference = grads(False)
    engine_input, engine = grads(True)
    torch.testing.assert_close(engine_input, reference_input, **TOL)
    assert engine.keys() == reference.keys()
    ssm_names = [n for n in engine if n.endswith(("A_log", "D", "dt_bias", "conv1d.weight", "dt_proj.weight"))]
    assert ssm_names
    for key in engine:  # 1e-5 of each gradient's own scale (a bias gradient sums many fp32 terms)
        scale = max(1.0, float(reference[key].abs().max()))
        torch.testing.assert_close(engine[key], reference[key], atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n in ("mamba2", "bamba", "zamba2", "nemotron_h", "falcon_h1")])
@pytest.mark.parametrize("length", [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1])
def test_chunk_boundaries(name, length):
    lm = build(name)
    embeds, mask = padded_inputs([length, max(1, length - 2)], lm.config.hidden_size, "left")
    with torch.no_grad():
        set_ssm_engine(lm, False)
        reference, _ = run(lm, embeds, mask)
        set_ssm_engine(lm, True)
        engine, _ = run(lm, embeds, mask)
    torch.testing.assert_close(engine[mask.bool()], reference[mask.bool()], **TOL)


def test_blocked_scan_boundaries_in_the_lm(monkeypatch):
    """Mamba-1 lengths around the scan's block size (forced small) and across several passes."""
    name = "jamba" if "jamba" in AVAILABLE else "mamba"
    lm = build(name)
    original = ssm_engine.selective_scan_blocked
    monkeypatch.setattr(ssm_engine, "selective_scan_blocked", lambda *a: original(*a, chunk_size=3))
    monkeypatch.setattr(ssm, "TORCH_PATH_ELEMENTS_PER_PASS", 2 * 64 * 8 * 4 * 5)  # a few tokens per pass
    for length in (2, 3, 4, 6, 7, 13):
        embeds, mask = padded_inputs([length], lm.config.hidden_size, None)
        with torch.no_grad():
            set_ssm_engine(lm, False)
            reference, _ = run(lm, embeds, mask)
            set_ssm_engine(lm, True)
            engine, _ = run(lm, embeds, mask)
        torch.testing.assert_close(engine, reference, **TOL)


@pytest.mark.parametrize("name", AVAILABLE)
def test_causal(name):
    """A later token never changes an earlier output (across chunk boundaries)."""
    lm = build(name)
    embeds, mask = padded_inputs([13], lm.config.hidden_size, None)
    changed = embeds.clone()
    changed[:, 9:] = torch.randn_like(changed[:, 9:]) * 3
    with torch.no_grad():
        first, _ = run(lm, embeds, mask)
        second, _ = run(lm, changed, mask)
    torch.testing.assert_close(first[:, :9], second[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(first[:, 9:], second[:, 9:])


@pytest.mark.parametrize("name", AVAILABLE)
def test_multi_token_continuation_from_the_cache(name):
    """Prefix with a cache, then several tokens in one forward from the carried state == the whole sequence."""
    lm = build(name)
    embeds, mask = padded_inputs([12, 9], lm.config.hidden_size, "left")
    with torch.no_grad():
        whole, _ = run(lm, embeds, mask)
        _, cache = run(lm, embeds[:, :7], mask[:, :7])
        continued, cache = run(lm, embeds[:, 7:], mask, cache=cache, past=7)
        # and a decode step after it (transformers' own step from the engine's states)
        step_input = torch.randn(2, 1, lm.config.hidden_size)
        longer = torch.cat([embeds, step_input], dim=1)
        longer_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        whole_longer, _ = run(lm, longer, longer_mask)
        stepped, _ = run(lm, step_input, longer_mask, cache=cache, past=12)
    if name == "bamba" and not torch.allclose(continued, whole[:, 7:], **TOL):
        # transformers' own Bamba continuation differs from its full forward by ~4e-5 (fp64 too) outside the SSM
        # layers; the SSM side must still equal transformers' own Mamba-2 continuation, which starts from the state
        with torch.no_grad():
            set_ssm_engine(lm, False)
            _, reference_cache = run(lm, embeds[:, :7], mask[:, :7])
            reference, _ = run(lm, embeds[:, 7:], mask, cache=reference_cache, past=7)
            set_ssm_engine(lm, True)
        torch.testing.assert_close(continued, reference, **TOL)
        return
    torch.testing.assert_close(continued, whole[:, 7:], **TOL)
    torch.testing.assert_close(stepped[:, 0], whole_longer[:, -1], **TOL)


def test_kernels_keep_transformers_path(monkeypatch):
    """Where the kernels run, the mixer calls transformers' own forward; the path report says so."""
    monkeypatch.setattr(ssm, "kernels_available", lambda kind="mamba2": {"scan": True, "causal_conv1d": True})
    assert ssm.lm_mixer_path("mamba1", torch.device("cuda"))[0] == "kernels"
    assert ssm.lm_mixer_path("mamba1", torch.device("cpu"))[0] == "engine"
    lm = build(AVAILABLE[0])
    mixer = next(m for m in lm.modules() if ssm_engine.mixer_kind(m) is not None)
    calls = []
    original = type(mixer).forward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssm_engine, "lm_layer_path", lambda module, device=None: ("kernels", "test"))
    monkeypatch.setattr(type(mixer), "forward", spy)
    with torch.no_grad():
        mixer(torch.randn(1, 5, lm.config.hidden_size))
    assert calls == [1]


def test_switched_off_by_config_and_environment(monkeypatch):
    """ssm_engine=False (config) and HYBRID_VLM_SSM_ENGINE=0 keep transformers' path; the report says which."""
    from conftest import tiny_model

    from hybrid_vlm.path_report import compute_paths

    def lm_rows(model):
        return [p for p in compute_paths(model) if p.component.startswith("LM SSM layers")]

    on = tiny_model("jamba")
    assert [r.path for r in lm_rows(on)] == ["hybrid_vlm engine (torch blocked scan)"]
    off = tiny_model("jamba", ssm_engine=False)
    assert off.config.ssm_engine is False
    assert [r.path for r in lm_rows(off)] == ["transformers torch reference"]
    assert "ssm_engine=False" in lm_rows(off)[0].reason
    monkeypatch.setenv(ssm.ENGINE_ENV_VAR, "0")
    assert [r.path for r in lm_rows(on)] == ["transformers torch reference"]
    assert ssm.ENGINE_ENV_VAR in lm_rows(on)[0].reason
    mixer = next(m for m in on.modules() if ssm_engine.mixer_kind(m) is not None)
    calls = []
    original = type(mixer).forward
    monkeypatch.setattr(type(mixer), "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with torch.no_grad():
        mixer(torch.randn(1, 3, on.config.text_config.hidden_size))
    assert calls == [1]


def test_unsupported_mixer_is_left_alone():
    """Our own mixers and transformers classes outside the registry are not touched."""
    block = ssm.SSMBlock(16, d_state=4, head_dim=8, chunk_size=4)
    assert install_ssm_engine(block) == 0
    assert engine_path(block.mixer) is None


@pytest.mark.parametrize("lm", ["jamba", "mamba2", "mamba"])
def test_vlm_continuation_runs_in_one_forward(lm, monkeypatch):
    """A second turn on a returned cache is fed in one forward (no token-by-token stepping) and equals the
    no-cache reference; with the engine switched off it is stepped, as before."""
    from conftest import TEXT_CONFIGS, prompt, tiny_model

    from hybrid_vlm.modeling_hybrid_vlm import HybridVLMModel

    text = TEXT_CONFIGS.get(lm) or dict(LM_CONFIGS["mamba"], model_type="mamba")
    model = tiny_model(text)
    ids = torch.tensor([prompt(5, "img", 6, 7, 8, 9)])
    pixel_values = torch.randn(1, 3, 28, 28)
    stepped = []
    original = HybridVLMModel._continue_token_by_token
    monkeypatch.setattr(
        HybridVLMModel, "_continue_token_by_token", lambda self, *a: stepped.append(1) or original(self, *a)
    )
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixel_values, use_cache=False).logits
        for enabled in (True, False):
            set_ssm_engine(model, enabled)
            first = model(input_ids=ids[:, :-4], pixel_values=pixel_values, use_cache=True)
            cache = output_cache(first)
            second = model(input_ids=ids[:, -4:], **cache_kwargs(model.forward, cache), use_cache=True)
            torch.testing.assert_close(second.logits, reference[:, -4:], atol=1e-5, rtol=1e-5)
            assert stepped == ([] if enabled else [1])
