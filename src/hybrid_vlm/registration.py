"""Registration with transformers' Auto classes, paid for only by the sessions that use them.

Importing transformers' model or processor machinery costs about as much as importing torch, and most scripts that
import hybrid_vlm use only part of it. So `import hybrid_vlm` imports none of it: each Auto class gets our entry when
transformers imports the module that defines it (at once if that module is already imported), and the entry names
our class without importing it. The first lookup of the entry imports our class and hands it to the Auto class's
own `register`, so what ends up in transformers' mapping is exactly what an eager `register` would have put there.
`register_auto_classes()` does all of it eagerly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_PACKAGE = __name__.rpartition(".")[0]
MODEL_TYPE = "hybrid_vlm"
CONFIG_MODULE = f"{_PACKAGE}.configuration_hybrid_vlm"


@dataclass(frozen=True)
class AutoEntry:
    """One registration: `auto_class.register(key, our_class)`, where `auto_class` lives in transformers' module
    `auto_module` and writes to that module's `mapping` (None: the Auto class's own `_model_mapping`).

    `keyword` names the argument our class is passed as, where `register` takes it by keyword. An Auto class the
    installed transformers does not define (AutoModelForVision2Seq left in 5.0) is skipped.
    """

    auto_module: str
    auto_class: str
    our_module: str
    our_class: str
    mapping: str | None = None
    keyword: str | None = None

    def load(self) -> type:
        return getattr(importlib.import_module(f"{_PACKAGE}.{self.our_module}"), self.our_class)


_AUTO = "transformers.models.auto."
_MODEL = "modeling_hybrid_vlm"
AUTO_ENTRIES: tuple[AutoEntry, ...] = (
    AutoEntry(_AUTO + "configuration_auto", "AutoConfig", "configuration_hybrid_vlm", "HybridVLMConfig",
              mapping="CONFIG_MAPPING"),
    AutoEntry(_AUTO + "modeling_auto", "AutoModel", _MODEL, "HybridVLMModel"),
    AutoEntry(_AUTO + "modeling_auto", "AutoModelForImageTextToText", _MODEL, "HybridVLMForConditionalGeneration"),
    AutoEntry(_AUTO + "modeling_auto", "AutoModelForVision2Seq", _MODEL, "HybridVLMForConditionalGeneration"),
    # TRL falls back to AutoModelForCausalLM when it is given a model path.
    AutoEntry(_AUTO + "modeling_auto", "AutoModelForCausalLM", _MODEL, "HybridVLMForConditionalGeneration"),
    AutoEntry(_AUTO + "image_processing_auto", "AutoImageProcessor", "image_processing_hybrid_vlm",
              "HybridVLMImageProcessor", mapping="IMAGE_PROCESSOR_MAPPING", keyword="slow_image_processor_class"),
    AutoEntry(_AUTO + "processing_auto", "AutoProcessor", "processing_hybrid_vlm", "HybridVLMProcessor",
              mapping="PROCESSOR_MAPPING"),
    # The top-level `transformers.AutoVideoProcessor` is a torchvision placeholder when torchvision is missing; the
    # submodule holds the real class (on 4.57 its from_pretrained still needs torchvision; AutoProcessor and
    # HybridVLMVideoProcessor.from_pretrained load ours without it).
    AutoEntry(_AUTO + "video_processing_auto", "AutoVideoProcessor", "video_processing_hybrid_vlm",
              "HybridVLMVideoProcessor", mapping="VIDEO_PROCESSOR_MAPPING"),
)


def _config_class() -> type:
    return AUTO_ENTRIES[0].load()


def _register_now(auto_class: Any, entry: AutoEntry) -> None:
    if entry.auto_class == "AutoConfig":
        auto_class.register(MODEL_TYPE, entry.load(), exist_ok=True)
    elif entry.keyword is not None:
        auto_class.register(_config_class(), exist_ok=True, **{entry.keyword: entry.load()})
    else:
        auto_class.register(_config_class(), entry.load(), exist_ok=True)


@dataclass(frozen=True)
class _Pending:
    """Stands in transformers' registry for a class of ours that is not imported yet."""

    auto_class: Any
    entry: AutoEntry


