"""The `hybrid-vlm` command line. `registry` lists the subcommands; `parser` builds the parser from it, importing a
command's module only when that command runs. `python -m hybrid_vlm.cli ...` is the same as `hybrid-vlm ...`."""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it, imported on first use (so importing one module of the package
# does not import the others).
_PUBLIC_NAMES: dict[str, str] = {"build_parser": ".parser", "main": ".parser"}

__all__ = sorted(_PUBLIC_NAMES)


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
