"""How much `import hybrid_vlm` costs next to `import torch, transformers`, measured side by side.

Each statement runs in a fresh interpreter, the statements take turns (so a slow minute hits all of them), and the
table reports the minimum and the median wall time of `--runs` rounds plus the ratio of medians to the baseline.

    python benchmarks/import_time.py --runs 10
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

BASELINE = "import torch, transformers"
STATEMENTS = {
    "import torch, transformers": [sys.executable, "-c", BASELINE],
    "import hybrid_vlm": [sys.executable, "-c", "import hybrid_vlm"],
    "from hybrid_vlm import HybridVLMConfig": [sys.executable, "-c", "from hybrid_vlm import HybridVLMConfig"],
    "import hybrid_vlm; AutoConfig lookup": [
        sys.executable, "-c",
        "import hybrid_vlm; from transformers import AutoConfig; AutoConfig.for_model('hybrid_vlm')",
    ],
    "from transformers import PreTrainedModel (model code)": [
        sys.executable, "-c", "import torch; from transformers import PreTrainedModel",
    ],
    "from hybrid_vlm import HybridVLMForConditionalGeneration": [
        sys.executable, "-c", "from hybrid_vlm import HybridVLMForConditionalGeneration",
    ],
}


def _wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (each runs every statement once)")
    args = parser.parse_args(argv)
    statements = dict(STATEMENTS)
    cli = shutil.which("hybrid-vlm", path=str(Path(sys.executable).parent)) or shutil.which("hybrid-vlm")
    if cli is not None:
        statements["hybrid-vlm --help"] = [cli, "--help"]
    for command in statements.values():  # warm the file cache; not counted
        _wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in statements}
    for _ in tqdm(range(args.runs), desc="rounds"):
        for name, command in statements.items():
            times[name].append(_wall_time(command))
    baseline = statistics.median(times[BASELINE])
    width = max(map(len, statements))
    print(f"\n{'statement':<{width}}  {'min s':>7}  {'median s':>8}  {'/ baseline':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<{width}}  {min(values):7.2f}  {median:8.2f}  {median / baseline:10.2f}")


if __name__ == "__main__":
    main()
