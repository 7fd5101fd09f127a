"""Examples run as written (with quick options that keep CI short; each also runs without them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
QUICK_ARGS = {
    "finetune_sft.py": ["--max-steps", "2"],
    "sft_images.py": ["--max-steps", "2"],
    "sft_videos.py": ["--max-steps", "2"],
    "lora.py": ["--max-steps", "2"],
    "two_stage_vamba.py": ["--max-steps", "2"],
    "push_to_hub.py": ["--folder", "{tmp}/hub-folder", "--max-shard-size", "500KB"],  # no --repo-id: no network
}
# What each example prints when it worked (beyond exiting 0).
EXPECTED = {
    "sft_images.py": "loss:",
    "sft_videos.py": "samples dropped for length: 0",
    "lora.py": "reloaded adapter vs merged model",
    "two_stage_vamba.py": "stage 'projector+lm'",
    "push_to_hub.py": "pipeline_tag: image-text-to-text",
}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in QUICK_ARGS.get(script.name, [])]
    # One thread: tiny models gain nothing from more, and a busy CI machine makes thread contention very slow.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=1800, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED.get(script.name, "") in result.stdout, result.stdout[-2000:]
    if script.name == "push_to_hub.py":
        folder = tmp_path / "hub-folder"
        assert (folder / "model.safetensors.index.json").is_file() and (folder / "modeling_hybrid_vlm.py").is_file()


def test_quickstart_help_does_not_run_it(tmp_path):
    # (the other examples parse their options before doing anything, with argparse)
    script = Path(__file__).parent.parent / "examples" / "quickstart.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "--help ran the script (it wrote files)"
    assert "parameters" not in result.stdout and "answer:" not in result.stdout


def test_sft_videos_refuses_a_folder_without_clips(tmp_path):
    script = Path(__file__).parent.parent / "examples" / "sft_videos.py"
    result = subprocess.run([sys.executable, str(script), "--video-dir", str(tmp_path), "--max-steps", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "holds no *.mp4 files" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
