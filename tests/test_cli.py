"""The README's main job and the other commands."""

from __future__ import annotations

from hybrid_vlm.cli import demo_image, expanded_layout, main


def test_demo_generates_saves_and_reloads(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "saved"), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("answer:") == 2  # one about the image, one about the generated video
    assert "prompt layout (llava): <|im_start|>user\\n<image>×16What is in this image?" in out
    assert "prompt layout (plain): <|im_start|>user\\n<video>×128What moves in this video?" in out
    assert "longllava layout: <|im_start|>user\\n<vid>[<img><video>×16</img><t>]×7<img><video>×16</img></vid>" in out
    assert "reload check: HybridVLMForConditionalGeneration" in out and "-> OK" in out
    assert (tmp_path / "saved" / "config.json").exists() and list((tmp_path / "saved").glob("*.safetensors"))


def test_expanded_layout_shortens_runs_and_repeated_frames():
    import hybrid_vlm

    _, processor = hybrid_vlm.from_preset("llava-tiny")
    frame = "<img>" + "<image>" * 5 + "</img>"
    ids = processor.tokenizer(f"{frame}<t>{frame}<t>{frame}\nQ")["input_ids"]
    assert expanded_layout(processor, ids) == "[<img><image>×5</img><t>]×2<img><image>×5</img>\\nQ"
    assert len(expanded_layout(processor, processor.tokenizer("word " * 400)["input_ids"], limit=100)) <= 103


def test_generate_answers_with_a_saved_folder(tmp_path, capsys):
    main(["demo", "--output", str(tmp_path / "m"), "--max-new-tokens", "2", "--preset", "llava-tiny"])
    demo_image().save(tmp_path / "picture.png")
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "m"), "--image", str(tmp_path / "picture.png"), "--prompt", "Hi",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_env_reports_versions_and_paths(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for field in ("transformers", "torch", "SSM path", "attention", "mamba-ssm"):
        assert field in out


def test_presets_lists_counts(capsys):
    assert main(["presets", "--count"]) == 0
    out = capsys.readouterr().out
    assert "longllava-a13b" in out and "51.89B" in out
