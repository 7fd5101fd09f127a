"""What a command-line model argument names, decided from the file system and the preset names alone.

This file imports only the standard library (and huggingface_hub, to look in the Hub cache), on purpose: the
`hybrid-vlm` launcher (`hybrid_vlm_launcher`) loads it by path, without importing the package (and so torch and
transformers, several seconds), so a mistyped model name fails in a fraction of a second instead of after the imports,
or after a minute of waiting for the Hub. `resolve_model_source` builds on it.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

# The names of `hybrid_vlm.presets.PRESETS`, in order (tests/test_cli.py checks they agree).
PRESET_NAMES = (
    "jamba-llava-tiny", "mamba2-llava-tiny", "llava-tiny", "vamba-tiny", "mambavlm-tiny", "cobra-tiny",
    "mambavlm-2.8b", "cobra-3b", "vamba-qwen2vl-tiny", "vamba-10b", "longllava-a13b", "longllava-9b", "mmjamba-52b",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def options_hint(name: str, presets: tuple[str, ...] | list[str] = PRESET_NAMES) -> str:
    """The ways to name a model, with close preset names when there are any."""
    close = difflib.get_close_matches(name, list(presets), n=3, cutoff=0.6)
    maybe = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"Pass a local folder holding config.json (written by save_pretrained), a preset name ({', '.join(presets)}), "
        f"or a Hub id (owner/name).{maybe}"
    )


def local_kind(name: str, presets: tuple[str, ...] | list[str] = PRESET_NAMES) -> tuple[str, str]:
    """`("preset", name)`, `("folder", path)`, `("adapter", path)` or `("hub?", name)` (may be a Hub id: only the Hub
    cache or the network can tell); raises ValueError, naming the options, for anything else."""
    if name in presets:
        return "preset", name
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return "folder", str(path.resolve())
        if (path / "adapter_config.json").is_file():
            return "adapter", str(path.resolve())
        raise ValueError(
            f"{name!r} is a folder but holds no config.json, so it is not a saved model. Pass a folder written by "
            "save_pretrained (or `hybrid-vlm train`), or a preset name (`hybrid-vlm presets` lists them)."
        )
    if path.exists():
        raise ValueError(f"{name!r} is a file; pass the model's folder (the one holding config.json) or a preset name.")
    if not HUB_ID.match(name) or name.startswith((".", "~", "/")):
        raise ValueError(f"{name!r} is neither a local model folder nor a preset name. {options_hint(name, presets)}")
    return "hub?", name


_VALUE_OPTIONS = {
    "generate": {"--image", "--video", "--prompt", "--max-new-tokens"},
}


def model_argument(argv: list[str]) -> str | None:
    """The model a `generate` / `train` command line names (None for other commands, `--help`, or none given)."""
    if not argv or any(arg in ("-h", "--help") for arg in argv):
        return None
    command, rest = argv[0], argv[1:]
    if command == "train":
        for index, arg in enumerate(rest):
            if arg == "--model" and index + 1 < len(rest):
                return rest[index + 1]
            if arg.startswith("--model="):
                return arg.split("=", 1)[1]
        return None
    if command == "generate":
        skip = False
        for arg in rest:
            if skip:
                skip = False
            elif arg in _VALUE_OPTIONS["generate"]:
                skip = True
            elif not arg.startswith("-"):
                return arg
    return None


def quick_check(argv: list[str]) -> str | None:
    """The error for a command line whose model argument cannot name a model, else None."""
    name = model_argument(argv)
    if name is None:
        return None
    try:
        kind, _ = local_kind(name)
    except ValueError as error:
        return str(error)
    if kind == "hub?" and hub_offline() and cached_snapshot(name) is None:
        return offline_message(name)
    return None


def offline_message(name: str, presets: tuple[str, ...] | list[str] = PRESET_NAMES) -> str:
    return (
        f"{name!r} is not a local folder, not a preset, and not in the Hub cache, and HF_HUB_OFFLINE is set. "
        f"{options_hint(name, presets)}"
    )


def cached_snapshot(repo_id: str) -> str | None:
    """The folder of a cached Hub snapshot that holds config.json, or None; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache  # light: no torch
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id or cache: treat as not cached
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def resolve_model_source(name: str) -> tuple[str, str]:
    """Where a command-line model argument points, decided locally and at once: `("preset", name)`,
    `("folder", absolute path)`, `("adapter", absolute path)` (a PEFT LoRA folder) or `("hub", repo id)`.

    Without this check a typo reaches `from_pretrained`, which treats it as a Hub id and can wait a minute for the
    network before failing. A Hub id already in the local cache resolves to its cached folder (no network); one that is
    not is refused at once when `HF_HUB_OFFLINE` is set. Raises ValueError naming both options otherwise.
    """
    from ..presets import list_presets  # (here, not at the top: the launcher loads this file without the package)

    presets = list(list_presets())
    kind, source = local_kind(name, presets)
    if kind != "hub?":
        return kind, source
    cached = cached_snapshot(name)
    if cached is not None:
        return "folder", cached
    if hub_offline():
        raise ValueError(offline_message(name, presets))
    return "hub", name
