"""provider.file: services listed in a YAML file or a folder of ``*.yml`` files.

Each file holds ``services:``, a list of definitions (see docs/provider-file.md).
The files are checked every ``pollInterval``; a file that changed is read
again. A file that cannot be read or parsed is reported once, naming the
file and line, and the services it defined before stay as they were: a typo
never undeploys anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from interlook_core.config import (
    ConfigPath,
    Duration,
    ExtensionSettings,
    duration_field,
)
from interlook_core.errors import ServiceDefinitionError
from interlook_core.service import Service, service_from_wire
from interlook_ext.base import Provider, ServiceFeed

__all__ = ["FileProvider", "FileProviderSettings"]

log = logging.getLogger(__name__)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FileProviderSettings(ExtensionSettings):
    path: ConfigPath
    pollInterval: Duration = duration_field("500ms", gt=0, le=60)


class _BadFile(Exception):
    """A services file that cannot be used as it is; the message says where."""


class FileProvider(Provider):
    """Reports the services found in ``provider.file.path``."""

    settings_model = FileProviderSettings
    settings: FileProviderSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = Path(self.settings.path)
        # file -> (mtime_ns, size) last read, and the services it defined.
        self._stamps: dict[Path, tuple[int, int]] = {}
        self._by_file: dict[Path, list[Service]] = {}
        self._reported_errors: dict[Path, str] = {}

    def watch(self, feed: ServiceFeed) -> None:
        first = True
        while True:
            changed = self._scan()
            # A file never read successfully holds services we know nothing
            # of: a snapshot without them would undeploy them.
            if (changed or first) and not self._unknown_files():
                feed.snapshot(self._current())
                first = False
            if feed.wait(self.settings.pollInterval):
                return

    def _unknown_files(self) -> list[Path]:
        return [path for path in self._reported_errors if path not in self._by_file]

    def lookup(self, names: list[str]) -> dict[str, Service | None] | None:
        self._scan()
        if self._unknown_files():
            return None
        current = {service.name: service for service in self._current()}
        return {name: current.get(name) for name in names}

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(
                p for p in self.path.iterdir() if p.suffix in (".yml", ".yaml")
            )
        return [self.path]

    def _current(self) -> list[Service]:
        merged: dict[str, Service] = {}
        for path in sorted(self._by_file):
            for service in self._by_file[path]:
                if service.name in merged:
                    self._report(
                        path,
                        f"service {service.name!r} is also defined in another file",
                    )
                    continue
                merged[service.name] = service
        return list(merged.values())

    def _scan(self) -> bool:
        """Read the files that changed; True when the set of services may differ."""
        changed = False
        files = self._files()
        for path in files:
            try:
                stat = path.stat()
            except FileNotFoundError:
                if path == self.path and not self.path.is_dir():
                    if path in self._by_file or path not in self._reported_errors:
                        self._report(
                            path, "file not found; its services stay as they were"
                        )
                continue
            except OSError as exc:
                self._report(path, f"cannot read: {exc}")
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._stamps.get(path) == stamp:
                continue
            self._stamps[path] = stamp
            try:
                services = self._read(path)
            except _BadFile as exc:
                self._report(path, str(exc))
                continue
            self._reported_errors.pop(path, None)
            if self._by_file.get(path) != services:
                self._by_file[path] = services
                changed = True
                log.info("READ file=%s services=%d", path, len(services))
        # A file removed from the folder takes its services with it, and a
        # broken file removed before it was ever read is no longer unknown.
        if self.path.is_dir():
            for path in list(self._reported_errors):
                if path not in files:
                    del self._reported_errors[path]
                    changed = True
            for path in list(self._by_file):
                if path not in files:
                    del self._by_file[path]
                    self._stamps.pop(path, None)
                    log.info("REMOVED_FILE file=%s", path)
                    changed = True
        return changed

    def _report(self, path: Path, message: str) -> None:
        if self._reported_errors.get(path) != message:
            self._reported_errors[path] = message
            log.error("BAD_FILE file=%s reason=%s", path, message)

    def _read(self, path: Path) -> list[Service]:
        try:
            text = path.read_text(encoding="utf-8")
            # One parse gives both the nodes (for line numbers) and the data;
            # libyaml's parser, when installed, is several times faster.
            loader = _Loader(text)
            try:
                nodes = loader.get_single_node()
                data = loader.construct_document(nodes) if nodes is not None else None
            finally:
                loader.dispose()
        except (OSError, UnicodeDecodeError) as exc:
            raise _BadFile(f"cannot read: {exc}") from exc
        except yaml.MarkedYAMLError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
            raise _BadFile(f"line {line}: not valid YAML: {exc.problem}") from exc
        except yaml.YAMLError as exc:
            raise _BadFile(f"not valid YAML: {exc}") from exc
        if data is None:
            # An editor may truncate a file before writing it: an empty file
            # is taken for a file being written, not for "no services".
            raise _BadFile(
                "line 1: the file is empty; write 'services: []' for no services"
            )
        if not isinstance(data, dict) or set(data) - {"services"}:
            raise _BadFile("line 1: the file must be a map with one key, services")
        raw_services = data.get("services") or []
        if not isinstance(raw_services, list):
            raise _BadFile(f"line {_line(nodes, 0)}: services must be a list")
        services, names = [], set()
        for index, raw in enumerate(raw_services):
            try:
                service = service_from_wire(raw, provider=self.name)
            except ServiceDefinitionError as exc:
                raise _BadFile(f"line {_line(nodes, index)}: {exc}") from None
            if service.name in names:
                raise _BadFile(
                    f"line {_line(nodes, index)}: service {service.name!r} twice"
                )
            names.add(service.name)
            services.append(service)
        return services


def _line(root: yaml.Node | None, index: int) -> int | str:
    """Line of the ``index``-th item under ``services`` (1-based), if it can be found."""
    if not isinstance(root, yaml.MappingNode):
        return 1
    for key, value in root.value:
        if key.value == "services":
            if isinstance(value, yaml.SequenceNode) and index < len(value.value):
                return value.value[index].start_mark.line + 1
            return key.start_mark.line + 1
    return 1
