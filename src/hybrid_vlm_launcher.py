"""The `hybrid-vlm` command: checks a `generate` / `train` model argument before the package (and torch) is imported.

Importing hybrid_vlm takes seconds (torch, transformers); a mistyped model name should not. The check loads
`hybrid_vlm/cli/model_args.py` by path (standard library only); everything else is `hybrid_vlm.cli.main`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


def _model_args():
    spec = importlib.util.find_spec("hybrid_vlm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "cli" / "model_args.py"
    module_spec = importlib.util.spec_from_file_location("_hybrid_vlm_model_args", path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    model_args = _model_args()
    problem = model_args.quick_check(arguments) if model_args is not None else None
    if problem is not None:
        print(f"error: {' '.join(problem.split())}", file=sys.stderr)
        return 2
    from hybrid_vlm.cli import main as cli_main

    return cli_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
