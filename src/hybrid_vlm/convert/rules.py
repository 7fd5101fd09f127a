"""Step 2 of a conversion: named rules that rename (or drop, with a reason) every source tensor, and the plan they
make. A name no rule covers is a leftover, which the conversion refuses unless the caller allows it."""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import ConversionError

__all__ = ["MappingPlan", "Rule", "Target", "common_drop_rules", "pad_rows", "plan_mapping", "to_scalar"]

Target = str | Callable[[re.Match[str]], str | None] | None


@dataclass(frozen=True)
class Rule:
    """One named mapping rule: a regex over source names and what happens to a match.

    ``target`` is a ``re`` replacement template, a function of the match returning the new name (None: the rule
    does not apply after all), or None to drop the tensor; dropping always needs a reason, which is the rule's
    ``name``. ``transform`` changes a tensor's layout only (reshape, row padding): it must be exact.
    """

    name: str
    pattern: re.Pattern[str]
    target: Target
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def rename(
        cls, name: str, pattern: str, target: str | Callable[[re.Match[str]], str | None],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Rule:
        return cls(name, re.compile(pattern), target, transform)

    @classmethod
    def drop(cls, reason: str, pattern: str) -> Rule:
        return cls(reason, re.compile(pattern), None)

    def apply(self, name: str) -> tuple[bool, str | None]:
        """(matched, new name or None for a drop)."""
        match = self.pattern.search(name)
        if match is None:
            return False, None
        if self.target is None:
            return True, None
        new = self.target(match) if callable(self.target) else match.expand(self.target)
        if new is None:
            return False, None
        return True, new


@dataclass
class MappingPlan:
    """Where every source tensor goes: renamed (with its rule), dropped (with the reason) or left over."""

    mapped: dict[str, tuple[str, Rule]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def plan_mapping(
    names: Iterable[str], rules: Sequence[Rule], allow_unused: Sequence[str] = (),
    known_targets: Container[str] | None = None,
) -> MappingPlan:
    """Run every name through the rules (first match wins). With `known_targets`, a rename to a name the target
    model does not have does not count as a match (an unknown tensor inside a renamed prefix is a leftover, not a
    silent extra). Leftovers matching ``allow_unused`` are dropped and recorded as such; the others stay leftovers
    for the caller to refuse."""
    allowed = [re.compile(p) for p in allow_unused]
    plan = MappingPlan()
    for name in names:
        for rule in rules:
            matched, new = rule.apply(name)
            if not matched or (new is not None and known_targets is not None and new not in known_targets):
                continue
            if new is None:
                plan.dropped[name] = rule.name
            else:
                plan.mapped[name] = (new, rule)
            break
        else:
            pattern = next((p.pattern for p in allowed if p.search(name)), None)
            if pattern is None:
                plan.leftovers.append(name)
            else:
                plan.dropped[name] = f"allowed by allow_unused {pattern!r}"
    return plan


def common_drop_rules() -> list[Rule]:
    """Buffers some checkpoints carry that every model recomputes from its config."""
    return [
        Rule.drop("position_ids buffer of the vision embeddings (rebuilt from the config on load)",
                  r"(^|\.)vision_tower\..*embeddings\.position_ids$"),
        Rule.drop("rotary inv_freq buffer (recomputed from the config on load)", r"\.rotary_emb\.inv_freq$"),
    ]


def pad_rows(rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Append zero rows (new placeholder tokens: their embeddings are replaced by visual features, and generation
    suppresses them, so no trained value is needed)."""

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, tensor.new_zeros((rows, *tensor.shape[1:]))], dim=0)

    return pad


def to_scalar(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() != 1:
        raise ConversionError(f"expected a one-element tensor, got shape {tuple(tensor.shape)}.")
    return tensor.reshape(())
