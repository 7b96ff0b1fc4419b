"""interlook's core: the entry list, the flowControl loop and the bus."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
