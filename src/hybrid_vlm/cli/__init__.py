"""The `hybrid-vlm` command line. `registry` lists the subcommands; `main` builds the parser from it, importing a
command's module only when that command runs. `python -m hybrid_vlm.cli ...` is the same as `hybrid-vlm ...`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
