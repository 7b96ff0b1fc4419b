"""Logging for interlook's processes: one handler, set up by the entry points."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", destination: str = "stdout", prefix: str = "") -> None:
    """Send log lines to stdout, stderr or a file (appended).

    Args:
        level: DEBUG, INFO, WARNING or ERROR.
        destination: ``stdout``, ``stderr`` or a file path.
        prefix: put before every message, e.g. the process's role, so the
            lines of a process group can be told apart in one stream.
    """
    if destination == "stdout":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    elif destination == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(destination, encoding="utf-8")
    fmt = FORMAT.replace("%(name)s", f"{prefix}%(name)s") if prefix else FORMAT
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp and asyncio are quiet unless something is wrong.
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))
