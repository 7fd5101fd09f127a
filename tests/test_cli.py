"""The README's main job and the other commands."""

from __future__ import annotations

import re

from hybrid_vlm.cli import main
from hybrid_vlm.cli.demo import demo_image, expanded_layout


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


def test_a_bad_model_argument_fails_at_once_naming_folders_and_presets(tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the check must not rely on offline mode
    demo_image().save(tmp_path / "p.png")
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    for argv in (
        ["generate", "no_such_model", "--image", str(tmp_path / "p.png"), "--prompt", "Hi"],
        ["generate", "jamba-llava-tinyy", "--image", str(tmp_path / "p.png"), "--prompt", "Hi"],
        ["train", str(tmp_path / "data.jsonl"), "--model", "no-such-preset", "--output-dir", str(tmp_path / "o")],
    ):
        start = time.perf_counter()
        assert main(argv) == 2
        assert time.perf_counter() - start < 10  # not the network's ~55 s
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "local model folder" in err and "jamba-llava-tiny" in err and "vamba-tiny" in err
    assert main(["generate", "jamba-llava-tinyy", "--image", "x", "--prompt", "y"]) == 2
    assert "Did you mean jamba-llava-tiny" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "someone/not-cached-model", "--image", "x", "--prompt", "y"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--image", "x", "--prompt", "y"]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_generate_reports_bad_media_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "folder").mkdir()
    cases = {
        "--image notes.txt": "is not an image Pillow can read",
        "--image folder": "is a folder; pass one image file",
        "--image missing.png": "--image file not found",
        "--video folder": "is a folder; pass one video file",
        "--video missing.mp4": "--video file not found",
    }
    for flags, expected in cases.items():
        flag, name = flags.split()
        assert main(["generate", "llava-tiny", flag, str(tmp_path / name), "--prompt", "Hi"]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err, (flags, err)
    demo_image().save(tmp_path / "p.png")
    assert main(["generate", "llava-tiny", "--image", str(tmp_path / "p.png"), "--prompt", "<image> What?"]) == 2
    assert "the CLI adds the image/video block" in capsys.readouterr().err


def test_generate_answers_about_a_video_and_with_a_preset(tmp_path, capsys):
    from hybrid_vlm.cli.demo import demo_video

    clip = demo_video(tmp_path / "clip.mp4", num_frames=8)
    assert main(["generate", "llava-tiny", "--video", str(clip), "--prompt", "What moves?",
                 "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "random weights" in captured.err


def test_help_lists_every_command(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    description = out.split("positional arguments")[0].split("\n\n", 1)[1]
    for command in ("demo", "generate", "env", "convert", "bench", "train", "presets"):
        assert command in description, command
        assert f"    {command}  " in out or f"    {command}\n" in out, command


def test_readme_lists_every_preset_and_descriptions_are_for_users():
    from pathlib import Path

    import hybrid_vlm

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = set(re.findall(r"^\| `([\w.-]+)` \|", readme.split("## Presets")[1].split("##")[0], re.M))
    assert table == set(hybrid_vlm.list_presets())
    for name, description in hybrid_vlm.list_presets().items():
        assert "issue" not in description.lower(), (name, description)


def test_launcher_refuses_a_bad_model_before_importing_torch(tmp_path):
    """`hybrid-vlm` (the console script) answers a mistyped model in a fraction of a second: no torch import."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "src"
    code = (
        "import sys, hybrid_vlm_launcher\n"
        "code = hybrid_vlm_launcher.main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules and 'hybrid_vlm' not in sys.modules, 'imported the package'\n"
        "sys.exit(code)\n"
    )
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in (["generate", "no_such_model", "--image", "x.png", "--prompt", "hi"],
                 ["generate", "--prompt", "hi", "--image", "x.png", "jamba-llava-tinyy"],
                 ["train", "data.jsonl", "--model", "no-such-preset", "--output-dir", "out"],
                 ["train", "data.jsonl", "--model=./missing/folder", "--output-dir", "out"]):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=60)
        assert time.perf_counter() - start < 10
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "local model folder" in result.stderr and "mamba2-llava-tiny" in result.stderr
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty Hub cache
    result = subprocess.run([sys.executable, "-c", code, "generate", "someone/uncached", "--image", "x", "--prompt",
                             "hi"], capture_output=True, text=True, cwd=tmp_path, env=offline, timeout=60)
    assert result.returncode == 2 and "HF_HUB_OFFLINE is set" in result.stderr, result.stderr


def test_launcher_parses_model_arguments_and_knows_every_preset():
    import hybrid_vlm
    from hybrid_vlm.cli.model_args import PRESET_NAMES, model_argument, quick_check

    assert PRESET_NAMES == tuple(hybrid_vlm.list_presets())
    assert model_argument(["generate", "--image", "a.png", "m", "--prompt", "p"]) == "m"
    assert model_argument(["train", "d.jsonl", "--model", "x"]) == "x"
    assert model_argument(["train", "d.jsonl"]) is None  # the default preset
    assert model_argument(["generate", "m", "--help"]) is None and model_argument(["presets"]) is None
    assert quick_check(["generate", "vamba-tiny", "--image", "a"]) is None
    assert quick_check(["generate", "owner/repo", "--image", "a"]) is None  # may be a Hub id: checked later
    assert "Did you mean vamba-tiny" in quick_check(["generate", "vamba-tin", "--image", "a"])


def test_every_registered_command_has_its_functions_and_its_own_help(capsys):
    import importlib

    import pytest

    from hybrid_vlm.cli.registry import COMMANDS

    assert len({command.name for command in COMMANDS}) == len(COMMANDS)
    for command in COMMANDS:
        module = importlib.import_module(command.module)
        assert callable(getattr(module, command.add)) and callable(getattr(module, command.run)), command
        with pytest.raises(SystemExit) as exit_info:
            main([command.name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: hybrid-vlm {command.name} "), command.name


def test_top_level_help_imports_no_command_and_no_torch():
    """`hybrid-vlm --help` is printed from the registry alone. The package's own `__init__` (which imports the models)
    is left out here, so this measures what the cli package itself imports."""
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "src" / "hybrid_vlm"
    code = (
        "import sys, types\n"
        f"package = types.ModuleType('hybrid_vlm'); package.__path__ = [{str(package)!r}]\n"
        "sys.modules['hybrid_vlm'] = package\n"
        "from hybrid_vlm.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        "heavy = {'torch', 'transformers', 'numpy', 'PIL'} & set(sys.modules)\n"
        "ours = sorted(m for m in sys.modules if m.startswith('hybrid_vlm.'))\n"
        "assert not heavy, heavy\n"
        "assert ours == ['hybrid_vlm.cli', 'hybrid_vlm.cli.parser', 'hybrid_vlm.cli.registry',\n"
        "                'hybrid_vlm.lazy_exports'], ours\n"  # the packages' shared lazy-name helper (stdlib only)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from hybrid_vlm.cli.registry import COMMANDS

    for command in COMMANDS:
        assert f"    {command.name}  " in result.stdout or f"    {command.name}\n" in result.stdout, command.name
