"""Tokenizer folders that load on transformers 4.x and 5.x alike, with the same ids.

transformers 5 writes tokenizer files that 4.57 cannot read (``tokenizer_class: "TokenizersBackend"``,
``extra_special_tokens`` as a list); :func:`make_tokenizer_files_portable` rewrites a saved folder into the
subset both lines understand, so a checkpoint saved by this library loads everywhere with the same ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .remote_code import write_text_atomic

__all__ = ["make_tokenizer_files_portable", "verify_same_ids"]

# Where the two lines (and 5.x's own __init__ kwargs) keep the extra special tokens.
_EXTRA_TOKEN_KEYS = ("additional_special_tokens", "extra_special_tokens", "model_specific_special_tokens")
# Attributes every transformers version knows by name; any other "*_token" key in a config is a named extra token.
_STANDARD_TOKEN_KEYS = frozenset(
    {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}
)


def _is_token_value(value: Any) -> bool:
    """A token as tokenizer configs store it: a string, or a serialized ``AddedToken``."""
    return isinstance(value, str) or (isinstance(value, dict) and "content" in value)


def _token_text(value: Any) -> str:
    return value if isinstance(value, str) else value["content"]


def _split_special_tokens(config: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Collect the unnamed (list) and named (dict) extra special tokens, whichever line wrote ``config``."""
    unnamed: list[Any] = []
    named: dict[str, Any] = {}
    for key in _EXTRA_TOKEN_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            for name, token in value.items():
                if not _is_token_value(token):
                    raise TypeError(f"`{key}[{name!r}]` must be a string or an AddedToken dict, got {token!r}")
            named.update(value)
        elif isinstance(value, (list, tuple)):
            unnamed.extend(value)
        else:
            raise TypeError(f"`{key}` must be a list or a dict, got {type(value).__name__}")
    for key, value in config.items():
        if key.endswith("_token") and key not in _STANDARD_TOKEN_KEYS and _is_token_value(value):
            named.setdefault(key, value)
    seen: set[str] = set()
    deduped = []
    for token in unnamed:
        if not _is_token_value(token):
            raise TypeError(f"special tokens must be strings or AddedToken dicts, got {token!r}")
        if _token_text(token) not in seen:
            seen.add(_token_text(token))
            deduped.append(token)
    return deduped, named


def _normalize_special_tokens(data: dict[str, Any], *, named_as_dict: bool) -> dict[str, Any]:
    """Spell extra special tokens the way both lines read them.

    Unnamed ones go to ``additional_special_tokens`` (4.57's key; 5.x converts it to its list on load). Named ones
    (``image_token`` ...) stay top-level keys (5.x) and, in tokenizer_config.json, also go to ``extra_special_tokens``
    as a dict (4.57). With that dict non-empty, 5.x still reads ``additional_special_tokens``.
    """
    unnamed, named = _split_special_tokens(data)
    data = {key: value for key, value in data.items() if key not in _EXTRA_TOKEN_KEYS}
    if unnamed:
        data["additional_special_tokens"] = unnamed
    if named and named_as_dict:
        data["extra_special_tokens"] = named
    data.update(named)
    return data


