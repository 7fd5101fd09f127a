"""Reports: plain-text tables, CSV files, and the header line every report starts with."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..compat import TRANSFORMERS_VERSION
from .models import SIZES


def rows_of(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Dataclass results as dicts (dicts pass through)."""
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-" if math.isnan(value) else str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> str:
    """Plain-text table with aligned columns (numbers right-aligned, NaN as '-')."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [title] if title else []
    lines += [render(columns), render(["-" * w for w in widths]), *(render(line) for line in cells)]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """All rows to one CSV (columns: the union of keys, first-seen order); raw numbers, NaN as empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )
    return path


def _cpu_name() -> str:
    """The CPU's model name (lscpu's "Model name"), for reports."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def header_line(device: torch.device, dtype: str, size: str, repeats: int, stat: str) -> str:
    """Device, threads, size, repetitions and library versions: the first line of every report."""

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    shape = SIZES[size]
    return (
        f"hybrid_vlm bench: device {device} ({where}, {torch.get_num_threads()} torch threads), dtype {dtype}, size "
        f"{size} (hidden {shape.hidden_size}, {shape.num_hidden_layers} layers), repeats {repeats} ({stat}); "
        f"torch {torch.__version__}, transformers {TRANSFORMERS_VERSION}"
    )
