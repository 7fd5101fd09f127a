"""The benchmark machinery: it runs on tiny models and returns well-formed, self-consistent results.

Nothing here asserts a speed or a memory saving (those belong in benchmark runs, not in tests on shared CI CPUs);
the assertions are about shapes of the output, ratios being computed from the measured numbers, and the fits and
searches being exact on synthetic data.
"""

from __future__ import annotations

import argparse
import csv
import math
import runpy

import pytest
import torch

from hybrid_vlm import benchmark as bm
from hybrid_vlm.anyres import anyres_token_count
from hybrid_vlm.benchmark import cli as bench_cli
from hybrid_vlm.benchmark import sweeps
from hybrid_vlm.presets import preset_config
from hybrid_vlm.token_counts import VisualTokenSpec

FAST = bm.BenchSettings(size="tiny", repeats=1, warmup=0, decode_tokens=2, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU the threads' spin-waits make each
    op 10-30x slower; one thread keeps this module at a few seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ pure functions


@pytest.mark.parametrize("exponent", [1.0, 2.0, 1.5, 0.5])
def test_power_law_fit_recovers_a_known_exponent(exponent):
    tokens = [256, 512, 1024, 2048, 4096]
    times = [3e-7 * n**exponent for n in tokens]
    k, c = bm.fit_power_law(tokens, times)
    assert k == pytest.approx(exponent, abs=1e-12)
    assert c == pytest.approx(3e-7, rel=1e-9)


def test_power_law_fit_needs_two_usable_points():
    assert math.isnan(bm.fit_power_law([128], [1.0])[0])
    assert math.isnan(bm.fit_power_law([128, 128], [1.0, 2.0])[0])
    k, _ = bm.fit_power_law([100, 200, 400], [1.0, float("nan"), 16.0])  # the NaN point is dropped
    assert k == pytest.approx(2.0)


def test_growth_exponents_per_model_and_tail():
    def result(model, n, t):
        return bm.InferenceResult(model, model, f"tokens={n}", n, n + 30, t, 1.0, 1.0, 10, 1)

    results = [result("quad", n, 1e-6 * n**2) for n in (100, 200, 400, 800)]
    results += [result("mixed", n, 1.0 + 1e-3 * n) for n in (100, 200, 400, 800)]
    rows = {r["model"]: r for r in bm.growth_exponents(results, "prefill_s", tail=2)}
    assert rows["quad"]["exponent"] == pytest.approx(2.0) and rows["quad"]["exponent_last2"] == pytest.approx(2.0)
    assert rows["quad"]["points"] == 4 and (rows["quad"]["tokens_from"], rows["quad"]["tokens_to"]) == (100, 800)
    # a fixed cost flattens the small end: the tail exponent is closer to the asymptotic 1 than the global one
    assert rows["mixed"]["exponent"] < rows["mixed"]["exponent_last2"] < 1.0


def test_memory_fit_and_budget_are_exact_on_synthetic_peaks():
    tokens = [256, 512, 1024, 2048]
    quadratic = [50 + 0.01 * n + 1e-5 * n * n for n in tokens]
    a, b, c = bm.fit_memory_model(tokens, quadratic)
    assert (a, b, c) == pytest.approx((50, 0.01, 1e-5), rel=1e-6)
    n = bm.tokens_within((a, b, c), 1000.0)
    assert 50 + 0.01 * n + 1e-5 * n * n == pytest.approx(1000.0)
    linear = [20 + 0.5 * n for n in tokens]
    assert bm.fit_memory_model(tokens, linear)[2] == 0.0
    assert bm.tokens_within((20, 0.5, 0.0), 1020.0) == pytest.approx(2000.0)
    assert bm.tokens_within((2000, 0.5, 0.0), 1000.0) == 0.0
    assert bm.tokens_within((20, 0.0, 0.0), 1000.0) == math.inf
    # a rounding-level quadratic term must not wreck the answer (the textbook root formula cancels catastrophically)
    assert bm.tokens_within((16.23, 0.0577, 8.5e-22), 1024.0) == pytest.approx((1024.0 - 16.23) / 0.0577)
    exact_line = [16.23 + 0.0577 * n for n in (1024, 2048, 4096, 8192, 16384)]
    assert bm.fit_memory_model((1024, 2048, 4096, 8192, 16384), exact_line)[2] == 0.0


def test_estimate_max_tokens_rounds_down_to_whole_frames():
    results = [
        bm.InferenceResult("m", "m", f"frames={f}", f * 16, f * 16 + 30, 1.0, 1.0, 100 + 0.25 * f * 16, 10, 1, frames=f)
        for f in (8, 16, 32)
    ]
    budget = bm.estimate_max_tokens(results, budget_mib=1100.0, tokens_per_frame=16)
    assert budget.max_tokens == 4000 and budget.max_frames == 250  # 100 + 0.25 n = 1100 -> n = 4000
    assert budget.method.startswith("estimate (linear fit, 3 points")


@pytest.mark.parametrize("threshold", [0, 7, 96, 100, 1000, 4096])
def test_search_max_tokens_finds_the_largest_fitting_multiple(threshold):
    calls = []

    def fits(n):
        calls.append(n)
        return n <= threshold

    found = bm.search_max_tokens(fits, start=64, limit=4096, step=8)
    assert found == (threshold // 8) * 8
    assert all(n % 8 == 0 and 8 <= n <= 4096 for n in calls)
    assert len(calls) <= 2 * math.ceil(math.log2(4096 / 8)) + 2


def test_token_counts_of_frames_and_anyres_resolutions():
    assert bm.frames_to_tokens(256) == 256 * 144
    assert [p.visual_tokens for p in bm.frame_points([8, 16], tokens_per_frame=10)] == [80, 160]
    spec = VisualTokenSpec(patch_size=14, num_prefix_tokens=1)
    assert bm.anyres_resolution_tokens(672) == anyres_token_count(spec, (672, 672), (2, 2), (336, 336))
    # 2x2 tiles of 24x24 patches, one newline per row of the stitched 48x48 grid, and the 576-token global view
    assert bm.anyres_resolution_tokens(672) == 48 * 48 + 48 + 576
    assert bm.anyres_resolution_tokens(4368) == 312 * 312 + 312 + 576
    tokens = [p.visual_tokens for p in bm.resolution_points([672, 1344, 2688, 4368])]
    assert tokens == sorted(tokens) and [p.label for p in bm.resolution_points([672])] == ["672px"]


def test_memory_tracker_counts_live_storages_once():
    weights = torch.zeros(1000)
    with bm.TensorMemoryTracker([weights]) as tracker:
        a = torch.ones(256, 256)  # 256 KiB
        view = a[:10].t()  # a view: same storage, not counted again
        b = a * 2  # another 256 KiB
        weights.add_(1)  # in-place on an existing tensor: not counted
        del b
        c = torch.ones(128, 128)  # 64 KiB, after b is freed
    assert tracker.peak == 2 * 256 * 256 * 4
    assert tracker.current == 256 * 256 * 4 + 128 * 128 * 4
    assert view.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() and c.numel() == 128 * 128


def test_memory_tracker_names_what_is_alive_at_the_peak():
    with bm.TensorMemoryTracker(record_peak=True) as tracker:
        a = torch.ones(256, 256)
        b = a * 2  # the peak: a and b alive
        del b
        c = torch.zeros(64, 64)  # after the peak: not in the breakdown
    rows = tracker.peak_breakdown()
    assert {(r["op"], r["shape"], r["count"]) for r in rows} == {("ones", "256x256", 1), ("mul", "256x256", 1)}
    assert sum(r["mib"] for r in rows) * bm.MIB == tracker.peak and c.numel() == 64 * 64


def test_table_and_csv(tmp_path):
    rows = [{"model": "a", "n": 1024, "t": 0.1234, "x": float("nan")}, {"model": "bb", "n": 8, "t": 12345.6}]
    table = bm.format_table(rows, title="T")
    lines = table.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["model", "n", "t", "x"]
    assert "1,024" in table and "0.123" in table and "12,346" in table and lines[3].rstrip().endswith("-")
    path = bm.write_csv(rows, tmp_path / "sub" / "rows.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert read[0] == {"model": "a", "n": "1024", "t": "0.1234", "x": ""} and read[1]["x"] == ""


# ------------------------------------------------------------------------------------------------ models


def test_sizes_give_every_family_the_same_width_and_depth():
    for size in ("tiny", "small", "1b"):
        shapes = set()
        for family in bm.FAMILY_PRESETS:
            config = preset_config(bm.family_preset(family), **bm.size_overrides(family, size))
            shapes.add((config.text_config.hidden_size, config.text_config.num_hidden_layers))
        assert shapes == {(bm.SIZES[size].hidden_size, bm.SIZES[size].num_hidden_layers)}


def test_mambavlm_family_is_a_mamba1_lm_of_the_size():
    config = preset_config(bm.family_preset("mambavlm"), **bm.size_overrides("mambavlm", "small"))
    text = config.text_config
    assert text.model_type == "mamba" and config.vision_fusion == "sequence"
    assert (text.hidden_size, text.intermediate_size, text.state_size, text.time_step_rank) == (128, 256, 16, 8)
    with pytest.raises(ValueError, match="no MLP"):
        bm.size_overrides("mambavlm", "small", intermediate_size=64)


def test_generation_speed_is_consistent_with_its_timings():
    bench = bm.BenchModel.build("mambavlm", "tiny")
    result = bm.measure_generation(bench, 12, output_tokens=4, repeats=1)
    assert (result.visual_tokens, result.output_tokens, result.seq_len) == (12, 4, 12 + bench.prompt_length)
    assert result.decode_tok_s == pytest.approx(3 / result.decode_s)
    assert result.e2e_tok_s == pytest.approx(4 / (result.prefill_s + result.decode_s))
    assert bench.describe()["lm_type"] == "mamba" and bench.describe()["ssm_path"] == "engine"
    with pytest.raises(ValueError, match="output_tokens"):
        bm.measure_generation(bench, 12, output_tokens=1)


def test_matched_parameter_baseline():
    target = bm.lm_parameter_count("vamba", "tiny")
    width = bm.matched_intermediate_size("llava", target, "tiny")
    per_unit = bm.lm_parameter_count("llava", "tiny", width + 1) - bm.lm_parameter_count("llava", "tiny", width)
    assert abs(bm.lm_parameter_count("llava", "tiny", width) - target) <= per_unit / 2
    assert bm.matched_intermediate_size("llava", 10, "tiny") is None
    specs = bm.model_specs(["vamba", "mamba2"], "llava", "tiny", match_params=True)
    assert [s.name for s in specs] == ["vamba", "mamba2", "llava~vamba", "llava~mamba2"]
    assert bm.baseline_of(specs) == {"vamba": "llava~vamba", "mamba2": "llava~mamba2"}
    plain = bm.model_specs(["jamba", "vamba"], "llava")
    assert bm.baseline_of(plain) == {"jamba": "llava", "vamba": "llava"}


def test_large_size_counts_on_meta_only():
    # ~1.1B-parameter baseline of the papers' shapes, counted without allocating it
    assert 1.0e9 < bm.lm_parameter_count("llava", "1b") < 1.3e9


@pytest.fixture(scope="module")
def inference_sweep():
    specs = bm.model_specs(["jamba", "vamba"], "llava")
    points = bm.token_points([16, 8])
    return bm.run_inference_sweep(specs, points, FAST)


def test_inference_sweep_is_well_formed(inference_sweep):
    results, described = inference_sweep
    assert [d["model"] for d in described] == ["jamba", "vamba", "llava"]
    assert {d["hidden"] for d in described} == {64} and {d["layers"] for d in described} == {8}
    assert [(r.model, r.visual_tokens) for r in results] == [
        (m, n) for m in ("jamba", "vamba", "llava") for n in (8, 16)  # sorted by size per model
    ]
    for r in results:
        assert r.status == "ok" and r.repeats == 1
        assert r.prefill_s > 0 and r.decode_tok_s > 0 and r.peak_mem_mib > 0
        assert r.seq_len > r.visual_tokens  # the text prompt is around the visual tokens
    by_model = {r.model: r for r in results if r.visual_tokens == 16}
    # the same visual tokens reach every model: equal sequence lengths
    assert len({r.seq_len for r in by_model.values()}) == 1
    # peak memory includes the weights, so it is at least their size
    assert by_model["llava"].peak_mem_mib * bm.MIB >= by_model["llava"].lm_params * 4


def test_ratios_come_from_the_measured_numbers(inference_sweep):
    results, _ = inference_sweep
    rows = bm.ratio_rows(results, {"jamba": "llava", "vamba": "llava"}, bm.INFERENCE_METRICS)
    assert len(rows) == 4 and {r["baseline"] for r in rows} == {"llava"}
    index = {(r.model, r.visual_tokens): r for r in results}
    for row in rows:
        hybrid, base = index[(row["model"], row["visual_tokens"])], index[("llava", row["visual_tokens"])]
        assert row["prefill_s_ratio"] == hybrid.prefill_s / base.prefill_s
        assert row["decode_tok_s_ratio"] == hybrid.decode_tok_s / base.decode_tok_s
        assert row["peak_mem_mib_ratio"] == hybrid.peak_mem_mib / base.peak_mem_mib
        assert row["params_ratio"] == hybrid.lm_params / base.lm_params


def test_training_sweep_is_well_formed():
    specs = bm.model_specs(["mamba2"], "llava")
    results, _ = bm.run_training_sweep(specs, bm.frame_points([2], tokens_per_frame=4), FAST)
    assert [(r.model, r.label, r.visual_tokens, r.frames) for r in results] == [
        ("mamba2", "frames=2", 8, 2), ("llava", "frames=2", 8, 2)
    ]
    assert all(r.step_s > 0 and r.peak_mem_mib > 0 and r.status == "ok" for r in results)


def test_sweep_skips_after_oom_and_time_limit(monkeypatch):
    calls = []

    def fake_measure(bench, point, *args, **kwargs):
        calls.append(point.visual_tokens)
        if point.visual_tokens >= 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return bm.InferenceResult(bench.name, bench.family, point.label, point.visual_tokens, 0, 5.0, 1.0, 1.0, 1, 1)

    monkeypatch.setattr(sweeps, "measure_inference", fake_measure)
    specs = [bm.ModelSpec("llava", "llava")]
    points = bm.token_points([8, 16, 32, 64])
    results, _ = bm.run_inference_sweep(specs, points, FAST)
    assert [r.status for r in results] == ["ok", "ok", "oom", "oom"] and calls == [8, 16, 32]
    calls.clear()
    limited = bm.BenchSettings(**{**vars(FAST), "time_limit_s": 1.0})
    results, _ = bm.run_inference_sweep(specs, points, limited)
    assert [r.status for r in results] == ["ok", "skipped (>1s)", "skipped (>1s)", "skipped (>1s)"]
    assert calls == [8] and math.isnan(results[1].prefill_s)


def test_bench_command_writes_csv_and_prints_tables(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="hybrid-vlm")
    bm.add_bench_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "bench", "--families", "mamba2", "--baseline", "llava", "--size", "tiny", "--frames", "2,4",
        "--tokens-per-frame", "4", "--repeats", "1", "--warmup", "0", "--decode-tokens", "1", "--no-progress",
        "--mode", "both", "--out", str(tmp_path),
    ])
    assert bm.run_bench(args) == 0
    out = capsys.readouterr().out
    for heading in ("models", "inference vs frames", "hybrid / baseline", "growth exponent", "largest input",
                    "training step vs frames"):
        assert heading in out
    for stem in ("inference_frames", "training_frames"):
        for suffix in ("", "_ratios", "_exponents", "_budget"):
            assert (tmp_path / f"{stem}{suffix}.csv").is_file()
        assert (tmp_path / f"{stem}.png").is_file() or "matplotlib is not installed" in out
    with (tmp_path / "inference_frames.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["label"]) for r in rows] == [
        ("mamba2", "frames=2"), ("mamba2", "frames=4"), ("llava", "frames=2"), ("llava", "frames=4")
    ]
    assert {"prefill_s", "decode_tok_s", "peak_mem_mib", "lm_params", "visual_tokens"} <= set(rows[0])
    with (tmp_path / "inference_frames_ratios.csv").open() as handle:
        ratios = list(csv.DictReader(handle))
    assert [r["label"] for r in ratios] == ["frames=2", "frames=4"]
    measured = {(r["model"], r["label"]): float(r["prefill_s"]) for r in rows}
    assert float(ratios[0]["prefill_s_ratio"]) == pytest.approx(
        measured[("mamba2", "frames=2")] / measured[("llava", "frames=2")]
    )
    with (tmp_path / "inference_frames_budget.csv").open() as handle:
        budget = list(csv.DictReader(handle))
    assert {r["model"] for r in budget} == {"mamba2", "llava"}
    assert all(int(r["max_frames"]) == int(r["max_tokens"]) // 4 for r in budget)


def test_quick_fills_only_defaulted_options():
    parser = bm.add_bench_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--repeats", "2"])
    bench_cli._apply_quick(args)
    assert args.tokens == bm.QUICK["tokens"] and args.repeats == 2 and args.size == "small"
    args = parser.parse_args(["--quick", "--frames", "8,16"])
    bench_cli._apply_quick(args)
    assert args.tokens is None and [a for a, *_ in bench_cli._axes(args)] == ["frames"]


# ------------------------------------------------------------------------------------------------ scripts


def run_script(name: str, argv: list[str]) -> int:
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / name
    return runpy.run_path(str(script))["main"](argv)


def test_mambavlm_decode_script_writes_the_table_4_comparison(tmp_path, capsys):
    argv = ["--size", "tiny", "--output-tokens", "3", "--repeats", "1", "--visual-tokens", "10",
            "--baseline-visual-tokens", "4", "--out", str(tmp_path)]
    assert run_script("bench_mambavlm_decode.py", argv) == 0
    out = capsys.readouterr().out
    assert "mambavlm@10 / llava@4" in out and "paper, Table 4" in out
    with (tmp_path / "mambavlm_decode.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["visual_tokens"], r["output_tokens"]) for r in rows] == [
        ("mambavlm", "10", "3"), ("llava", "4", "3"), ("llava", "10", "3")
    ]


def test_vamba_frames_script_compares_vamba_with_the_baseline(tmp_path, capsys):
    argv = ["--size", "tiny", "--frames", "1,2", "--tokens-per-frame", "4", "--repeats", "1", "--warmup", "0",
            "--decode-tokens", "1", "--no-progress", "--out", str(tmp_path)]
    assert run_script("bench_vamba_frames.py", argv) == 0
    with (tmp_path / "inference_frames_ratios.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["baseline"], r["visual_tokens"]) for r in rows] == [("vamba", "llava", "4"),
                                                                              ("vamba", "llava", "8")]
    assert "frames=2" in capsys.readouterr().out


def test_ssm_paths_script_compares_torch_with_reference(capsys):
    assert run_script("bench_ssm_paths.py", ["--size", "tiny", "--lengths", "8,24", "--repeats", "1",
                                              "--reference-max", "8"]) == 0
    out = capsys.readouterr().out
    assert "torch/reference_fwd" in out and "automatic path here: torch" in out


def test_plot_labels_the_measured_sizes_and_marks_skipped_points(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import math

    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    results = []
    for model, factor in (("hybrid", 1.0), ("baseline", 2.0)):
        for tokens in (256, 512, 1024, 2048):
            skipped = model == "baseline" and tokens == 2048
            value = math.nan if skipped else factor * tokens / 1000
            results.append(bm.InferenceResult(model, model, model, tokens, tokens + 8, value, value, value, 10, 1,
                                              "skipped (>60s)" if skipped else "ok"))
    assert bm.plot_results(results, ["prefill_s"], tmp_path / "p.png").is_file()
    (axis,) = figures[0].axes
    assert [label.get_text() for label in axis.get_xticklabels()] == ["256", "512", "1024", "2048"]
    assert not axis.xaxis.get_minorticklocs().size  # no minor labels to overlap
    marks = [c for c in axis.collections if len(c.get_offsets()) and c.get_offsets()[0][0] == 2048]
    assert len(marks) == 1  # the skipped baseline point is drawn, not dropped
    assert any("skipped" in text.get_text() for text in axis.get_legend().get_texts())
