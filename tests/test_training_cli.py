"""`hybrid-vlm train`: a JSONL dataset in TRL's vision format, a preset, a stage or LoRA, an output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hybrid_vlm
from hybrid_vlm.cli import build_parser, main
from hybrid_vlm.training.cli import load_jsonl

pytest.importorskip("trl")
pytest.importorskip("peft")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def jsonl(tmp_path):
    """Four chats with one or two PNG images each, paths relative to the JSONL file."""
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        names = []
        for k in range(1 + i % 2):
            name = f"img/{i}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(data / name)
            names.append(name)
        user = [{"type": "image"} for _ in names] + [{"type": "text", "text": f"Describe picture {i}."}]
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": f"Noise number {i}."}]},
        ]
        lines.append(json.dumps({"messages": messages, "images": names}))
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    return data


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_train_projector_stage_end_to_end(jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", str(jsonl), "--model", "mamba2-llava-tiny", "--stage", "projector", "--output-dir",
                 str(out), "--max-steps", "2", "--batch-size", "2", "--learning-rate", "1e-2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "stage 'projector'" in printed and "loss:" in printed
    initial, _ = hybrid_vlm.from_preset("mamba2-llava-tiny")  # same seed: the weights training started from
    from transformers import AutoModelForImageTextToText, AutoProcessor

    trained = AutoModelForImageTextToText.from_pretrained(out)
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "HybridVLMProcessor"
    before, after = _weights(initial), _weights(trained)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("model.multi_modal_projector.") for name in moved), sorted(moved)[:5]


def test_train_lora_saves_an_adapter(jsonl, tmp_path):
    out = tmp_path / "lora"
    assert main(["train", str(jsonl / "train.jsonl"), "--model", "llava-tiny", "--lora", "--lora-rank", "4",
                 "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and "vision_tower" not in json.dumps(config["target_modules"])
    assert (out / "adapter_model.safetensors").is_file()
    assert config["base_model_name_or_path"] == "llava-tiny"  # resolves anywhere: the preset is deterministic


def test_lora_adapter_records_an_absolute_base_and_names_it_when_missing(jsonl, tmp_path, monkeypatch, capsys):
    import shutil

    from hybrid_vlm.cli import main as cli_main

    base = tmp_path / "base"
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    model.save_pretrained(base)
    processor.save_pretrained(base)
    monkeypatch.chdir(tmp_path)  # `--model base`: relative, as a user types it
    assert main(["train", str(jsonl), "--model", "base", "--lora", "--lora-rank", "2", "--output-dir", "adapter",
                 "--max-steps", "1", "--batch-size", "2"]) == 0
    recorded = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(base.resolve())
    picture = jsonl / "img" / "0_0.png"
    capsys.readouterr()
    assert cli_main(["generate", "adapter", "--image", str(picture), "--prompt", "Hi", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.strip()
    shutil.rmtree(base)
    assert cli_main(["generate", "adapter", "--image", str(picture), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert f"was trained on the base model '{base.resolve()}', which is missing here" in err


def test_stage_aliases_and_bad_input(jsonl, tmp_path):
    args = build_parser().parse_args(["train", str(jsonl), "--output-dir", "x", "--stage", "vamba-stage1"])
    assert args.stage == "vamba-stage1" and args.handler.__name__ == "run_train"
    with pytest.raises(SystemExit, match="does not combine"):
        main(["train", str(jsonl), "--output-dir", str(tmp_path / "y"), "--lora", "--stage", "full"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{"text": "no messages"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line needs a 'messages' list"):
        load_jsonl(str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"messages": [], "images": ["nope.png"]}) + "\n")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_jsonl(str(missing))
    with pytest.raises(FileNotFoundError, match="Dataset not found"):
        load_jsonl(str(tmp_path / "absent.jsonl"))


def test_documented_jsonl_with_string_content_trains(tmp_path, capsys):
    """docs/training.md's format (assistant `"content": "..."`), block lists and string user turns, mixed in one file
    (Arrow alone refuses such a column), plus TRL's conversational prompt/completion form."""
    data = tmp_path / "mixed"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                      {"role": "assistant", "content": "Noise."}], "images": ["0.png"]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Describe the picture."},  # TRL prepends the image block
                      {"role": "assistant", "content": [{"type": "text", "text": "Grey noise."}]}],
         "images": ["1.png"]},
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colours?"}]}],
         "completion": [{"role": "assistant", "content": "Many."}], "images": ["2.png"]},
        {"messages": [{"role": "user", "content": "No picture here."}, {"role": "assistant", "content": "Fine."}]},
    ]
    (data / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows = load_jsonl(str(data))
    assert all(isinstance(m["content"], list) for row in rows for m in row["messages"])
    assert rows[1]["messages"][1]["content"][0] == {"type": "image"}  # prepended, as TRL does
    assert [m["role"] for m in rows[2]["messages"]] == ["user", "assistant"]
    out = tmp_path / "out"
    assert main(["train", str(data), "--model", "llava-tiny", "--stage", "projector", "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "2"]) == 0
    assert "over 2 steps" in capsys.readouterr().out
    assert (out / "config.json").is_file()