def _portable_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json: also swap ``TokenizersBackend`` (5.x only) for ``PreTrainedTokenizerFast`` (5.x maps
    it back to ``TokenizersBackend``)."""
    config = _normalize_special_tokens(config, named_as_dict=True)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    return config


def _portable_special_tokens_map(tokens_map: dict[str, Any]) -> dict[str, Any]:
    """special_tokens_map.json (4.x writes it): 4.57 reads every dict value there as one AddedToken, so no dict."""
    return _normalize_special_tokens(tokens_map, named_as_dict=False)


def _rewrite_json(path: Path, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise TypeError(f"{path} must hold a JSON object, got {type(data).__name__}")
    new = transform(data)
    if new != data:
        # Written only when something changed, in the layout transformers itself uses (indent 2, sorted keys).
        write_text_atomic(path, json.dumps(new, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# Tokenizer classes whose 4.57 fast class rebuilds itself from `tokenizer.model` (SentencePiece) whenever the config
# names `add_prefix_space`; 5.x's class defaults that flag to True, so a True there can go when no `tokenizer.model`
# is shipped (4.57 then reads tokenizer.json, as 5.x's rebuild does).
_PREFIX_SPACE_REBUILDS = frozenset({"LlamaTokenizer", "LlamaTokenizerFast"})


def _portable_prefix_space(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    if (
        config.get("tokenizer_class") in _PREFIX_SPACE_REBUILDS
        and config.get("add_prefix_space") is True
        and not (directory / "tokenizer.model").is_file()
    ):
        config = {k: v for k, v in config.items() if k != "add_prefix_space"}
    return config


def _with_legacy(config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """transformers 5.x keeps `legacy` on a LlamaTokenizer but does not save it; without it the reloaded tokenizer
    rebuilds its pre-tokenizer the non-legacy way (no `▁` after special tokens). Write it back."""
    legacy = getattr(tokenizer, "legacy", None)
    if isinstance(legacy, bool) and "legacy" not in config:
        config = {**config, "legacy": legacy}
    return config


def _probe_texts(tokenizer: Any) -> list[str]:
    """Prompts that expose the usual round-trip losses: text right after special tokens (with and without a leading
    space or newline), runs of spaces, newlines, digits, non-ASCII text and every special/added token in context."""
    specials = [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]
    added = [str(t) for t in getattr(tokenizer, "get_added_vocab", dict)()]
    tokens = list(dict.fromkeys(specials + added))[:64]
    base = ["Hello world", " leading space", "two  spaces and\nnew lines\n\n", "Numbers 12345, punctuation!?",
            "Ünïcödé — 文字 ✓", "<img>text markers</img><t>"]
    texts = list(base)
    for index, token in enumerate(tokens):
        texts.append(f"{token}{base[index % len(base)]}")
        texts.append(f"{base[(index + 1) % len(base)]}{token} after\n{token}\nline")
    if tokens:
        texts.append("".join(tokens) + " end")
    return texts


def verify_same_ids(reference: Any, save_directory: str | os.PathLike[str], texts: list[str] | None = None) -> None:
    """Load the tokenizer saved in ``save_directory`` and check it gives ``reference``'s ids on probe prompts (with
    and without special tokens); a ValueError names the first prompt that differs.

    A folder can load fine and still tokenize differently (transformers 5.x dropping `legacy` is one such loss), so
    every save that claims "same ids" checks it.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        reloaded = AutoTokenizer.from_pretrained(str(save_directory))
    finally:
        hf_logging.set_verbosity(verbosity)
    for text in texts if texts is not None else _probe_texts(reference):
        for special in (False, True):
            want = reference(text, add_special_tokens=special)["input_ids"]
            got = reloaded(text, add_special_tokens=special)["input_ids"]
            if list(want) != list(got):
                raise ValueError(
                    f"the tokenizer saved in {save_directory} tokenizes {text!r} (add_special_tokens={special}) as "
                    f"{list(got)}, the tokenizer it was saved from as {list(want)}. The saved files lose part of "
                    "its configuration; fix tokenizer_config.json (e.g. its `legacy` or `add_prefix_space` entries) "
                    "or save a tokenizer whose behaviour tokenizer.json fully describes (PreTrainedTokenizerFast)."
                )


def make_tokenizer_files_portable(save_directory: str | os.PathLike[str], tokenizer: Any = None) -> None:
    """Rewrite, in place, a folder written by ``tokenizer.save_pretrained`` on transformers 4.x or 5.x.

    Afterwards ``AutoTokenizer.from_pretrained(save_directory)`` works on both lines and gives the same ids, special
    tokens and chat template. ``tokenizer.json`` and ``chat_template.jinja`` are already read alike by both and are
    left untouched; only ``tokenizer_config.json`` (and a ``special_tokens_map.json`` 4.x wrote) change: extra
    special tokens spelled the way both lines read them, `legacy` written back where 5.x dropped it, and a Llama
    `add_prefix_space: true` dropped where 4.57 would need the absent `tokenizer.model` to honour it.
    With ``tokenizer`` (the one that was saved), the rewritten folder is reloaded and must give its ids on probe
    prompts (:func:`verify_same_ids`), else a ValueError. Idempotent: running it twice changes nothing the second time.
    """
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path, got {type(save_directory).__name__}")
    directory = Path(save_directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; call tokenizer.save_pretrained() on it first")
    config_file = directory / "tokenizer_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; is {directory} a saved tokenizer folder?")
    if not (directory / "tokenizer.json").is_file():
        raise ValueError(
            f"{directory} has no tokenizer.json: only fast (tokenizers-backed) tokenizers can be made portable"
        )
    _rewrite_json(
        config_file,
        lambda config: _portable_prefix_space(_with_legacy(_portable_tokenizer_config(config), tokenizer), directory),
    )
    tokens_map_file = directory / "special_tokens_map.json"
    if tokens_map_file.is_file():
        _rewrite_json(tokens_map_file, _portable_special_tokens_map)
    if tokenizer is not None:
        verify_same_ids(tokenizer, directory)
