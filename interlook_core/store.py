"""The durable entries file (``core.workflowEntriesFile``), in SQLite.

One row per entry, its record packed with msgpack. Changes are written in
one transaction per batch, so a batch costs one commit however many entries
it touches, and no change rewrites the whole file. SQLite's write-ahead log
keeps every committed transaction through a SIGKILL of the core; with
``synchronous=NORMAL`` a power loss may lose the last transactions, which
the workflow heals (steps are idempotent and providers resend snapshots).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import msgpack

from interlook_core.entry import Entry
from interlook_core.errors import InterlookError, StoreError

__all__ = ["EntryStore", "open_entry_store"]

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (name TEXT PRIMARY KEY, record BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
)


class EntryStore:
    """Entries on disk. Use :func:`open_entry_store`; close it when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    def load(self) -> list[Entry]:
        """Read every entry. A row that cannot be decoded is logged and skipped."""
        entries = []
        try:
            rows = self._db.execute("SELECT name, record FROM entries").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read entries: {exc}") from exc
        for name, blob in rows:
            try:
                entries.append(Entry.from_record(msgpack.unpackb(blob, raw=False)))
            except (ValueError, KeyError, TypeError, InterlookError) as exc:
                log.error(
                    "SKIPPED entry=%s file=%s reason=unreadable record: %s",
                    name,
                    self.path,
                    exc,
                )
        return entries

    def save(self, changed: Iterable[Entry], removed: Iterable[str]) -> None:
        """Write a batch of changes in one transaction."""
        rows = [
            (e.name, msgpack.packb(e.to_record(), use_bin_type=True)) for e in changed
        ]
        gone = [(name,) for name in removed]
        if not rows and not gone:
            return
        try:
            with self._db:
                if rows:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO entries (name, record) VALUES (?, ?)",
                        rows,
                    )
                if gone:
                    self._db.executemany("DELETE FROM entries WHERE name = ?", gone)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write entries: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        """A small setting kept beside the entries (e.g. the workflow they follow)."""
        try:
            query = "SELECT value FROM meta WHERE key = ?"
            row = self._db.execute(query, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read {key}: {exc}") from exc
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        try:
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
                )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write {key}: {exc}") from exc

    def close(self) -> None:
        self._db.close()


def open_entry_store(path: str | os.PathLike[str], sync: bool = False) -> EntryStore:
    """Open (creating if needed) the entries file.

    Args:
        path: the file; its directory is created if missing.
        sync: fsync every transaction (``synchronous=FULL``), so a power loss
            loses nothing either, at the cost of one disk flush per batch.

    Raises:
        StoreError: the file cannot be created or is not an entries file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False
        )
        connection.isolation_level = "DEFERRED"
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
        connection.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open the entries file: {exc}") from exc
    return EntryStore(connection, path)
