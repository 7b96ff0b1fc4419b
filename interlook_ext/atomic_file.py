"""An extension's own state files: read when present, replaced whole, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from interlook_core.errors import ConfigError

__all__ = ["read_if_present", "write_atomically"]


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it.

    The folder is fsynced too, so the rename itself survives a power loss.

    Args:
        path: the file to replace; its folder is created if missing.
        text: the new content.
        mode: permission bits of the new file (the default keeps it private).

    Raises:
        OSError: the file could not be written; ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_if_present(path: Path, what: str) -> str | None:
    """The text of a state file, or None when it does not exist yet.

    Args:
        path: the file.
        what: how the error names it, e.g. ``"ipam.file: db_file"``.

    Raises:
        ConfigError: the file exists but cannot be read.
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from exc
