"""Step 1 of a conversion: list the tensors of a checkpoint folder from file headers, then read them one at a time."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME

from .errors import ConversionError

__all__ = ["CheckpointReader", "SourceTensor", "weight_files", "weight_names"]

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
# Files in checkpoint folders that are not model weights (trainer state, optimizer, ...).
_NOT_WEIGHTS = re.compile(r"^(training_args|optimizer|scheduler|scaler|trainer_state|rng_state.*)\.(bin|pt|pth)$")
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class SourceTensor:
    """One source tensor as listed from a file header: nothing of its data is read yet."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str


class CheckpointReader:
    """Lists and reads the tensors of a checkpoint folder one at a time.

    safetensors shards are read with ``safe_open`` (each ``get_tensor`` reads one tensor); ``.bin``/``.pt`` files
    are opened with ``torch.load(mmap=True, weights_only=True)``, so their tensors stay on disk until touched.
    Nested dicts in torch files (``{"model": {"projector": {...}}}``) are flattened with dots.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self.notes: list[str] = []
        self._safetensors: dict[str, Any] = {}
        self._torch: dict[str, dict[str, torch.Tensor]] = {}
        self._entries: dict[str, SourceTensor] | None = None
        self._extra: list[tuple[Path, str]] = []  # (folder, name prefix) of additional checkpoints
        self._original: dict[str, str] = {}  # listed name -> name inside its file (extra sources are prefixed)
        self._paths: dict[str, Path] = {}  # SourceTensor.file -> the file's path

    def add_source(self, folder: Path, prefix: str) -> None:
        """Also list the tensors of another checkpoint folder, under `prefix` + their names (e.g. vision encoders
        that a run kept frozen and did not save)."""
        self._extra.append((Path(folder), prefix))
        self._entries = None

    def tensors(self) -> dict[str, SourceTensor]:
        """Name -> (shape, dtype, file) of every tensor, in file order."""
        if self._entries is not None:
            return self._entries
        entries: dict[str, SourceTensor] = {}
        sources = [(path, "", path.name) for path in self.files]
        sources += [(path, prefix, str(path)) for folder, prefix in self._extra for path in weight_files(folder)]
        for path, prefix, key in sources:
            for inner, shape, dtype in self._list(path, key):
                name = prefix + inner
                if name in entries:
                    raise ConversionError(
                        f"tensor {name!r} appears in both {entries[name].file} and {path.name}; the checkpoint is "
                        "inconsistent."
                    )
                entries[name] = SourceTensor(name, shape, dtype, key)
                self._original[name] = inner
                self._paths[key] = path
        if not entries:
            raise ConversionError(f"{self.folder} holds weight files but no tensors in them.")
        self._entries = entries
        return entries

    def _list(self, path: Path, key: str) -> Iterable[tuple[str, tuple[int, ...], torch.dtype]]:
        if path.suffix == ".safetensors":
            handle = self._safetensors.setdefault(key, safe_open(str(path), framework="pt"))
            for name in handle.keys():
                view = handle.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
                if dtype is None:
                    raise ConversionError(f"{path.name}: tensor {name!r} has unsupported dtype {view.get_dtype()}.")
                yield name, tuple(view.get_shape()), dtype
        else:
            for name, tensor in self._torch_state(path, key).items():
                yield name, tuple(tensor.shape), tensor.dtype

    def _torch_state(self, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
        key = key or path.name
        if key not in self._torch:
            try:
                loaded = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:
                if "mmap" not in str(err).lower() and "zip" not in str(err).lower():
                    raise
                # Files in torch's legacy (non-zip) format cannot be memory-mapped: they are read whole.
                self.notes.append(f"{path.name} is in torch's legacy format and was read into memory whole.")
                loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            flat: dict[str, torch.Tensor] = {}
            skipped = _flatten_tensors(loaded, "", flat)
            if skipped:
                self.notes.append(f"{path.name}: ignored {skipped} non-tensor entries (metadata, counters).")
            self._torch[key] = flat
        return self._torch[key]

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor."""
        entry = self.tensors()[name]
        inner = self._original.get(name, name)
        if entry.file.endswith(".safetensors"):
            return self._safetensors[entry.file].get_tensor(inner)
        # A copy, so the written shard never shares storage with the memory map (safetensors refuses shared storage).
        return self._torch_state(self._paths[entry.file], entry.file)[inner].clone()

    def close(self) -> None:
        self._safetensors.clear()
        self._torch.clear()


def _flatten_tensors(value: Any, prefix: str, out: dict[str, torch.Tensor]) -> int:
    """Collect tensors of nested dicts under dotted names; returns how many non-tensor leaves were skipped."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value
        return 0
    if isinstance(value, Mapping):
        return sum(_flatten_tensors(v, f"{prefix}.{k}" if prefix else str(k), out) for k, v in value.items())
    return 1


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: an index's shards, else all safetensors, else torch files."""
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder; pass the checkpoint's local directory.")
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ConversionError(f"{index_name} lists shards that are not in {folder}: {absent}.")
            if files:
                return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    files = sorted(p for p in folder.iterdir() if p.suffix in _TORCH_SUFFIXES and not _NOT_WEIGHTS.match(p.name))
    if files:
        return files
    latest = folder / "checkpoints" / "latest-checkpoint.pt"  # a Prismatic/Cobra run folder
    if latest.is_file():
        return [latest]
    raise ConversionError(f"no weights in {folder}: expected *.safetensors or a torch .bin/.pt file.")


def weight_names(folder: Path) -> list[str]:
    """The tensor names of a checkpoint folder, from its index or its safetensors headers (nothing else is read)."""
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        index = folder / index_name
        if index.is_file():
            return list(json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {})
    names: list[str] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names.extend(handle.keys())
    return names
