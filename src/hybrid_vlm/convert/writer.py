"""Step 4 of a conversion: cast and write tensors into size-limited safetensors shards (+ index) in a temporary
folder, which replaces the destination only once it is complete."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..ssm import SSM_FP32_PARAMETERS

__all__ = ["ShardWriter", "cast_weight", "move_into_place", "parse_size", "save_shard"]


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB"."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(value), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot read the size {value!r}; use bytes or e.g. '5GB', '500MB'.")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    power = " KMGT".index(unit) if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write one safetensors shard (the `format: pt` metadata transformers expects)."""
    save_file(tensors, str(path), metadata={"format": "pt"})


class ShardWriter:
    """Collects tensors into shards of at most `max_bytes` (a single larger tensor gets a shard of its own)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self._flush()
        self.current[name] = tensor.contiguous()
        self.current_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        name = f".shard-{len(self.shards):05d}.safetensors"
        save_shard(self.current, self.folder / name)
        self.shards.append((name, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> list[str]:
        """Give the shards their final names and write the index (none for a single file)."""
        if self.current or not self.shards:
            self._flush()
        count = len(self.shards)
        if count == 1:
            os.replace(self.folder / self.shards[0][0], self.folder / SAFE_WEIGHTS_NAME)
            return [SAFE_WEIGHTS_NAME]
        weight_map: dict[str, str] = {}
        names = []
        for index, (temporary, tensors) in enumerate(self.shards, start=1):
            final = f"model-{index:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / temporary, self.folder / final)
            weight_map.update(dict.fromkeys(tensors, final))
            names.append(final)
        index_data = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index_data, indent=2) + "\n", encoding="utf-8")
        return names


def cast_weight(name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast floating tensors to `dtype`; fp32 SSM parameters (A_log, D, dt_bias) stay fp32."""
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    if name.rsplit(".", 1)[-1] in SSM_FP32_PARAMETERS and tensor.dtype == torch.float32:
        return tensor
    return tensor.to(dtype)


def move_into_place(temporary: Path, destination: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing destination is only replaced with `overwrite`, and is
    kept until the new one is in place."""
    if destination.exists() or destination.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{destination} exists; pass overwrite=True (--overwrite) to replace it.")
        backup = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.old-"))
        os.replace(destination, backup / "old")
        os.replace(temporary, destination)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(temporary, destination)
