"""The HAProxy file lb.haproxy owns: checked records in, configuration text out.

Nothing from a service definition is written to the file before it passes
:func:`record_from_service`: a service name must be 1-128 letters, digits,
``_ . -``; hosts must be IP addresses (with no IPv6 zone, whose text is
free) or RFC 1123 host names; ports and weights must be integers in range.
Anything else (a newline, a space, a ``#``, an overlong name) is refused
with a message, so a definition can add no configuration of its own. DNS
names are checked the same way although the file does not hold them: a
definition with a bad one is refused as a whole.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from interlook_core.service import Service, is_valid_hostname

__all__ = [
    "BadDefinition",
    "LbRecord",
    "RenderOptions",
    "record_from_service",
    "render",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Only these characters may reach the file from a host or DNS name; fullmatch,
# because "$" in a pattern also matches before a final newline.
_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9.-]{1,253}")
MAX_NAME = 128
MAX_TARGETS = 1024
HEADER = (
    "# Written by interlook (lb.haproxy). Every change here is overwritten:\n"
    "# the services are kept in lb.haproxy's stateFile and this file is rebuilt\n"
    "# from it. One frontend and one backend per service.\n"
)


class BadDefinition(ValueError):
    """A definition holding something that cannot be written to HAProxy's file."""


@dataclass(frozen=True, slots=True)
class LbRecord:
    """One service as the file holds it; every field already checked."""

    name: str
    public_ip: str
    tls: bool
    targets: tuple[tuple[str, int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "public_ip": self.public_ip,
            "tls": self.tls,
            "targets": [list(target) for target in self.targets],
        }

    @classmethod
    def from_json(cls, raw: Any) -> LbRecord:
        """Read a record back from the state file, checking it again."""
        if not isinstance(raw, dict) or not isinstance(raw.get("targets"), list):
            raise BadDefinition(f"not a service record: {str(raw)[:80]!r}")
        targets = []
        for target in raw["targets"]:
            if not isinstance(target, list) or len(target) != 3:
                raise BadDefinition(
                    f"target {str(target)[:80]!r} is not [host, port, weight]"
                )
            targets.append(tuple(target))
        return _checked(
            raw.get("name"), raw.get("public_ip"), raw.get("tls"), targets, ()
        )

    def port(self, options: RenderOptions) -> int:
        return options.https_port if self.tls else options.http_port


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """The settings that shape the file."""

    http_port: int = 80
    https_port: int = 443
    mode: str = "http"
    health_check: bool = True
    check_interval_ms: int = 2000


def _show(value: object) -> str:
    text = repr(value)
    return (
        text if len(text) <= 60 else f"{text[:57]}...' ({len(str(value))} characters)"
    )


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise BadDefinition(f"service name {_show(name)} is not a string")
    if len(name) > MAX_NAME:
        raise BadDefinition(
            f"service name {_show(name)} is longer than {MAX_NAME} characters"
        )
    if not _NAME.fullmatch(name):
        raise BadDefinition(
            f"service name {_show(name)} may hold only letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def _is_hostname(name: object) -> bool:
    return (
        isinstance(name, str)
        and _HOST_CHARACTERS.fullmatch(name) is not None
        and is_valid_hostname(name)
    )


def _address_text(value: object, what: str) -> str | None:
    """The canonical text of an IP address; None when ``value`` is not one.

    Raises:
        BadDefinition: an IPv6 address with a zone (``%eth0``): Python accepts
            any text after the ``%``, a newline too, and it would reach the file.
    """
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if getattr(address, "scope_id", None) is not None:
        raise BadDefinition(f"{what} {_show(value)} has an IPv6 zone (%...)")
    return str(address)


def _check_host(host: object, where: str) -> str:
    address = _address_text(host, f"{where} host")
    if address is not None:
        return address
    if isinstance(host, str) and _is_hostname(host):
        return host.rstrip(".")
    raise BadDefinition(f"{where} host {_show(host)} is not an IP address or host name")


def _check_int(value: object, low: int, high: int, what: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise BadDefinition(f"{what} {_show(value)} is not an integer in {low}..{high}")
    return value


def _checked(
    name: object,
    public_ip: object,
    tls: object,
    targets: list[Any] | tuple[Any, ...],
    dns_names: tuple[Any, ...],
) -> LbRecord:
    name = _check_name(name)
    if public_ip is None:
        raise BadDefinition(
            f"service {name!r} has no public_ip yet; put an ipam step before lb.haproxy "
            "in core.workflowSteps"
        )
    ip = _address_text(public_ip, "public_ip")
    if ip is None:
        raise BadDefinition(f"public_ip {_show(public_ip)} is not an IP address")
    if not isinstance(tls, bool):
        raise BadDefinition(f"tls {_show(tls)} is not true or false")
    if len(targets) > MAX_TARGETS:
        raise BadDefinition(f"{len(targets)} targets, more than {MAX_TARGETS}")
    checked = []
    for index, (host, port, weight) in enumerate(targets):
        where = f"targets[{index}]"
        checked.append(
            (
                _check_host(host, where),
                _check_int(port, 1, 65535, f"{where} port"),
                _check_int(weight, 0, 256, f"{where} weight"),
            )
        )
    for dns_name in dns_names:
        if not _is_hostname(dns_name):
            raise BadDefinition(f"DNS name {_show(dns_name)} is not a valid host name")
    return LbRecord(name=name, public_ip=ip, tls=tls, targets=tuple(checked))


def record_from_service(service: Service) -> LbRecord:
    """Check every field of ``service`` that could reach the file.

    Raises:
        BadDefinition: a field holds something HAProxy's file cannot take
            as it is; the message names the field and shows the value.
    """
    targets = [(t.host, t.port, t.weight) for t in service.targets]
    return _checked(
        service.name, service.public_ip, service.tls, targets, service.dns_names
    )


def _address(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _frontend_name(service: str) -> str:
    return f"il-fe-{service}"


def _backend_name(service: str) -> str:
    return f"il-be-{service}"


def render(records: list[LbRecord], options: RenderOptions) -> str:
    """The whole file for ``records``, in name order so equal input gives equal text."""
    parts = [HEADER]
    for record in sorted(records, key=lambda r: r.name):
        mode = "tcp" if record.tls else options.mode
        lines = [
            "",
            f"frontend {_frontend_name(record.name)}",
            f"    mode {mode}",
            f"    bind {_address(record.public_ip, record.port(options))}",
            f"    default_backend {_backend_name(record.name)}",
            "",
            f"backend {_backend_name(record.name)}",
            f"    mode {mode}",
            "    balance roundrobin",
        ]
        check = ""
        if options.health_check:
            check = f" check inter {options.check_interval_ms}"
            if mode == "http":
                # Any answer short of a server error means the target is up.
                lines += [
                    "    option httpchk GET /",
                    "    http-check expect ! rstatus ^5",
                ]
        for index, (host, port, weight) in enumerate(record.targets, start=1):
            lines.append(
                f"    server t{index} {_address(host, port)} weight {weight}{check}"
            )
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)