class _RegistryWithPending(dict):
    """An Auto mapping's `_extra_content` in which an entry may still be pending.

    Reading a pending entry (by key or through `values`/`items`, which transformers uses to look classes up by
    name) removes it, registers the real class with the Auto class's `register`, and returns what that stored.
    """

    _lock = threading.RLock()

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, _Pending):
            with self._lock:
                value = super().get(key)
                if isinstance(value, _Pending):
                    super().pop(key)
                    try:
                        _register_now(value.auto_class, value.entry)
                    except BaseException:
                        super().__setitem__(key, value)
                        raise
                value = super().__getitem__(key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[key] for key in list(self.keys())]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(key, self[key]) for key in list(self.keys())]

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self.items()),)


def _add_pending(entry: AutoEntry, key: Any) -> None:
    """Put one entry into its Auto mapping without importing our class.

    Where the mapping does not keep its registrations in a plain dict (`_extra_content` is transformers' private
    attribute; every release we support has it), register eagerly instead: slower, never wrong.
    """
    module = sys.modules[entry.auto_module]
    auto_class = getattr(module, entry.auto_class, None)
    if auto_class is None:
        return
    mapping = getattr(module, entry.mapping) if entry.mapping else getattr(auto_class, "_model_mapping", None)
    store = getattr(mapping, "_extra_content", None)
    if type(store) is dict:
        store = mapping._extra_content = _RegistryWithPending(store)
    if not isinstance(store, _RegistryWithPending):
        _register_now(auto_class, entry)
    elif key not in store:
        dict.__setitem__(store, key, _Pending(auto_class, entry))


_imported: set[str] = set()
_added: set[AutoEntry] = set()


def _on_import(module_name: str) -> None:
    """Add every entry whose Auto module and key exist now. The models and processors are keyed by our config
    class, so they wait for its module; AutoConfig is keyed by the model type and waits for nothing."""
    _imported.add(module_name)
    config_class = sys.modules[CONFIG_MODULE].HybridVLMConfig if CONFIG_MODULE in _imported else None
    for entry in AUTO_ENTRIES:
        if entry in _added or entry.auto_module not in _imported:
            continue
        if entry.auto_class == "AutoConfig":
            _add_pending(entry, MODEL_TYPE)
        elif config_class is not None:
            _add_pending(entry, config_class)
        else:
            continue
        _added.add(entry)


class _ThenRegister(importlib.abc.Loader):
    """A module loader that runs a callback once the module has executed."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[str], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `_on_import` right after one of the watched modules is imported, then gets out of the way."""

    def __init__(self) -> None:
        self.watched: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.watched:
            return None
        self.watched.discard(fullname)
        if not self.watched and self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRegister(spec.loader, _on_import)
                return spec
        return None


_after_import = _AfterImport()


def register_auto_classes_lazily() -> None:
    """Register with every Auto class once transformers has imported the module that defines it and our class can
    be looked up (what `import hybrid_vlm` does)."""
    for module_name in {CONFIG_MODULE, *(entry.auto_module for entry in AUTO_ENTRIES)}:
        if module_name in sys.modules:
            _on_import(module_name)
        else:
            _after_import.watched.add(module_name)
    if _after_import.watched and _after_import not in sys.meta_path:
        sys.meta_path.insert(0, _after_import)


def register_auto_classes() -> None:
    """Make `Auto*.from_pretrained` return our classes for `model_type: hybrid_vlm` now. Safe to call twice."""
    for entry in AUTO_ENTRIES:
        auto_class = getattr(importlib.import_module(entry.auto_module), entry.auto_class, None)
        if auto_class is not None:
            _register_now(auto_class, entry)
