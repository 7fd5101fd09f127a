"""Path selection and its report: which implementation each SSM / attention module takes, and why.

Kernel availability is faked with monkeypatch (this runs on CPU); the real kernel-vs-torch parity is in
tests/test_kernel_parity.py (CUDA with mamba-ssm only). torch-vs-reference numerics of our SSM paths are in
tests/test_ssm.py (chunk boundaries, several passes, gradients).
"""

from __future__ import annotations

import logging

import pytest
import torch

import hybrid_vlm
from hybrid_vlm import benchmark as bm
from hybrid_vlm import path_report, ssm
from hybrid_vlm.ssm import Mamba1Mixer, Mamba2Mixer

CUDA = torch.device("cuda")  # only ever passed as a label: nothing is allocated on it


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fake_installed(monkeypatch, **flags: bool) -> None:
    state = {name: False for name in ssm.KERNEL_PACKAGES} | flags
    monkeypatch.setattr(ssm, "installed_kernels", lambda: dict(state))


def paths_by_component(model) -> dict[str, path_report.ComputePath]:
    rows = path_report.compute_paths(model)
    by_component = {row.component: row for row in rows}
    assert len(by_component) == len(rows), "one row per component when every module of a kind agrees"
    return by_component


# ------------------------------------------------------------------------------------------------ our SSM mixers


@pytest.mark.parametrize("mixer_class", [Mamba2Mixer, Mamba1Mixer])
def test_own_mixer_on_cpu_takes_torch_path_because_cpu(mixer_class, monkeypatch):
    fake_installed(monkeypatch, mamba_ssm=True, causal_conv1d=True)  # installed or not: CPU tensors decide
    mixer = mixer_class(32, d_state=8)
    path, reason = path_report.own_ssm_path(mixer)
    assert path.startswith("torch") and mixer.compute_path == "torch"
    assert "tensors on cpu" in reason


def test_own_mixer_on_cuda_without_mamba_ssm(monkeypatch):
    fake_installed(monkeypatch)
    monkeypatch.setattr(ssm, "kernels_available", lambda kind: pytest.fail("must not import kernels when missing"))
    path, reason = path_report.own_ssm_path(Mamba2Mixer(32, d_state=8), CUDA)
    assert path == "torch chunked (SSD matmul form)" and "mamba-ssm not installed" in reason


@pytest.mark.parametrize(
    ("scan", "conv", "path", "says"),
    [
        (True, True, "mamba-ssm kernels", "conv: causal-conv1d"),
        (True, False, "mamba-ssm kernels", "causal-conv1d not installed"),
        (False, False, "torch blocked scan", "failed to import"),
    ],
)
def test_own_mixer_on_cuda_with_mamba_ssm(monkeypatch, scan, conv, path, says):
    fake_installed(monkeypatch, mamba_ssm=True, causal_conv1d=conv)
    monkeypatch.setattr(ssm, "kernels_available", lambda kind: {"scan": scan, "causal_conv1d": conv})
    got_path, reason = path_report.own_ssm_path(Mamba1Mixer(32, d_state=8), CUDA)
    assert got_path == path and says in reason


def test_forced_path_is_reported_as_forced():
    mixer = Mamba2Mixer(32, d_state=8)
    mixer.compute_path = "reference"
    assert path_report.own_ssm_path(mixer) == ("reference recurrence", "forced (compute_path='reference')")


# ------------------------------------------------------------------------------------------------ whole models


def test_vamba_report_names_every_stream():
    model, _ = hybrid_vlm.from_preset("vamba-tiny")
    layers = model.config.text_config.num_hidden_layers
    rows = paths_by_component(model)
    stream = rows["Vamba visual-stream SSM (mamba2, hybrid_vlm.ssm)"]
    assert stream.modules == layers and stream.path.startswith("torch chunked") and "cpu" in stream.reason
    assert "vision_mixer.mixer" in stream.example
    self_attention = next(r for c, r in rows.items() if c.startswith("LM self-attention"))
    cross = rows["Vamba cross-attention (VambaCrossAttention)"]
    assert self_attention.modules == cross.modules == layers
    assert self_attention.path == cross.path == model.config.text_config._attn_implementation == "sdpa"


