"""The shipped tiny tokenizer, its chat template, and tokenizer folders that load on transformers 4.x and 5.x.

The cross-version tests need a second interpreter with the other transformers line and hybrid_vlm installed:
``HYBRID_VLM_OTHER_PYTHON=/path/to/other/python pytest tests/test_tokenizer.py``. That interpreter runs this very
file as a script (see ``__main__`` below), so both sides describe a tokenizer with the same code.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import transformers
from transformers import AutoTokenizer

from hybrid_vlm.chat_templates import CHAT_TEMPLATE
from hybrid_vlm.tiny_tokenizer import SPECIAL_TOKENS, load_tiny_tokenizer, tiny_tokenizer_path
from hybrid_vlm.tokenizer_files import make_tokenizer_files_portable

SAMPLES = [
    "Hello world! What is in this image?",
    "The cat is sitting on a red mat, 42 times.",
    "<img><image></img> and <vid><video></vid> at <t>3.5 s",
    "<|im_start|>user\nhi<|im_end|><|endoftext|><|pad|>",
    "  leading spaces, tabs\tand\nnewlines ünïcödé 😀",
]

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat on a red mat."}]},
    {"role": "user", "content": [{"type": "text", "text": "And here?"}, {"type": "video"}]},
    {"role": "assistant", "content": "A dog."},
]

EXPECTED_RENDER = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<image>What is in this image?<|im_end|>\n"
    "<|im_start|>assistant\nA cat on a red mat.<|im_end|>\n"
    "<|im_start|>user\nAnd here?<video><|im_end|>\n"
    "<|im_start|>assistant\nA dog.<|im_end|>\n"
)

# The ids are part of the contract: tiny checkpoints and expected strings elsewhere depend on them.
EXPECTED_IDS = {token: 500 + i for i, token in enumerate(SPECIAL_TOKENS)}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def _chat_encoding(tok: Any, conversation: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    out = tok.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def describe(tok: Any) -> dict[str, Any]:
    """Everything that must match between the two transformers lines, as plain JSON."""
    chat_ids, chat_mask = _chat_encoding(tok, CONVERSATION)
    return {
        "ids": [tok(s)["input_ids"] for s in SAMPLES],
        "decoded": [tok.decode(tok(s)["input_ids"]) for s in SAMPLES],
        "decoded_skip_special": [tok.decode(tok(s)["input_ids"], skip_special_tokens=True) for s in SAMPLES],
        "named": {
            name: [str(getattr(tok, name)), getattr(tok, f"{name}_id")]
            for name in ("bos_token", "eos_token", "pad_token", "image_token", "video_token")
        },
        "all_special": sorted(zip(tok.all_special_tokens, tok.all_special_ids)),
        "chat_template": tok.chat_template,
        "rendered": tok.apply_chat_template(CONVERSATION, tokenize=False),
        "prompt": tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True),
        "chat_ids": chat_ids,
        "chat_mask": chat_mask,
        "left_padded": tok(["a cat", "Hello world! What is in this image?"], padding=True)["input_ids"],
        "padding_side": tok.padding_side,
        "model_max_length": tok.model_max_length,
        "vocab_size": len(tok),
    }


# ---------------------------------------------------------------------------------------------- tiny tokenizer


def test_special_tokens_are_single_fixed_ids(tokenizer):
    for token, expected_id in EXPECTED_IDS.items():
        assert tokenizer.encode(token, add_special_tokens=False) == [expected_id], token
        assert tokenizer.convert_ids_to_tokens(expected_id) == token
        assert tokenizer.decode([expected_id]) == token
    assert sorted(tokenizer.all_special_tokens) == sorted(SPECIAL_TOKENS)
    assert len(tokenizer) == 512


def test_special_tokens_never_split_inside_text(tokenizer):
    text = "x<image>y<video><img></img><vid></vid><t>z<|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    for token in ("<image>", "<video>", "<img>", "</img>", "<vid>", "</vid>", "<t>", "<|im_end|>"):
        assert ids.count(EXPECTED_IDS[token]) == 1, token
    assert tokenizer.decode(ids) == text
    # Glued to words and spaces as well: byte-level BPE must not eat a special token's first or last character.
    assert tokenizer.encode(" <image> ", add_special_tokens=False).count(EXPECTED_IDS["<image>"]) == 1


def test_named_tokens_padding_and_no_automatic_specials(tokenizer):
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 501)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 502)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|pad|>", 500)
    assert (tokenizer.image_token, tokenizer.image_token_id) == ("<image>", 505)
    assert (tokenizer.video_token, tokenizer.video_token_id) == ("<video>", 506)
    assert tokenizer.padding_side == "left"
    # The chat template owns the layout: encoding adds no BOS/EOS by itself.
    assert tokenizer("a cat")["input_ids"] == tokenizer.encode("a cat", add_special_tokens=False)
    batch = tokenizer(["a cat", "a cat on a red mat"], padding=True)
    assert batch["input_ids"][0][0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


def test_plain_text_round_trips_and_words_are_few_tokens(tokenizer):
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.tokenize("What is in this image?") == ["What", "Ġis", "Ġin", "Ġthis", "Ġimage", "?"]


def test_shipped_file_matches_build_script():
    # run_path, not an import: no __pycache__ lands in the package's assets folder.
    build_script = runpy.run_path(str(tiny_tokenizer_path().parent / "build_tiny_tokenizer.py"))
    built = json.loads(build_script["build"]().to_str())
    shipped = json.loads((tiny_tokenizer_path() / "tokenizer.json").read_text(encoding="utf-8"))
    for key in ("added_tokens", "pre_tokenizer", "post_processor", "decoder"):
        assert built[key] == shipped[key], key
    assert built["model"]["vocab"] == shipped["model"]["vocab"]
    assert built["model"]["merges"] == shipped["model"]["merges"]


# ----------------------------------------------------------------------------------------------- chat template


def test_chat_template_renders_multi_turn_with_media(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == EXPECTED_RENDER
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>What is in this image?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tokenizer.encode(EXPECTED_RENDER, add_special_tokens=False)
    assert ids.count(EXPECTED_IDS["<image>"]) == 1 and ids.count(EXPECTED_IDS["<video>"]) == 1


def test_assistant_mask_marks_exactly_the_assistant_tokens(tokenizer):
    ids, mask = _chat_encoding(tokenizer, CONVERSATION)
    assert len(ids) == len(mask)
    runs, current = [], []
    for token_id, flag in zip(ids, mask):
        if flag:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    # Decoding each run to exactly the reply proves its first and last token are the reply's own: a neighbouring
    # "\n" or role marker would show up in the string. <|im_end|> is included so the model learns to stop.
    assert [tokenizer.decode(run) for run in runs] == ["A cat on a red mat.<|im_end|>", "A dog.<|im_end|>"]
    assert sum(mask) == sum(len(run) for run in runs)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "tool", "content": "x"}], "Unsupported role: tool"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "Unsupported content block type: audio"),
        ([{"role": "user", "content": {"type": "text", "text": "x"}}], "string or a list of content blocks"),
        ([{"role": "user", "content": ["x"]}], 'dicts with a "type" key'),
    ],
)
def test_chat_template_rejects_bad_messages(tokenizer, messages, match):
    with pytest.raises(Exception, match=match):
        tokenizer.apply_chat_template(messages, tokenize=False)


# ------------------------------------------------------------------------------------------- portable folders


def test_portable_round_trip_same_version(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    make_tokenizer_files_portable(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["extra_special_tokens"] == {"image_token": "<image>", "video_token": "<video>"}
    assert config["additional_special_tokens"] == list(SPECIAL_TOKENS[3:])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    make_tokenizer_files_portable(str(tmp_path))  # idempotent, and str paths work too
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert describe(AutoTokenizer.from_pretrained(tmp_path)) == describe(tokenizer)


def test_portable_rewrites_a_5x_style_config(tokenizer, tmp_path):
    """The known 5.x spellings, checked on whichever line runs the tests."""
    tokenizer.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for key in ("additional_special_tokens", "extra_special_tokens", "added_tokens_decoder"):
        config.pop(key, None)
    unnamed = list(SPECIAL_TOKENS[3:])
    config.update(
        tokenizer_class="TokenizersBackend",
        extra_special_tokens=unnamed,
        image_token="<image>",
        video_token="<video>",
        backend="tokenizers",
    )
    config_file.write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "special_tokens_map.json").unlink(missing_ok=True)
    make_tokenizer_files_portable(tmp_path)
    fixed = json.loads(config_file.read_text(encoding="utf-8"))
    assert fixed["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert fixed["additional_special_tokens"] == unnamed
    assert fixed["extra_special_tokens"] == {"image_token": "<image>", "video_token": "<video>"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert describe(AutoTokenizer.from_pretrained(tmp_path)) == describe(tokenizer)


def test_portable_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="must be a path"):
        make_tokenizer_files_portable(42)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        make_tokenizer_files_portable(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        make_tokenizer_files_portable(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        make_tokenizer_files_portable(tmp_path)


# ------------------------------------------------------------------------------------------------ cross version


def _run_other(other: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [other, str(Path(__file__).resolve()), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"other interpreter failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def other_side(tokenizer, tmp_path_factory, other_python) -> dict[str, Any]:
    """One subprocess for both directions (starting the other interpreter costs seconds): it saves the tiny
    tokenizer into ``saved_there`` and describes the portable folder this process saved into ``saved_here``."""
    saved_here, saved_there = tmp_path_factory.mktemp("saved_here"), tmp_path_factory.mktemp("saved_there")
    tokenizer.save_pretrained(saved_here)
    make_tokenizer_files_portable(saved_here)
    report = json.loads(_run_other(other_python, str(saved_there), str(saved_here)))
    return {"version": report.pop("transformers"), "report": report, "saved_there": saved_there}


def test_folder_saved_by_other_version_loads_here(tokenizer, other_side):
    make_tokenizer_files_portable(other_side["saved_there"])
    loaded = AutoTokenizer.from_pretrained(other_side["saved_there"])
    assert describe(loaded) == describe(tokenizer), f"saved by transformers {other_side['version']}"


def test_folder_saved_here_loads_in_other_version(tokenizer, other_side):
    here = json.loads(json.dumps(describe(tokenizer)))  # tuples -> lists, as the other side's JSON has them
    assert other_side["report"] == here, f"loaded by transformers {other_side['version']}"


def _main(save_directory: str, describe_directory: str) -> None:
    """Entry point for the other interpreter: save the tiny tokenizer as-is, describe a folder saved by us."""
    load_tiny_tokenizer().save_pretrained(save_directory)
    report = describe(AutoTokenizer.from_pretrained(describe_directory))
    print(json.dumps({**report, "transformers": transformers.__version__}))


if __name__ == "__main__":
    _main(*sys.argv[1:])
