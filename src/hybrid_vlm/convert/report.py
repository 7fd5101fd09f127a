"""What a conversion did, tensor by tensor: the terminal summary and the converted folder's model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConversionReport", "conversion_model_card"]


@dataclass
class ConversionReport:
    """What a conversion did, tensor by tensor; also summarised in the model card."""

    kind: str
    source: str
    destination: str
    mapped: dict[str, str] = field(default_factory=dict)  # source name -> HybridVLM name
    dropped: dict[str, str] = field(default_factory=dict)  # source name -> rule (reason) that dropped it
    rule_counts: dict[str, int] = field(default_factory=dict)  # rule name -> tensors it handled
    missing: list[str] = field(default_factory=list)  # HybridVLM weights the source lacked (empty on success)
    tied: list[str] = field(default_factory=list)  # weights recreated by tying (e.g. lm_head.weight)
    notes: list[str] = field(default_factory=list)
    num_tensors: int = 0
    total_bytes: int = 0
    shards: list[str] = field(default_factory=list)
    dtype: str | None = None

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"converted {self.kind} checkpoint {self.source} -> {self.destination}",
            f"  {len(self.mapped)} tensors mapped ({self.total_bytes / 1e9:.3f} GB in {len(self.shards)} file(s), "
            f"dtype {self.dtype}), {len(self.dropped)} dropped by name",
        ]
        for source, reason in list(self.dropped.items())[:10]:
            lines.append(f"    dropped {source}: {reason}")
        if len(self.dropped) > 10:
            lines.append(f"    ... and {len(self.dropped) - 10} more")
        lines += [f"  tied: {name}" for name in self.tied]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def conversion_model_card(report: ConversionReport, config: Any, description: str) -> str:
    """The converted folder's README.md: how to load it, what was mapped by which rule, what was dropped and why."""
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(report.rule_counts.items()))
    dropped = "\n".join(f"- `{source}`: {reason}" for source, reason in report.dropped.items()) or "- none"
    notes = "\n".join(f"- {note}" for note in report.notes) or "- none"
    return f"""---
library_name: transformers
tags:
- hybrid_vlm
- image-text-to-text
---

# HybridVLM conversion of `{Path(report.source).name}`

Converted from a {description} checkpoint with `hybrid-vlm convert --from {report.kind}`
(`hybrid_vlm.convert`). Load it with the package installed:

```python
import hybrid_vlm  # registers the Auto classes
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{Path(report.destination).name}")
processor = AutoProcessor.from_pretrained("{Path(report.destination).name}")
```

- vision tower: `{config.vision_config.model_type}`, language model: `{config.text_config.model_type}`,
  decoder: `{config.decoder_type}`, dtype: `{report.dtype}`
- {len(report.mapped)} tensors ({report.total_bytes / 1e9:.3f} GB) mapped, every one bit-exact at its new name
  (only dtype casts and the layout changes listed below), {len(report.dropped)} dropped by a named rule.

## Mapping rules

| rule | tensors |
|---|---|
{rows}

## Dropped tensors

{dropped}

## Notes

{notes}
"""
