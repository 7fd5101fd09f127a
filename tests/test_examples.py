"""Examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# Options that keep CI short; each example also runs as written without them.
QUICK_ARGS = {"finetune_sft.py": ["--max-steps", "2"]}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script):
    command = [sys.executable, str(script), *QUICK_ARGS.get(script.name, [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
