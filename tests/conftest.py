"""Shared tiny builders. Every model here is random and builds in well under a second on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig

from hybrid_vlm.configuration_hybrid_vlm import HybridVLMConfig
from hybrid_vlm.modeling_hybrid_vlm import HybridVLMForConditionalGeneration

IMAGE_TOKEN_ID = 99
VOCAB = 100
PAD_ID = 0

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
)

# Small language models of every family the issue names; each works with the wrapper.
TEXT_CONFIGS = {
    "jamba": dict(
        model_type="jamba", hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
        expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4,
    ),
    "mamba2": dict(
        model_type="mamba2", hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=8, n_groups=1,
        chunk_size=4,
    ),
    "llama": dict(
        model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
CORE_LMS = list(TEXT_CONFIGS)


def tiny_config(lm: str = "llama", **overrides) -> HybridVLMConfig:
    text = dict(TEXT_CONFIGS[lm]) if isinstance(lm, str) else dict(lm)
    text.update(vocab_size=VOCAB, pad_token_id=PAD_ID)
    text.update(overrides.pop("text", {}))
    vision = CLIPVisionConfig(**{**TINY_VISION, **overrides.pop("vision", {})})
    overrides.setdefault("image_token_id", IMAGE_TOKEN_ID)
    return HybridVLMConfig(vision_config=vision, text_config=text, **overrides)


def tiny_model(lm: str = "llama", seed: int = 0, **overrides) -> HybridVLMForConditionalGeneration:
    torch.manual_seed(seed)
    return HybridVLMForConditionalGeneration(tiny_config(lm, **overrides)).eval()


def tokens_per_image() -> int:
    return (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2


def prompt(*parts: int | str) -> list[int]:
    """Token ids where the string "img" stands for one image's expanded placeholder run."""
    ids: list[int] = []
    for part in parts:
        ids.extend([IMAGE_TOKEN_ID] * tokens_per_image() if part == "img" else [part])
    return ids


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def assert_same_continuation(batched_row: torch.Tensor, single: torch.Tensor) -> None:
    """A batched row generated the same tokens as the prompt alone; it may be padded after an early EOS."""
    assert batched_row[: len(single)].tolist() == single.tolist()
    assert set(batched_row[len(single) :].tolist()) <= {PAD_ID}


GREEDY = dict(do_sample=False, suppress_tokens=[IMAGE_TOKEN_ID], pad_token_id=PAD_ID)


def _other_pythons() -> list[str]:
    """Interpreters of the other transformers releases CI tests (`HYBRID_VLM_OTHER_PYTHON`, os.pathsep-separated)."""
    return [path for path in os.environ.get("HYBRID_VLM_OTHER_PYTHON", "").split(os.pathsep) if path]


def _release_id(path: str | None) -> str:
    return Path(path).parent.parent.name if path else "none"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every cross-version test runs once per other release: checkpoints must load in every direction."""
    if "other_python" in metafunc.fixturenames:
        paths = _other_pythons() or [None]
        metafunc.parametrize(
            "other_python", paths, ids=[_release_id(p) for p in paths], indirect=True, scope="module"
        )


@pytest.fixture(scope="module")
def other_python(request: pytest.FixtureRequest) -> str:
    """The interpreter of another transformers release (4.57 <-> 5.23 <-> newest), for cross-version checks."""
    path = request.param
    if not path or not Path(path).exists():
        pytest.skip("set HYBRID_VLM_OTHER_PYTHON to the other transformers releases' pythons (.ci/run does)")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """The marks transformers' own test files use (tests/test_transformers_common.py imports them); transformers
    registers them in a conftest.py its sdist does not ship."""
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                 "torch_compile_test", "torch_export_test"):
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' common tests")


def load_parity_case(folder: Path) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    """A reference-parity case folder: case.json, reference.safetensors, and the case's messages with their image
    and frame file names made absolute."""
    import copy
    import json

    from safetensors.torch import load_file

    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    messages = copy.deepcopy(meta["messages"])
    for message in messages:
        for block in message["content"]:
            if block["type"] == "image":
                block["path"] = str(folder / block["path"])
            elif block["type"] == "video":
                block["frames"] = [str(folder / frame) for frame in block["frames"]]
    return meta, load_file(str(folder / "reference.safetensors")), messages
