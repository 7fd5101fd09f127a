"""`accelerate launch` with 2 CPU processes (DDP over gloo) trains a tiny preset with SFTTrainer, and its losses match
a single process with the same global batch.

About 45 s (two launches of Python + transformers + TRL), so it runs only with HYBRID_VLM_DISTRIBUTED=1; `.ci/run` sets
it. `accelerate launch --cpu --num_processes 2` would need mpirun (accelerate's multi-CPU launcher); `--multi_gpu` is
accelerate's torchrun launcher, which on a machine without CUDA starts CPU processes joined by gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

SCRIPT = Path(__file__).parent / "distributed_sft.py"
pytestmark = pytest.mark.skipif(
    os.environ.get("HYBRID_VLM_DISTRIBUTED") != "1", reason="slow (about 45 s): set HYBRID_VLM_DISTRIBUTED=1"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], output: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(output.read_text())


@pytest.mark.parametrize("preset", ["mamba2-llava-tiny"])
def test_two_process_ddp_matches_one_process(preset, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    single = _run(
        [sys.executable, str(SCRIPT), str(tmp_path / "single.json"), "--preset", preset, "--per-device-batch", "4"],
        tmp_path / "single.json",
    )
    ddp = _run(
        [
            accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            str(SCRIPT), str(tmp_path / "ddp.json"), "--preset", preset, "--per-device-batch", "2",
        ],
        tmp_path / "ddp.json",
    )
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert ddp["backend"] == "gloo" and "MULTI" in ddp["distributed_type"]
    assert single["global_batch"] == ddp["global_batch"] == 4
    assert len(single["losses"]) == len(ddp["losses"]) == 3
    assert single["losses"][0] != single["losses"][-1]  # it trained
    for one, two in zip(single["losses"], ddp["losses"]):
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5), (single["losses"], ddp["losses"])