def test_mambavlm_report_has_projector_ssm_and_transformers_mamba(monkeypatch):
    fake_installed(monkeypatch)
    model, _ = hybrid_vlm.from_preset("mambavlm-tiny")
    rows = paths_by_component(model)
    projector = rows["projector SSM (mamba2, hybrid_vlm.ssm)"]
    assert projector.modules >= 1 and "multi_modal_projector" in projector.example
    lm = rows["LM SSM layers (MambaMixer)"]
    assert lm.modules == model.config.text_config.num_hidden_layers
    assert lm.path == "hybrid_vlm engine (torch blocked scan)" and "tensors on cpu" in lm.reason
    hybrid_vlm.set_ssm_engine(model, False)  # transformers' own path, and its reason
    lm = paths_by_component(model)["LM SSM layers (MambaMixer)"]
    assert lm.path == "transformers torch reference" and "ssm_engine=False" in lm.reason


def test_transformers_ssm_path_rules(monkeypatch):
    model, _ = hybrid_vlm.from_preset("jamba-llava-tiny")
    mixer = next(m for m in model.modules() if type(m).__name__ == "JambaMambaMixer")
    # On CUDA without importable kernels our engine runs; with them (faked here) transformers keeps its own path.
    assert path_report.transformers_ssm_path(mixer, CUDA)[0] == "hybrid_vlm engine (torch blocked scan)"
    monkeypatch.setattr(ssm, "kernels_available", lambda kind="mamba2": {"scan": True, "causal_conv1d": True})
    assert path_report.transformers_ssm_path(mixer, CUDA)[0] == "mamba-ssm kernels (transformers)"
    del mixer._hybrid_vlm_ssm_engine  # transformers' own rules, as for a mixer outside our model
    mixer.use_fast_kernels = True  # (4.x: built here without kernels, so switched off; 5.x: no such flag)
    fake_installed(monkeypatch, mamba_ssm=True)
    assert path_report.transformers_ssm_path(mixer, CUDA) == ("transformers torch reference", "causal-conv1d not installed")
    fake_installed(monkeypatch, mamba_ssm=True, causal_conv1d=True)
    assert "tensors on cpu" in path_report.transformers_ssm_path(mixer)[1]
    assert path_report.transformers_ssm_path(mixer, CUDA)[0] == "mamba-ssm kernels (transformers)"
    mixer.use_fast_kernels = False  # transformers 4.x Jamba's switch
    assert "use_mamba_kernels=False" in path_report.transformers_ssm_path(mixer, CUDA)[1]


def test_attention_rows_follow_the_configured_implementation():
    model, _ = hybrid_vlm.from_preset("llava-tiny", attn_implementation="eager")
    rows = paths_by_component(model)
    assert rows["LM self-attention (LlamaAttention)"].path == "eager"
    assert "requested" in rows["LM self-attention (LlamaAttention)"].reason


def test_vamba_cross_attention_reports_its_sdpa_fallback_for_flash():
    model, _ = hybrid_vlm.from_preset("vamba-tiny")
    cross = next(m for m in model.modules() if type(m).__name__ == "VambaCrossAttention")
    path, reason = path_report._attention_path(cross, "flash_attention_2", cross=True)
    assert path == "sdpa" and "visual mask" in reason


def test_format_and_type_check():
    model, _ = hybrid_vlm.from_preset("mamba2-llava-tiny")
    text = path_report.format_compute_paths(path_report.compute_paths(model))
    assert "LM SSM layers (Mamba2Mixer)" in text and "x8" in text
    with pytest.raises(TypeError, match="nn.Module"):
        path_report.compute_paths("mamba2-llava-tiny")


def test_one_log_line_on_first_forward_per_device(caplog):
    model, _ = hybrid_vlm.from_preset("vamba-tiny")
    ids = torch.tensor([[1, 2, 3, 4]])
    with caplog.at_level(logging.INFO, logger="hybrid_vlm.path_report"):
        model(input_ids=ids)
        model(input_ids=ids)
    lines = [r.getMessage() for r in caplog.records if "compute paths on cpu" in r.getMessage()]
    assert len(lines) == 1
    assert "Vamba visual-stream SSM" in lines[0] and "LM self-attention" in lines[0]
    assert not path_report.announce_compute_paths(model.model.language_model)  # already said for cpu


def test_env_prints_the_paths_of_tiny_presets(capsys):
    from hybrid_vlm.cli.info import ENV_PATH_PRESETS, run_env

    assert run_env() == 0
    out = capsys.readouterr().out
    for name in ENV_PATH_PRESETS:
        assert f"compute paths of {name} on cpu" in out
    assert "Vamba visual-stream SSM" in out and "projector SSM" in out and "JambaMambaMixer" in out


# ------------------------------------------------------------------------------------ no wrapper-caused fallback


