"""The library's SSM mixers: chunked paths against the sequential recurrence, causality, padding, state
continuation, single-token steps, gradients, dtypes, weight names, path selection. Tiny sizes, CPU, seconds."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from hybrid_vlm import ssm
from hybrid_vlm.ssm import (
    SSM_FP32_PARAMETERS,
    Mamba1Mixer,
    Mamba2Mixer,
    Mamba2RMSNormGated,
    SSMBlock,
    SSMState,
    reference_scan,
    reference_selective_scan,
    selective_scan_blocked,
    ssd_chunked_scan,
)

F64 = dict(rtol=1e-9, atol=1e-10)
LENGTHS = (1, 3, 4, 5, 8, 13)  # below, at and across several boundaries of chunk 4


def mamba2(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Mamba2Mixer:
    torch.manual_seed(seed)
    kwargs = dict(d_state=8, d_conv=4, expand=2, head_dim=4, n_groups=1, chunk_size=4)
    kwargs.update(overrides)
    return Mamba2Mixer(16, **kwargs).to(dtype)


def mamba1(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Mamba1Mixer:
    torch.manual_seed(seed)
    kwargs = dict(d_state=4, d_conv=4, expand=2, chunk_size=4)
    kwargs.update(overrides)
    return Mamba1Mixer(16, **kwargs).to(dtype)


MIXERS = {
    "mamba2": mamba2,
    "mamba2_groups": lambda **kw: mamba2(n_groups=2, **kw),
    "mamba2_bias": lambda **kw: mamba2(bias=True, **kw),
    "mamba1": mamba1,
    "mamba1_bias": lambda **kw: mamba1(bias=True, **kw),
}


def inputs(batch: int, length: int, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, length, 16, dtype=dtype)


def ssd_inputs(batch, length, heads, head_dim, groups, d_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, length, heads, generator=g, dtype=torch.float64))
    A = -torch.rand(heads, generator=g, dtype=torch.float64) * 4 - 0.1
    B = torch.randn(batch, length, groups, d_state, generator=g, dtype=torch.float64)
    C = torch.randn(batch, length, groups, d_state, generator=g, dtype=torch.float64)
    s0 = torch.randn(batch, heads, head_dim, d_state, generator=g, dtype=torch.float64)
    return x, dt, A, B, C, s0


def m1_inputs(batch, length, channels, d_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g, dtype=torch.float64)
    delta = F.softplus(torch.randn(batch, length, channels, generator=g, dtype=torch.float64))
    A = -torch.rand(channels, d_state, generator=g, dtype=torch.float64) * 4 - 0.1
    B = torch.randn(batch, length, d_state, generator=g, dtype=torch.float64)
    C = torch.randn(batch, length, d_state, generator=g, dtype=torch.float64)
    s0 = torch.randn(batch, channels, d_state, generator=g, dtype=torch.float64)
    return u, delta, A, B, C, s0


# ------------------------------------------------------------------------------------------------------------------
# Scans against the sequential recurrence
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_matches_sequential(length, groups, with_state):
    x, dt, A, B, C, s0 = ssd_inputs(2, length, heads=4, head_dim=3, groups=groups, d_state=5)
    s0 = s0 if with_state else None
    y_ref, state_ref = reference_scan(x, dt, A, B, C, s0)
    y, state = ssd_chunked_scan(x, dt, A, B, C, chunk_size=4, initial_state=s0)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(state, state_ref, **F64)


def test_ssd_several_passes_match_one(monkeypatch):
    """Long inputs run in passes that hand the state on; the split must be invisible."""
    x, dt, A, B, C, s0 = ssd_inputs(2, 23, heads=4, head_dim=3, groups=2, d_state=5)
    y_ref, state_ref = reference_scan(x, dt, A, B, C, s0)
    monkeypatch.setattr(ssm, "TORCH_PATH_ELEMENTS_PER_PASS", 1)  # one chunk per pass
    y, state = ssd_chunked_scan(x, dt, A, B, C, chunk_size=4, initial_state=s0)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(state, state_ref, **F64)


def test_ssd_zero_dt_steps_are_identity():
    """dt = 0 is how padding is masked: such steps must neither decay nor update the state."""
    x, dt, A, B, C, s0 = ssd_inputs(1, 9, heads=2, head_dim=2, groups=1, d_state=3)
    dt[:, 4:] = 0
    _, state_at_4 = ssd_chunked_scan(x[:, :4], dt[:, :4], A, B[:, :4], C[:, :4], 4, s0)
    _, state = ssd_chunked_scan(x, dt, A, B, C, 4, s0)
    torch.testing.assert_close(state, state_at_4, **F64)


def test_ssd_large_decay_is_finite():
    """Strong decay (large dt * |A|) must not overflow inside a chunk (differences are masked before exp)."""
    x, dt, A, B, C, s0 = ssd_inputs(1, 16, heads=2, head_dim=2, groups=1, d_state=3)
    dt = dt * 200
    y, state = ssd_chunked_scan(x.float(), dt.float(), A.float(), B.float(), C.float(), 16, s0.float())
    y_ref, state_ref = reference_scan(x.float(), dt.float(), A.float(), B.float(), C.float(), s0.float())
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("block", [None, 1, 4, 16])
def test_selective_scan_blocked_matches_sequential(length, block):
    u, delta, A, B, C, s0 = m1_inputs(2, length, channels=6, d_state=4)
    y_ref, state_ref = reference_selective_scan(u, delta, A, B, C, s0)
    y, state = selective_scan_blocked(u, delta, A, B, C, s0, chunk_size=block)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(state, state_ref, **F64)


def test_selective_scan_several_blocks_match_one(monkeypatch):
    u, delta, A, B, C, s0 = m1_inputs(2, 23, channels=3, d_state=2)
    y_ref, state_ref = reference_selective_scan(u, delta, A, B, C, s0)
    monkeypatch.setattr(ssm, "TORCH_PATH_ELEMENTS_PER_PASS", 4 * 2 * 3 * 2 * 5)  # blocks of 5 tokens
    y, state = selective_scan_blocked(u, delta, A, B, C, s0, chunk_size=2)
    torch.testing.assert_close(y, y_ref, **F64)
    torch.testing.assert_close(state, state_ref, **F64)


def test_scans_gradcheck():
    """Analytic gradients of both vectorised scans, checked numerically (fp64, tiny)."""
    x, dt, A, B, C, s0 = ssd_inputs(1, 6, heads=2, head_dim=2, groups=1, d_state=2)
    args = [t.clone().requires_grad_() for t in (x, dt, A, B, C, s0)]
    assert torch.autograd.gradcheck(lambda *a: ssd_chunked_scan(*a[:5], 4, a[5]), args)
    u, delta, A1, B1, C1, h0 = m1_inputs(1, 6, channels=2, d_state=2)
    args = [t.clone().requires_grad_() for t in (u, delta, A1, B1, C1, h0)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_blocked(*a, chunk_size=4), args)


# ------------------------------------------------------------------------------------------------------------------
# Mixers: chunked path == reference path, forward and gradients
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("length", LENGTHS)
def test_mixer_torch_path_matches_reference_path(kind, length):
    mixer = MIXERS[kind]()
    hidden = inputs(2, length)
    out = mixer(hidden)
    mixer.compute_path = "reference"
    torch.testing.assert_close(out, mixer(hidden), **F64)


@pytest.mark.parametrize("kind", list(MIXERS))
def test_gradients_reach_every_parameter_and_match_reference(kind):
    mixer = MIXERS[kind]()
    hidden = inputs(2, 13).requires_grad_()
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :3] = 0  # exercise the padding path in the backward too

    def grads(path: str) -> dict[str, torch.Tensor]:
        mixer.compute_path = path
        mixer.zero_grad(set_to_none=True)
        hidden.grad = None
        out, state = mixer(hidden, attention_mask=mask, return_final_state=True)
        (out.pow(2).sum() + state.ssm_state.sum() + state.conv_state.sum()).backward()
        result = {name: p.grad.clone() for name, p in mixer.named_parameters()}
        result["input"] = hidden.grad.clone()
        return result

    torch_grads, ref_grads = grads("torch"), grads("reference")
    assert set(torch_grads) == {n for n, _ in mixer.named_parameters()} | {"input"}
    for name, grad in torch_grads.items():
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(grad, ref_grads[name], **F64, msg=f"gradient of {name}")


# ------------------------------------------------------------------------------------------------------------------
# Causality
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("t", [0, 3, 4, 7, 12])
def test_later_tokens_never_change_earlier_outputs(kind, t):
    mixer = MIXERS[kind]()
    hidden = inputs(1, 13)
    perturbed = hidden.clone()
    perturbed[:, t] += 10.0
    out, out_perturbed = mixer(hidden), mixer(perturbed)
    torch.testing.assert_close(out_perturbed[:, :t], out[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(out_perturbed[:, t], out[:, t])


# ------------------------------------------------------------------------------------------------------------------
# Padding: batched == unbatched
# ------------------------------------------------------------------------------------------------------------------


def pad_batch(rows: list[torch.Tensor], side: str, junk: float = 7.0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[0] for r in rows)
    batch = torch.full((len(rows), width, rows[0].shape[-1]), junk, dtype=rows[0].dtype)  # must not matter
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - r.shape[0], width) if side == "left" else slice(0, r.shape[0])
        batch[i, span], mask[i, span] = r, 1
    return batch, mask


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("junk", [7.0, float("nan")])
def test_batched_equals_unbatched(kind, side, junk):
    mixer = MIXERS[kind]()
    rows = [inputs(1, n, seed=n)[0] for n in (13, 6, 2, 9)]
    batch, mask = pad_batch(rows, side, junk)
    out, state = mixer(batch, attention_mask=mask, return_final_state=True)
    width = batch.shape[1]
    for i, row in enumerate(rows):
        alone, alone_state = mixer(row[None], return_final_state=True)
        n = row.shape[0]
        real = slice(width - n, width) if side == "left" else slice(0, n)
        torch.testing.assert_close(out[i, real], alone[0], **F64)
        torch.testing.assert_close(state.ssm_state[i], alone_state.ssm_state[0], **F64)
        torch.testing.assert_close(state.conv_state[i], alone_state.conv_state[0], **F64)
        assert (out[i][mask[i] == 0] == 0).all()  # padded positions carry nothing


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_nan_padding_gives_finite_gradients(kind):
    mixer = MIXERS[kind]()
    batch, mask = pad_batch([inputs(1, n, seed=n)[0] for n in (7, 3)], "left", float("nan"))
    batch.requires_grad_()
    out, state = mixer(batch, attention_mask=mask, return_final_state=True)
    (out.sum() + state.ssm_state.sum()).backward()
    assert torch.isfinite(batch.grad).all() and (batch.grad[mask == 0] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_padding_holes_act_as_removed_tokens(kind):
    mixer = MIXERS[kind]()
    hidden = inputs(1, 11)
    mask = torch.ones(1, 11, dtype=torch.long)
    mask[0, [0, 4, 5, 10]] = 0
    out, state = mixer(hidden, attention_mask=mask, return_final_state=True)
    kept = hidden[:, mask[0].bool()]
    alone, alone_state = mixer(kept, return_final_state=True)
    torch.testing.assert_close(out[:, mask[0].bool()], alone, **F64)
    torch.testing.assert_close(state.ssm_state, alone_state.ssm_state, **F64)
    torch.testing.assert_close(state.conv_state, alone_state.conv_state, **F64)


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_all_padding_row_keeps_initial_state(kind):
    mixer = MIXERS[kind]()
    hidden = inputs(2, 5)
    _, start = mixer(inputs(2, 6, seed=3), return_final_state=True)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1] = 0
    out, state = mixer(hidden, attention_mask=mask, initial_state=start, return_final_state=True)
    assert (out[1] == 0).all()
    torch.testing.assert_close(state.ssm_state[1], start.ssm_state[1], **F64)
    torch.testing.assert_close(state.conv_state[1], start.conv_state[1], **F64)


# ------------------------------------------------------------------------------------------------------------------
# State continuation, prefill + step
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("split", [1, 2, 5, 8])
def test_initial_state_continues_the_sequence(kind, split):
    mixer = MIXERS[kind]()
    hidden = inputs(2, 13)
    whole, whole_state = mixer(hidden, return_final_state=True)
    first, state = mixer(hidden[:, :split], return_final_state=True)
    second, end_state = mixer(hidden[:, split:], initial_state=state, return_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **F64)
    torch.testing.assert_close(end_state.ssm_state, whole_state.ssm_state, **F64)
    torch.testing.assert_close(end_state.conv_state, whole_state.conv_state, **F64)


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_right_padded_prefill_continues_per_row(kind):
    """A right-padded batch's returned state is each row's own state, so continuing from it is exact."""
    mixer = MIXERS[kind]()
    rows = [inputs(1, n, seed=n)[0] for n in (7, 3)]
    batch, mask = pad_batch(rows, "right")
    _, state = mixer(batch, attention_mask=mask, return_final_state=True)
    more = inputs(2, 4, seed=9)
    out = mixer(more, initial_state=state)
    for i, row in enumerate(rows):
        whole = mixer(torch.cat([row, more[i]])[None])
        torch.testing.assert_close(out[i], whole[0, row.shape[0] :], **F64)


def test_bare_ssm_state_means_zero_conv_window():
    mixer = mamba2()
    hidden = inputs(1, 9)
    _, state = mixer(hidden[:, :5], return_final_state=True)
    zero_conv = SSMState(torch.zeros_like(state.conv_state), state.ssm_state)
    torch.testing.assert_close(
        mixer(hidden[:, 5:], initial_state=state.ssm_state), mixer(hidden[:, 5:], initial_state=zero_conv), **F64
    )


@pytest.mark.parametrize("kind", list(MIXERS))
@pytest.mark.parametrize("prefill", [0, 2, 5])
def test_prefill_then_step_equals_forward(kind, prefill):
    mixer = MIXERS[kind]()
    hidden = inputs(2, 10)
    whole = mixer(hidden)
    if prefill:
        outs, state = mixer(hidden[:, :prefill], return_final_state=True)
        outs = [outs]
    else:
        outs, state = [], mixer.allocate_state(2, dtype=torch.float64)
    for t in range(prefill, 10):
        out, state = mixer.step(hidden[:, t : t + 1], *state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole, **F64)
    _, whole_state = mixer(hidden, return_final_state=True)
    torch.testing.assert_close(state.ssm_state, whole_state.ssm_state, **F64)
    torch.testing.assert_close(state.conv_state, whole_state.conv_state, **F64)


def test_step_accepts_2d_tokens_and_keeps_state_dtypes():
    mixer = mamba2(dtype=torch.float32)
    state = mixer.allocate_state(3)
    out, new = mixer.step(torch.randn(3, 16), *state)
    assert out.shape == (3, 16)
    assert new.ssm_state.dtype == torch.float32 and new.conv_state.shape == state.conv_state.shape
    with pytest.raises(ValueError):
        mixer.step(torch.randn(3, 2, 16), *state)


# ------------------------------------------------------------------------------------------------------------------
# Block, names, init
# ------------------------------------------------------------------------------------------------------------------


def test_mamba2_weight_names_and_shapes():
    mixer = Mamba2Mixer(32, d_state=8, d_conv=4, expand=2, head_dim=16, n_groups=2)
    shapes = {name: tuple(p.shape) for name, p in mixer.state_dict().items()}
    d_inner, heads, conv_dim = 64, 4, 64 + 2 * 2 * 8
    assert shapes == {
        "in_proj.weight": (d_inner + conv_dim + heads, 32),
        "conv1d.weight": (conv_dim, 1, 4),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (heads,),
        "A_log": (heads,),
        "D": (heads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (32, d_inner),
    }
    assert mixer.norm.group_size == d_inner // 2


def test_mamba1_weight_names_and_shapes():
    mixer = Mamba1Mixer(32, d_state=16, d_conv=4, expand=2)
    shapes = {name: tuple(p.shape) for name, p in mixer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (128, 32),
        "conv1d.weight": (64, 1, 4),
        "conv1d.bias": (64,),
        "x_proj.weight": (2 + 32, 64),
        "dt_proj.weight": (64, 2),
        "dt_proj.bias": (64,),
        "A_log": (64, 16),
        "D": (64,),
        "out_proj.weight": (32, 64),
    }


def test_block_weight_names_match_vamba_layout():
    block = SSMBlock(32, mixer="mamba2", norm_eps=1e-6, d_state=8, head_dim=16)
    names = set(block.state_dict())
    assert "norm.weight" in names
    assert {
        f"mixer.{n}" for n in ("dt_bias", "A_log", "D", "norm.weight", "in_proj.weight", "out_proj.weight")
    } <= names
    assert {f"mixer.{n}" for n in ("conv1d.weight", "conv1d.bias")} <= names
    assert {n.split(".")[1] for n in names if n.startswith("mixer.")} == {
        "in_proj",
        "conv1d",
        "dt_bias",
        "A_log",
        "D",
        "norm",
        "out_proj",
    }
    assert set(SSMBlock(32, mixer="mamba1").mixer.state_dict()) >= {"x_proj.weight", "dt_proj.bias", "A_log"}
    with pytest.raises(ValueError):
        SSMBlock(32, mixer="mamba3")


@pytest.mark.parametrize("mixer_type", ["mamba2", "mamba1"])
def test_block_is_residual_of_normed_mixer_and_leaves_padding_untouched(mixer_type):
    torch.manual_seed(0)
    extra = dict(d_state=8, head_dim=4, chunk_size=4) if mixer_type == "mamba2" else dict(d_state=4)
    block = SSMBlock(16, mixer=mixer_type, norm_eps=1e-6, **extra).double()
    hidden = inputs(2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    out = block(hidden, attention_mask=mask)
    expected = hidden + block.mixer(block.norm(hidden), attention_mask=mask)
    torch.testing.assert_close(out, expected, **F64)
    torch.testing.assert_close(out[0, :2], hidden[0, :2], rtol=0, atol=0)
    out_state, state = block(hidden, return_final_state=True)
    step_out, _ = block.step(hidden[:, :1], *block.allocate_state(2, dtype=torch.float64))
    torch.testing.assert_close(step_out, block(hidden[:, :1]), **F64)
    assert isinstance(state, SSMState)


def test_mamba2_init_follows_mamba_ssm():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(256, d_state=16, head_dim=8, dt_min=0.001, dt_max=0.1, A_init_range=(1, 16))
    A = mixer.A_log.exp()
    assert A.min() >= 1 and A.max() <= 16 and A.std() > 1  # spread over the range, not constant
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert math.log(dt.max().item() / dt.min().item()) > 2  # log-uniform: spans orders of magnitude
    assert (mixer.D == 1).all() and (mixer.norm.weight == 1).all()
    assert all(getattr(p, "_no_weight_decay", False) for p in (mixer.A_log, mixer.D, mixer.dt_bias))
    with torch.no_grad():
        mixer.A_log.zero_()
    mixer.init_ssm_parameters()
    assert mixer.A_log.exp().min() >= 1 and mixer.A_log.std() > 0


def test_mamba1_init_follows_mamba_ssm():
    torch.manual_seed(0)
    mixer = Mamba1Mixer(64, d_state=16, dt_min=0.001, dt_max=0.1)
    assert mixer.dt_rank == 4
    torch.testing.assert_close(mixer.A_log.exp()[3], torch.arange(1, 17, dtype=torch.float32))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert mixer.dt_proj.weight.abs().max() <= 4**-0.5
    assert (mixer.D == 1).all()


def test_gated_norm_groups_and_gate_order():
    torch.manual_seed(0)
    y, z = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    norm = Mamba2RMSNormGated(8, eps=1e-5, group_size=4).double()
    gated = y * F.silu(z)
    expected = torch.cat([F.rms_norm(g, (4,), eps=1e-5) for g in gated.split(4, -1)], -1)
    torch.testing.assert_close(norm(y, z), expected, **F64)
    before = Mamba2RMSNormGated(8, eps=1e-5, norm_before_gate=True).double()
    torch.testing.assert_close(before(y, z), F.rms_norm(y, (8,), eps=1e-5) * F.silu(z), **F64)


# ------------------------------------------------------------------------------------------------------------------
# dtypes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_module_keeps_fp32_parameters_and_finite_outputs(kind, dtype):
    """The guard (on by default): casting the module leaves A_log / D / dt_bias in fp32; outputs in input dtype."""
    mixer = MIXERS[kind](dtype=torch.float32)
    reference = mixer(inputs(2, 13, dtype=torch.float32))
    mixer = mixer.to(dtype)
    for name in SSM_FP32_PARAMETERS:
        if hasattr(mixer, name):
            assert getattr(mixer, name).dtype == torch.float32, name
    assert mixer.in_proj.weight.dtype == dtype
    hidden = inputs(2, 13, dtype=torch.float32).to(dtype)
    out, state = mixer(hidden * 30, return_final_state=True)  # large activations: the fp16 overflow case
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(state.ssm_state).all()
    assert state.ssm_state.dtype == torch.float32
    torch.testing.assert_close(mixer(hidden).float(), reference, rtol=0.1, atol=0.05)
    step_out, _ = mixer.step(hidden[:, :1], *mixer.allocate_state(2))
    assert step_out.dtype == dtype and torch.isfinite(step_out).all()


def test_fp32_guard_can_be_turned_off_and_never_downcasts():
    mixer = mamba2(dtype=torch.float32)
    assert mixer.double().A_log.dtype == torch.float64  # the guard only ever upcasts
    mixer.keep_fp32_parameters = False
    assert mixer.to(torch.bfloat16).A_log.dtype == torch.bfloat16
    assert torch.isfinite(mixer(inputs(1, 5, dtype=torch.float32).bfloat16())).all()


def test_half_default_dtype_construction_keeps_fp32_parameters():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        mixer = Mamba2Mixer(16, d_state=4, head_dim=4)
    finally:
        torch.set_default_dtype(previous)
    assert mixer.in_proj.weight.dtype == torch.float16
    assert all(getattr(mixer, n).dtype == torch.float32 for n in SSM_FP32_PARAMETERS)


# ------------------------------------------------------------------------------------------------------------------
# Compute paths
# ------------------------------------------------------------------------------------------------------------------


def test_cpu_runs_torch_path_and_reports_it_once(caplog):
    mixer = mamba2()
    assert mixer.compute_path == "torch"
    ssm._announced.clear()
    with caplog.at_level(logging.INFO, logger="hybrid_vlm.ssm"):
        mixer(inputs(1, 3))
        mixer(inputs(1, 3))
    lines = [r.getMessage() for r in caplog.records if "mamba2 mixers run the torch path" in r.getMessage()]
    assert len(lines) == 1


def test_compute_path_can_be_forced_and_validated():
    mixer = mamba1()
    mixer.compute_path = "reference"
    assert mixer.compute_path == "reference"
    mixer.compute_path = None
    assert mixer.compute_path == "torch"
    with pytest.raises(ValueError):
        mixer.compute_path = "triton"
    mixer.compute_path = "kernels"
    with pytest.raises(RuntimeError, match="CUDA"):
        mixer(inputs(1, 3))
    assert SSMBlock(16, mixer="mamba1").compute_path == "torch"


def test_kernels_never_imported_on_cpu(monkeypatch):
    """The CUDA kernels are looked up only for CUDA tensors; a CPU forward must not touch them."""

    def boom(name):
        raise AssertionError(f"kernel {name} looked up on CPU")

    monkeypatch.setattr(ssm, "_kernel", boom)
    for make in MIXERS.values():
        make()(inputs(1, 5))


# Fakes with the documented signatures of mamba-ssm / causal-conv1d, so the kernel path's argument plumbing is
# exercised on CPU (the real kernels are CUDA builds). They check layouts and dtypes, then compute with our scans.


def fake_causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, activation=None, **kwargs):
    assert x.dim() == 3 and weight.dim() == 2 and x.shape[1] == weight.shape[0] and activation == "silu"
    out = F.conv1d(x, weight[:, None], bias, padding=weight.shape[1] - 1, groups=weight.shape[0])[..., : x.shape[-1]]
    return F.silu(out)


def fake_mamba_chunk_scan_combined(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    dt_softplus=False,
    return_final_states=False,
    **kwargs,
):
    batch, length, heads, head_dim = x.shape
    assert dt.shape == (batch, length, heads) and A.shape == (heads,) and B.shape[:2] == (batch, length)
    assert dt_bias is None and not dt_softplus and D is None and z is None  # we pass dt final and masked
    assert A.dtype == torch.float32 or A.dtype == torch.float64
    y, state = ssd_chunked_scan(
        x.double(),
        dt.double(),
        A.double(),
        B.double(),
        C.double(),
        chunk_size,
        None if initial_states is None else initial_states.double(),
    )
    return (y.to(x.dtype), state) if return_final_states else y.to(x.dtype)


def fake_selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    batch, channels, length = u.shape
    assert delta.shape == u.shape and delta.dtype == u.dtype and A.dtype == torch.float32
    assert B.shape == (batch, A.shape[1], length) and B.dtype == u.dtype and delta_bias is None
    y, state = reference_selective_scan(
        u.transpose(1, 2).double(),
        delta.transpose(1, 2).double(),
        A.double(),
        B.transpose(1, 2).double(),
        C.transpose(1, 2).double(),
    )
    y = y.transpose(1, 2).to(u.dtype)
    return (y, state) if return_last_state else y


@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_kernel_path_plumbing_with_fake_kernels(kind, monkeypatch):
    fakes = {
        "chunk_scan": fake_mamba_chunk_scan_combined,
        "selective_scan": fake_selective_scan_fn,
        "causal_conv1d": fake_causal_conv1d_fn,
    }
    monkeypatch.setattr(ssm, "_kernel", fakes.get)
    mixer = MIXERS[kind](dtype=torch.float32)
    rows = [inputs(1, n, seed=n, dtype=torch.float32)[0] for n in (9, 4)]
    batch, mask = pad_batch(rows, "left")
    expected, expected_state = mixer(batch, attention_mask=mask, return_final_state=True)
    expected_tail = mixer(batch)[:, 4:]
    monkeypatch.setattr(mixer, "_path_for", lambda device: "kernels")
    out, state = mixer(batch, attention_mask=mask, return_final_state=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm_state, expected_state.ssm_state, rtol=1e-4, atol=1e-5)
    _, prefix = mixer(batch[:, :4], return_final_state=True)  # continuation: conv prefix through the kernel conv
    torch.testing.assert_close(mixer(batch[:, 4:], initial_state=prefix), expected_tail, rtol=1e-4, atol=1e-5)


def test_mixers_reject_bad_shapes():
    mixer = mamba2()
    with pytest.raises(ValueError):
        mixer(torch.randn(16, dtype=torch.float64))
    with pytest.raises(ValueError):
        mixer(inputs(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError):
        Mamba2Mixer(16, head_dim=5)
    with pytest.raises(ValueError):
        Mamba2Mixer(16, head_dim=4, n_groups=3)


# ------------------------------------------------------------------------------------------------------------------
# Same parameterisation as an independent implementation (transformers' own Mamba / Mamba-2 mixers)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2])
def test_mamba2_matches_transformers_mixer_with_same_weights(groups):
    transformers = pytest.importorskip("transformers")
    from transformers import Mamba2Config
    from transformers.models.mamba2 import modeling_mamba2

    if groups > 1 and int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4.x normalises the gated norm over all groups at once (mamba-ssm: per group)")
    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=32, state_size=8, expand=2, head_dim=8, num_heads=8, n_groups=groups, conv_kernel=4,
        chunk_size=4, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
    )  # fmt: skip
    theirs = modeling_mamba2.Mamba2Mixer(config, layer_idx=0).double()
    ours = Mamba2Mixer(32, d_state=8, head_dim=8, n_groups=groups, chunk_size=4).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    hidden = inputs(2, 11, dtype=torch.float64).repeat(1, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden), theirs(hidden), rtol=1e-5, atol=1e-5)  # theirs: A in fp32


def test_mamba1_matches_transformers_mixer_with_same_weights():
    pytest.importorskip("transformers")
    from transformers import MambaConfig
    from transformers.models.mamba import modeling_mamba

    torch.manual_seed(0)
    config = MambaConfig(hidden_size=32, state_size=4, expand=2, conv_kernel=4, time_step_rank=3, use_bias=False)
    theirs = modeling_mamba.MambaMixer(config, layer_idx=0).double()
    ours = Mamba1Mixer(32, d_state=4, dt_rank=3).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    hidden = inputs(2, 11, dtype=torch.float64).repeat(1, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden), theirs(hidden), rtol=1e-6, atol=1e-6)
