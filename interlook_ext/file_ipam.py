"""ipam.file: public IPs from a pool, recorded in a JSON file.

The pool is ``network_cidr`` without its network and broadcast addresses,
or ``ip_start``..``ip_end`` inside it. The allocations are written to
``db_file`` atomically (temporary file, fsync, rename) before the step
replies, so a SIGKILL at any moment leaves either the old file or the new
one, and an IP the core was told about is always on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import model_validator

from interlook_core.config import ConfigPath, ExtensionSettings
from interlook_core.errors import ConfigError, StepError
from interlook_core.service import Service
from interlook_ext.atomic_file import read_if_present, write_atomically
from interlook_ext.base import Provisioner

__all__ = ["FileIpam", "FileIpamSettings"]

log = logging.getLogger(__name__)

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FileIpamSettings(ExtensionSettings):
    network_cidr: str
    ip_start: str | None = None
    ip_end: str | None = None
    db_file: ConfigPath = "./var/ipam.json"

    @model_validator(mode="after")
    def _check_pool(self) -> FileIpamSettings:
        pool_bounds(self)
        return self


def pool_bounds(settings: FileIpamSettings) -> tuple[int, int, int]:
    """First and last allocatable address as integers, and the IP version.

    Raises:
        ValueError: the network or a bound is not valid or outside the network.
    """
    try:
        network: _IPNetwork = ipaddress.ip_network(settings.network_cidr, strict=False)
    except ValueError as exc:
        raise ValueError(f"network_cidr: {exc}") from None
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.num_addresses > 2:
        first, last = first + 1, last if network.version == 6 else last - 1
    for key in ("ip_start", "ip_end"):
        value = getattr(settings, key)
        if value is None:
            continue
        try:
            address = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        if address not in network:
            raise ValueError(f"{key}: {value} is not in {network}")
        if key == "ip_start":
            first = max(first, int(address))
        else:
            last = min(last, int(address))
    if first > last:
        raise ValueError("the pool is empty (ip_start is after ip_end)")
    return first, last, network.version


class FileIpam(Provisioner):
    """Allocates one IP per service name; the same name always gets the same IP."""

    settings_model = FileIpamSettings
    settings: FileIpamSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings
        self.db_file = Path(settings.db_file)
        self._first, self._last, version = pool_bounds(settings)
        self._factory = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        self._lock = threading.Lock()
        self._allocations = self._load()

    @property
    def allocations(self) -> dict[str, str]:
        """Service name -> IP, as on disk."""
        return dict(self._allocations)

    def _load(self) -> dict[str, str]:
        text = read_if_present(self.db_file, "ipam.file: db_file")
        if text is None:
            return {}
        try:
            data = json.loads(text)
            allocations = data["allocations"]
            if not isinstance(allocations, dict):
                raise TypeError("allocations is not a map")
            for name, ip in allocations.items():
                ipaddress.ip_address(ip)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"ipam.file: db_file {self.db_file} is not an allocations file ({exc}); "
                "restore it from a backup or move it away to start empty"
            ) from exc
        return dict(allocations)

    def _save(self, allocations: dict[str, str]) -> None:
        payload = json.dumps(
            {"version": 1, "allocations": allocations}, indent=1, sort_keys=True
        )
        write_atomically(self.db_file, payload, mode=0o644)

    def _in_pool(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (
            isinstance(address, self._factory)
            and self._first <= int(address) <= self._last
        )

    def _free_ip(self, wanted: str | None) -> str:
        used = {int(ipaddress.ip_address(ip)) for ip in self._allocations.values()}
        if (
            wanted
            and self._in_pool(wanted)
            and int(ipaddress.ip_address(wanted)) not in used
        ):
            return wanted
        for candidate in range(self._first, self._last + 1):
            if candidate not in used:
                return str(self._factory(candidate))
        size = self._last - self._first + 1
        raise StepError(f"no free IP in the pool ({size} addresses, all allocated)")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the file lock and work on the allocations as on disk now.

        Several ipam.file processes may share one db_file (on one host or a
        shared file system); the lock file keeps their read-modify-write
        cycles apart, and the reload sees what the others wrote.
        """
        with self._lock:
            try:
                self.db_file.parent.mkdir(parents=True, exist_ok=True)
                lock = open(f"{self.db_file}.lock", "a+")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise StepError(
                    f"cannot open the lock file of {self.db_file}: {exc}"
                ) from exc
            with lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    try:
                        self._allocations = self._load()
                    except ConfigError as exc:
                        raise StepError(str(exc)) from exc
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def deploy(self, service: Service) -> dict[str, Any]:
        with self._exclusive():
            current = self._allocations.get(service.name)
            if current is not None and self._in_pool(current):
                return {"public_ip": current}
            # After a lost db_file, the IP the core remembers is the one to keep.
            ip = self._free_ip(service.public_ip)
            allocations = dict(self._allocations)
            allocations[service.name] = ip
            try:
                self._save(allocations)
            except OSError as exc:
                raise StepError(f"cannot write {self.db_file}: {exc}") from exc
            self._allocations = allocations
        log.info("ALLOCATED service=%s ip=%s", service.name, ip)
        return {"public_ip": ip}

    def undeploy(self, service: Service) -> dict[str, Any]:
        with self._exclusive():
            ip = self._allocations.get(service.name)
            if ip is not None:
                allocations = dict(self._allocations)
                del allocations[service.name]
                try:
                    self._save(allocations)
                except OSError as exc:
                    raise StepError(f"cannot write {self.db_file}: {exc}") from exc
                self._allocations = allocations
        if ip is not None:
            log.info("RELEASED service=%s ip=%s", service.name, ip)
        return {"public_ip": None}
