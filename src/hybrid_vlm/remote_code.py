"""Write the package's modules next to a checkpoint so it loads with `trust_remote_code=True` without hybrid_vlm.

transformers' `register_for_auto_class` records one Auto class per object; a HybridVLM checkpoint must answer to
ImageTextToText, Vision2Seq (transformers 4.x) and CausalLM (TRL's fallback), so we write `auto_map` ourselves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).parent

MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_hybrid_vlm.HybridVLMConfig",
    "AutoModel": "modeling_hybrid_vlm.HybridVLMModel",
    "AutoModelForImageTextToText": "modeling_hybrid_vlm.HybridVLMForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_hybrid_vlm.HybridVLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hybrid_vlm.HybridVLMForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {
    "AutoProcessor": "processing_hybrid_vlm.HybridVLMProcessor",
    "AutoImageProcessor": "image_processing_hybrid_vlm.HybridVLMImageProcessor",
    "AutoVideoProcessor": "video_processing_hybrid_vlm.HybridVLMVideoProcessor",
}


_CONFIG_FILES = ("compat", "config_options", "model_types", "token_counts")
_IMAGE_FILES = ("anyres", "config_options", "model_types", "token_counts")
_VIDEO_FILES = (*_IMAGE_FILES, "compat", "image_processing_hybrid_vlm", "remote_code", "video_decoding",
                "video_sampling")
# What a checkpoint folder carries for each entry module of `auto_map`: every module the entry imports, directly or
# through another (transformers 4.57 copies only an entry's direct relative imports into its module cache, so each
# entry imports all of them itself). The configuration side is torch-free: a config loads without model code.
# tests/test_architecture.py checks each list against transformers' own `get_relative_import_files`.
REMOTE_CODE_FILES: dict[str, tuple[str, ...]] = {
    "configuration_hybrid_vlm": _CONFIG_FILES,
    "image_processing_hybrid_vlm": _IMAGE_FILES,
    "video_processing_hybrid_vlm": tuple(sorted(set(_VIDEO_FILES))),
    "processing_hybrid_vlm": tuple(sorted({
        *_CONFIG_FILES, *_VIDEO_FILES, "chat_templates", "configuration_hybrid_vlm", "multimodal_inputs",
        "prompt_expansion", "tokenizer_files", "video_processing_hybrid_vlm",
    })),
    "modeling_hybrid_vlm": tuple(sorted({
        *_CONFIG_FILES, "anyres", "caching", "chunked_prefill", "configuration_hybrid_vlm", "hub", "path_report",
        "precision", "projectors", "qwen2vl_vision", "remote_code", "ssm", "ssm_engine", "vamba", "vision_encoders",
    })),
}


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text via a temporary file in the same folder and a rename: readers never see half a file, and a crash
    never leaves a half-written file where a good one was."""
    path = Path(path)
    # mkstemp makes the file owner-only; a saved checkpoint is meant to be shared, and a rewrite keeps the old mode.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _copy_modules(entry_modules: list[str], save_directory: Path) -> list[str]:
    """Copy the given entry modules and the modules `REMOTE_CODE_FILES` declares for them."""
    names = sorted({name for entry in entry_modules for name in (entry, *REMOTE_CODE_FILES[entry])})
    for name in names:
        shutil.copyfile(PACKAGE_DIR / f"{name}.py", save_directory / f"{name}.py")
    return [f"{name}.py" for name in names]


def _add_auto_map(json_path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(json_path.read_text(encoding="utf-8"))
    data["auto_map"] = {**(data.get("auto_map") or {}), **auto_map}
    write_json_atomic(json_path, data)


def write_model_remote_code(save_directory: str | os.PathLike) -> list[str]:
    """Copy the modelling modules into a saved model folder and point `config.json`'s `auto_map` at them."""
    save_directory = Path(save_directory)
    copied = _copy_modules(["modeling_hybrid_vlm"], save_directory)
    _add_auto_map(save_directory / "config.json", MODEL_AUTO_MAP)
    return copied


def write_processor_remote_code(save_directory: str | os.PathLike) -> list[str]:
    """Copy the processing modules into a saved processor folder and add `auto_map` to its config files."""
    save_directory = Path(save_directory)
    copied = _copy_modules(["processing_hybrid_vlm"], save_directory)
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = save_directory / name
        if path.exists():
            _add_auto_map(path, PROCESSOR_AUTO_MAP)
    return copied
