"""Public names of a package that load their module on first use (PEP 562 module `__getattr__`).

Importing the package then costs only what it imports itself; `from package import name` imports the one module
that defines `name`, and the value is cached in the package's namespace so the next lookup is a plain attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose public `names` map to the module (relative to the package, as
    `importlib.import_module(module, package)` takes it: `.x`, `..y`) that defines each; `namespace` is the
    package's `globals()`."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(module, package), name)
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
