"""`accelerate launch` with 2 CPU processes (DDP, and FSDP2, over gloo) trains a tiny preset with SFTTrainer, and its
losses match a single process with the same global batch; the FSDP run's saved checkpoint reloads with the Auto classes
and holds the single process's weights.

About 90 s (four launches of Python + transformers + TRL), so it runs only with HYBRID_VLM_DISTRIBUTED=1; `.ci/run` sets
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


@pytest.mark.parametrize("preset", ["mamba2-llava-tiny"])
def test_two_process_fsdp_matches_one_process_and_its_checkpoint_reloads(preset, tmp_path):
    """FSDP2 on CPU (see `use_fsdp_on_cpu` in distributed_sft.py), wrapping `fsdp_wrap_classes(model)`, with the loss
    from the model's logits (`causal_lm_loss`; TRL's fused LM head leaves `lm_head`'s gradient unreduced there)."""
    import torch
    from transformers import AutoModelForImageTextToText

    import hybrid_vlm
    from hybrid_vlm.training import fsdp_wrap_classes

    wrap = ",".join(fsdp_wrap_classes(hybrid_vlm.from_preset(preset)[0]))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    common = ["--preset", preset, "--model-loss"]
    single = _run(
        [sys.executable, str(SCRIPT), str(tmp_path / "single.json"), *common, "--per-device-batch", "4",
         "--save", str(tmp_path / "single")],
        tmp_path / "single.json",
    )
    fsdp = _run(
        [
            accelerate, "launch", "--use_fsdp", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
            "--fsdp_transformer_layer_cls_to_wrap", wrap, "--fsdp_state_dict_type", "FULL_STATE_DICT",
            "--fsdp_reshard_after_forward", "true",
            str(SCRIPT), str(tmp_path / "fsdp.json"), *common, "--per-device-batch", "2", "--save", str(tmp_path / "fsdp"),
        ],
        tmp_path / "fsdp.json",
    )
    assert fsdp["world_size"] == 2 and fsdp["backend"] == "gloo"
    assert fsdp["distributed_type"].endswith("FSDP") and fsdp["fsdp_version"] == 2
    assert fsdp["sharded_parameters"] > 0  # really sharded, not DDP under another name
    assert single["losses"][0] != single["losses"][-1]
    for one, two in zip(single["losses"], fsdp["losses"], strict=True):
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5), (single["losses"], fsdp["losses"])
    reference = AutoModelForImageTextToText.from_pretrained(tmp_path / "single").state_dict()
    reloaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "fsdp", output_loading_info=True)
    assert type(reloaded).__name__ == "HybridVLMForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = reloaded.state_dict()
    assert state.keys() == reference.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, reference[name], atol=1e-4, rtol=1e-4, msg=name)
