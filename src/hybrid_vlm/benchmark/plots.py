"""PNG plots of sweep results (matplotlib is optional: without it the CSV files hold the same numbers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .measure import InferenceResult, TrainingResult


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_results(
    results: Sequence[InferenceResult | TrainingResult], metrics: Sequence[str], path: str | Path, title: str = ""
) -> Path | None:
    """One log-log panel per metric against visual tokens, a line per model. None (with a message) when
    matplotlib is not installed: plots are optional, the CSV holds the same numbers."""
    plt = pyplot()
    if plt is None:
        print(f"matplotlib is not installed: skipped {Path(path).name} (pip install matplotlib for plots)")
        return None
    labels = {
        "prefill_s": "prefill time (s)",
        "decode_tok_s": "decode tokens/s",
        "peak_mem_mib": "peak memory (MiB)",
        "step_s": "training step time (s)",
    }
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    measured_x = sorted({r.visual_tokens for r in results})
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.4), squeeze=False)
    any_skipped = False
    for axis, metric in zip(axes[0], metrics):
        skipped_points = []  # (x, colour, status) of points that were not measured
        for model in dict.fromkeys(r.model for r in results):
            own = sorted((r for r in results if r.model == model), key=lambda r: r.visual_tokens)
            finite = [r for r in own if math.isfinite(getattr(r, metric))]
            colour = None
            if finite:
                (line,) = axis.plot([r.visual_tokens for r in finite], [getattr(r, metric) for r in finite],
                                    marker="o", label=model)
                colour = line.get_color()
            missing = [r for r in own if not math.isfinite(getattr(r, metric))]
            if missing and colour is None:
                colour = axis.plot([], [], marker="o", label=f"{model} (nothing measured)")[0].get_color()
            skipped_points += [(r.visual_tokens, colour, r.status) for r in missing]
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        # Ticks at exactly the measured sizes, labelled as plain numbers; no minor labels to overlap.
        axis.xaxis.set_major_locator(FixedLocator(measured_x))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if len(measured_x) > 6:
            axis.tick_params(axis="x", labelrotation=45)
        if skipped_points:
            any_skipped = True
            bottom = axis.get_ylim()[0]
            for x, colour, _status in skipped_points:  # on the bottom edge, in the model's colour
                axis.scatter([x], [bottom], marker="x", s=60, color=colour, clip_on=False, zorder=5)
            axis.scatter([], [], marker="x", color="grey", label="skipped (see the CSV's status)")
        axis.set_xlabel("visual tokens (measured sizes)")
        axis.set_ylabel(labels.get(metric, metric))
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize="small")
    if any_skipped and not title:
        title = "x on the bottom edge: not measured (skipped)"
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
