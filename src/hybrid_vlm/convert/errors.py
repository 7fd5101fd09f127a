"""The one error a conversion raises for a source it cannot convert as asked (torch-free: the CLI catches it)."""

from __future__ import annotations

__all__ = ["ConversionError"]


class ConversionError(ValueError):
    """The source cannot be converted as asked. Raised before anything is written to the destination."""
