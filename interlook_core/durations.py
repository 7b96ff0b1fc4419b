"""Durations as written in the configuration: ``500ms``, ``3s``, ``10m``, ``1h``."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


def parse_duration(text: str | int | float) -> float:
    """Return the number of seconds a duration stands for.

    Args:
        text: a number followed by ``ms``, ``s``, ``m`` or ``h``. A bare
            number is refused: the unit is what tells ``30`` seconds from
            ``30`` milliseconds apart.

    Raises:
        ValueError: the text is not such a duration, or is negative.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(
            f"{text!r} is not a duration; write it with a unit, e.g. 500ms, 3s, 10m, 1h"
        )
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use a number and ms, s, m or h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """Return the shortest exact spelling of ``seconds`` in the units above."""
    for unit in ("h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{round(seconds * 1000)}ms"
