"""Every ```python and ```bash block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace and one scratch folder (later blocks build on earlier ones).
A block that cannot run here is marked by an HTML comment on the line(s) just before its fence,
`<!-- skip: needs a GPU -->`, and is reported as skipped with that reason. Placeholder paths the docs use for the
reader's own files (`path/to/hybrid-vlm`, `photo.jpg`, `data/train.jsonl`, ...) are created in the scratch folder as
tiny stand-ins when a file mentions them. Bash blocks run their `hybrid-vlm ...` commands in this process and
`python ...` commands with this interpreter; any other command needs a skip marker. Nothing reaches the network
(`HF_HUB_OFFLINE=1`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = ("python", "bash")
SKIP_MARKER = re.compile(r"<!--\s*skip:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the skip reason of the comment just before it (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, language = match.group(1), match.group(2).lower()
        start = index
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        skip = None
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (marker := SKIP_MARKER.search(lines[before])):
            skip = marker.group(1)
        blocks.append(Block(path, start + 1, language, "\n".join(body) + "\n", skip))
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in extract_blocks(path) if block.language in RUN_LANGUAGES]


# ------------------------------------------------------------------------------ stand-ins for the reader's files


def _saved_model(folder: Path, preset: str = "llava-tiny") -> None:
    import hybrid_vlm

    model, processor = hybrid_vlm.from_preset(preset)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _photo(path: Path) -> None:
    from hybrid_vlm.cli.demo import demo_image

    path.parent.mkdir(parents=True, exist_ok=True)
    demo_image(64).save(path)


def _video(path: Path) -> None:
    from hybrid_vlm.cli.demo import demo_video

    path.parent.mkdir(parents=True, exist_ok=True)
    demo_video(path, num_frames=8)


def _jsonl_dataset(folder: Path) -> None:
    """docs/training.md's format: assistant content as a string, images relative to the file."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(2):
        _photo(folder / "img" / f"{i:04d}.png")
        lines.append(json.dumps({
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is in picture {i}?"}]},
                {"role": "assistant", "content": "A gradient with a dark square."},
            ],
            "images": [f"img/{i:04d}.png"],
        }))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")


def _llava_checkpoint(folder: Path) -> None:
    """A tiny transformers LLaVA folder (model and processor files), as a converter's input."""
    from test_convert import _save_llava

    _save_llava(folder)


def _vamba_checkpoint(folder: Path) -> None:
    """A tiny Vamba checkpoint in its released (qwen2_vl) form."""
    from test_convert_vamba import write_vamba_checkpoint

    write_vamba_checkpoint(folder)


# placeholder (as written in the docs) -> how to make a stand-in for it, relative to the scratch folder
STAND_INS = {
    "llava-1.5-7b-hf": _llava_checkpoint,
    "Vamba-Qwen2-VL-7B": _vamba_checkpoint,
    "path/to/hybrid-vlm": lambda p: _saved_model(p),
    "path/to/model": lambda p: _saved_model(p, "jamba-llava-tiny"),
    "path/to/vamba": lambda p: _saved_model(p, "vamba-tiny"),
    "photo.jpg": _photo,
    "clips/0001.mp4": _video,
    "data/train.jsonl": lambda p: _jsonl_dataset(p.parent),
}


def _make_stand_ins(text: str, folder: Path) -> None:
    for placeholder, make in STAND_INS.items():
        target = folder / placeholder
        if re.search(rf"(?<![\w/.-]){re.escape(placeholder)}(?![\w/-])", text) and not target.exists():
            make(target)


# ------------------------------------------------------------------------------------------------- running


def _commands(code: str) -> list[str]:
    """The shell commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def _run_bash(block: Block, folder: Path) -> None:
    from hybrid_vlm.cli import main

    for command in _commands(block.code):
        words = shlex.split(command)
        if any(word in ("&&", "||", "|", ";", ">", "<") for word in words):
            pytest.fail(f"{block.id}: {command!r}: shell syntax is not run here; split it or mark the block skipped")
        if words[0] == "hybrid-vlm":
            code = main(words[1:])
            assert code == 0, f"{block.id}: {command!r} exited {code}"
        elif words[0] == "python":
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
            # `python benchmarks/x.py` / `python examples/x.py` name the repository's scripts: run them from its root.
            in_repo = len(words) > 1 and not words[1].startswith("-") and (ROOT / words[1]).is_file()
            result = subprocess.run([sys.executable, *words[1:]], cwd=ROOT if in_repo else folder, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{block.id}: {command!r}:\n{result.stderr[-3000:]}"
        else:
            pytest.fail(f"{block.id}: {words[0]!r} is not run by this test; mark the block `<!-- skip: why -->`")


class _FileState:
    """One Markdown file's namespace and scratch folder, and how far its blocks have run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}
        self.done: set[int] = set()


@pytest.fixture(scope="module")
def states(tmp_path_factory):
    return {}


@pytest.fixture(autouse=True)
def quiet_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(block: Block, state: _FileState, monkeypatch) -> None:
    monkeypatch.chdir(state.folder)
    if block.language == "python":
        exec(compile(block.code, block.id, "exec"), state.namespace)  # noqa: S102  (the docs are the test input)
    else:
        _run_bash(block, state.folder)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.id)
def test_docs_block_runs(block, states, tmp_path_factory, monkeypatch):
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    state = states.get(block.file)
    if state is None:
        folder = tmp_path_factory.mktemp(block.file.stem)
        _make_stand_ins(block.file.read_text(encoding="utf-8"), folder)
        state = states[block.file] = _FileState(folder)
    for earlier in ALL_BLOCKS:  # blocks build on the ones before them (also when one is selected with -k)
        if earlier.file == block.file and earlier.line < block.line and earlier.skip is None:
            if earlier.line not in state.done:
                state.done.add(earlier.line)
                try:
                    _run(earlier, state, monkeypatch)
                except Exception as error:  # noqa: BLE001  (reported as this block's failure)
                    pytest.fail(f"the earlier block {earlier.id} failed: {type(error).__name__}: {error}")
    state.done.add(block.line)
    _run(block, state, monkeypatch)


def test_skip_markers_give_reasons_and_code_blocks_name_their_language():
    for path in DOC_FILES:
        for block in extract_blocks(path):
            assert block.skip is None or len(block.skip) >= 8, f"{block.id}: say why the block is skipped"
            if block.language == "" and re.search(r"^\s*(import |from \w+ import |hybrid-vlm )", block.code, re.M):
                pytest.fail(f"{block.id}: a code block without a language is not run; write ```python or ```bash")


def test_extract_blocks_reads_fences_and_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n<!-- skip: needs a GPU -->\n```python\nx = 1\n```\n\n```bash\nhybrid-vlm presets\n```\n")
    first, second = extract_blocks(doc)
    assert (first.language, first.code, first.skip, first.line) == ("python", "x = 1\n", "needs a GPU", 4)
    assert (second.language, second.skip) == ("bash", None)
    assert _commands("hybrid-vlm bench --a 1 \\\n    --b 2   # note\n\n# only a comment\n") == [
        "hybrid-vlm bench --a 1 --b 2"
    ]
