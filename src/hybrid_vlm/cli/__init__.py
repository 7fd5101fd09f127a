"""The `hybrid-vlm` command line. `registry` lists the subcommands; `parser` builds the parser from it, importing a
command's module only when that command runs. `python -m hybrid_vlm.cli ...` is the same as `hybrid-vlm ...`."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first use (so importing one module of the package
# does not import the others).
_PUBLIC_NAMES: dict[str, str] = {"build_parser": ".parser", "main": ".parser"}

__all__ = sorted(_PUBLIC_NAMES)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES, globals())
