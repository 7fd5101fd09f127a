"""Peak memory on CPU: live tensor storages counted by a dispatch mode (CUDA's allocator statistic has no CPU twin)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2**20


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active: a CPU stand-in for CUDA's max_memory_allocated.

    Every ATen op's outputs pass through `__torch_dispatch__`; each new storage is counted once (views share it)
    and uncounted when it is freed. Storages of `existing` tensors (weights) are not counted. Costs a Python call
    per op, so never time code while tracking.

    With `record_peak`, :meth:`peak_breakdown` says which tensors (producing op, shape) were alive at the peak: the
    way to find what dominates a model's peak memory.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = (), record_peak: bool = False) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()
        self._record = record_peak
        self._info: dict[int, tuple[str, tuple[int, ...], str, int]] = {}
        self._at_peak: list[tuple[str, tuple[int, ...], str, int]] = []
        self._existing = [t.untyped_storage() for t in existing if t.device.type != "meta"]
        self._existing_ids = {id(s) for s in self._existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_leaves(out):
            if isinstance(item, torch.Tensor):
                self._see(item, func)
        return out

    def peak_breakdown(self, top: int = 10) -> list[dict[str, Any]]:
        """The largest storages alive at the peak (needs `record_peak=True`): op, shape, dtype, MiB, and how many
        storages of that op and shape were alive."""
        groups: dict[tuple[str, tuple[int, ...], str], list[int]] = {}
        for op, shape, dtype, nbytes in self._at_peak:
            groups.setdefault((op, shape, dtype), []).append(nbytes)
        rows = [
            {"op": op, "shape": "x".join(map(str, shape)), "dtype": dtype, "count": len(sizes),
             "mib": sum(sizes) / MIB, "share": sum(sizes) / max(self.peak, 1)}
            for (op, shape, dtype), sizes in groups.items()
        ]
        return sorted(rows, key=lambda r: -r["mib"])[:top]

    def _see(self, tensor: torch.Tensor, func: Any = None) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
            return
        key = id(storage)
        if key in self._live or key in self._existing_ids:
            return
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        if self._record:
            name = str(getattr(func, "overloadpacket", func)).replace("aten.", "")
            self._info[key] = (name, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), nbytes)
            if self.current > self.peak:
                self._at_peak = [self._info[k] for k in self._live if k in self._info]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared storages once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[id(storage)] = storage.nbytes()
    return sum(seen.values())