def record_sdpa(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append(
            {"mask": attn_mask, "causal": is_causal, "dtype": query.dtype, "q": query.shape[-2], "k": key.shape[-2]}
        )
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


def self_attention_calls(calls: list[dict]) -> list[tuple[bool, bool]]:
    """(mask given, is_causal) of each prefill self-attention call (queries and keys of the same length)."""
    return [(c["mask"] is not None, bool(c["causal"])) for c in calls if c["q"] == c["k"]]


@pytest.mark.parametrize("family", ["llava", "jamba", "vamba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wrapper_reaches_the_same_attention_path_as_the_bare_lm(family, dtype, monkeypatch):
    """Through our wrapper, with images and the all-ones mask generate() passes, the LM's self-attention reaches
    sdpa exactly as the bare LM does (no extra materialised mask that would keep sdpa off its fused kernels) and
    in the model's dtype (no upcast by our scattering of fp32 visual features, which would make flash-attention
    refuse)."""
    bench = bm.BenchModel.build(family, "tiny", dtype=dtype)
    model = bench.model
    ids, features = bench.inputs(24)
    mask = torch.ones_like(ids)
    calls = record_sdpa(monkeypatch)
    with torch.no_grad(), bm.fixed_visual_features(model, features.float()):
        model(input_ids=ids, pixel_values=bench._pixel_stub(), attention_mask=mask)
    wrapped = self_attention_calls(calls)
    layers = sum(type(m).__name__.endswith("Attention") and "Cross" not in type(m).__name__
                 for m in model.model.language_model.modules())
    assert len(wrapped) == layers >= 1
    assert {c["dtype"] for c in calls} == {dtype}
    if family == "vamba":  # our own decoder: no bare-LM twin; plain causal prefill must leave the mask to sdpa
        assert all(pair == (False, True) for pair in wrapped)
        return
    calls.clear()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        model.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
    assert wrapped == self_attention_calls(calls)
    if family == "llava":
        assert all(pair == (False, True) for pair in wrapped)


def test_kernels_are_left_on_when_usable(monkeypatch):
    """The 4.x Jamba switch only turns kernels off when they cannot run, never when they can."""
    model, _ = hybrid_vlm.from_preset("jamba-llava-tiny")
    lm = model.model.language_model
    mixers = [m for m in lm.modules() if type(m).__name__ == "JambaMambaMixer"]
    for mixer in mixers:
        mixer.use_fast_kernels = True
    fake_installed(monkeypatch, mamba_ssm=True, causal_conv1d=True)
    assert path_report.use_torch_ssm_path_where_needed(lm, "cuda") is False
    assert all(m.use_fast_kernels for m in mixers)
    assert path_report.use_torch_ssm_path_where_needed(lm, "cpu") is True
    assert not any(m.use_fast_kernels for m in mixers)


def test_torch_fallback_on_cuda_is_announced_as_a_warning(caplog):
    model, _ = hybrid_vlm.from_preset("mamba2-llava-tiny")
    with caplog.at_level(logging.INFO, logger="hybrid_vlm.path_report"):
        assert path_report.announce_compute_paths(model, CUDA)
        assert not path_report.announce_compute_paths(model, CUDA)
    [record] = [r for r in caplog.records if "compute paths on cuda" in r.getMessage()]
    assert record.levelno == logging.WARNING and "hybrid_vlm engine" in record.getMessage()


def test_transformers_kernel_fallback_lines_become_one_note(monkeypatch, caplog):
    """transformers logs one "falling back ... install mamba_ssm" line per kernel; we say it once, in our words."""
    from transformers.utils import logging as hf_logging

    streams = [h for h in hf_logging.get_logger().handlers if type(h) is logging.StreamHandler]  # transformers' own
    assert streams and all(any(isinstance(f, path_report.KernelFallbackFilter) for f in h.filters) for h in streams)
    monkeypatch.setattr(path_report, "_said_torch_ssm_path", False)
    fallback = path_report.KernelFallbackFilter()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.integrations.hub_kernels", logging.WARNING, __file__, 1, message, (),
                                 None)

    with caplog.at_level(logging.WARNING, logger="hybrid_vlm.path_report"):
        for name in ("mamba_chunk_scan_combined", "causal_conv1d_fn"):
            assert not fallback.filter(record(f"`{name}` is falling back to its reference PyTorch implementation "
                                              "because `mamba_ssm` is not installed. This is correct but slower."))
        assert not fallback.filter(record("The fast path is not available because one of `(selective_state_update, "
                                          "causal_conv1d_fn)` is None."))  # transformers 4.x
        assert fallback.filter(record("an unrelated warning"))  # everything else passes
    notes = [r.getMessage() for r in caplog.records if r.name == "hybrid_vlm.path_report"]
    assert len(notes) == 1 and "pure-PyTorch path" in notes[0] and "hybrid-vlm env" in notes[0]
