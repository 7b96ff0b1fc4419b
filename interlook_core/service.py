"""A service definition: what a provider publishes and what steps act on.

The same shape travels on the wire (a msgpack map, see docs/protocol.md),
sits in the entries file and is shown by the HTTP API. :func:`service_from_wire`
is the one place where a definition coming from outside is checked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from interlook_core.errors import ServiceDefinitionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "Service",
    "Target",
    "is_valid_hostname",
    "is_valid_service_name",
    "parse_address",
    "service_from_wire",
]

MAX_TARGETS = 1024
MAX_DNS_NAMES = 64
# \Z, not $: "$" also matches before a final newline, which would let "web\n" pass.
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def is_valid_service_name(name: object) -> TypeGuard[str]:
    """Letters, digits, ``_ . -``, at most 128, starting with a letter or digit."""
    return isinstance(name, str) and _SERVICE_NAME.match(name) is not None


def is_valid_hostname(name: object) -> TypeGuard[str]:
    """A DNS host name by RFC 1123: dot-separated labels, at most 253 characters."""
    if not isinstance(name, str) or not name or len(name) > 253:
        return False
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return all(_LABEL.match(label) for label in labels)


def parse_address(value: object) -> IPAddress | None:
    """An IP address without an IPv6 zone, or None.

    ``ipaddress`` takes any text after ``%`` as an IPv6 zone, newlines
    included; such text must never reach a generated configuration file.
    """
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _is_host(value: object) -> TypeGuard[str]:
    return parse_address(value) is not None or is_valid_hostname(value)


@dataclass(frozen=True, slots=True)
class Target:
    """One place the service answers: a host, a port and a load-balancing weight."""

    host: str
    port: int
    weight: int = 1

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Service:
    """A published service.

    ``public_ip`` is not the provider's to set: the IPAM step assigns it and
    the core keeps it across new definitions from the provider.
    """

    name: str
    provider: str
    targets: tuple[Target, ...] = ()
    tls: bool = False
    dns_names: tuple[str, ...] = ()
    public_ip: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "targets": [target.to_wire() for target in self.targets],
            "tls": self.tls,
            "dns_names": list(self.dns_names),
            "public_ip": self.public_ip,
        }

    def same_definition(self, other: Service) -> bool:
        """True when what the provider controls is unchanged (``public_ip`` aside)."""
        return (
            self.targets == other.targets
            and self.tls == other.tls
            and self.dns_names == other.dns_names
            and self.provider == other.provider
        )


def _fail(name: object, message: str) -> ServiceDefinitionError:
    label = name if isinstance(name, str) and len(name) <= 128 else "<unnamed>"
    return ServiceDefinitionError(f"service {label!r}: {message}")


def _target_from_wire(name: str, index: int, raw: object) -> Target:
    if not isinstance(raw, dict):
        raise _fail(name, f"targets[{index}] must be a map with host and port")
    unknown = set(raw) - {"host", "port", "weight"}
    if unknown:
        raise _fail(
            name, f"targets[{index}] has unknown field(s) {sorted(map(str, unknown))}"
        )
    host, port, weight = raw.get("host"), raw.get("port"), raw.get("weight", 1)
    if not _is_host(host):
        raise _fail(
            name, f"targets[{index}].host {host!r} is not an IP address or host name"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _fail(
            name, f"targets[{index}].port {port!r} is not a port number (1..65535)"
        )
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int)
        or not 0 <= weight <= 256
    ):
        raise _fail(
            name, f"targets[{index}].weight {weight!r} is not an integer in 0..256"
        )
    return Target(host=host, port=port, weight=weight)


def service_from_wire(raw: object, provider: str | None = None) -> Service:
    """Check a definition received from outside and build a :class:`Service`.

    Args:
        raw: the decoded map.
        provider: when given, the provider the definition is from; it wins
            over a ``provider`` field in ``raw``.

    Raises:
        ServiceDefinitionError: a field is missing, unknown, or of the wrong
            type or value. The message names the service and the field.
    """
    if not isinstance(raw, dict):
        raise ServiceDefinitionError(
            f"a service definition must be a map, not {type(raw).__name__}"
        )
    name = raw.get("name")
    if not is_valid_service_name(name):
        raise _fail(name, "name must be 1-128 letters, digits, '_', '.' or '-'")
    unknown = set(raw) - {
        "name",
        "provider",
        "targets",
        "tls",
        "dns_names",
        "public_ip",
    }
    if unknown:
        raise _fail(name, f"unknown field(s) {sorted(map(str, unknown))}")
    provider = provider or raw.get("provider")
    if not isinstance(provider, str) or not provider:
        raise _fail(name, "provider must be a non-empty string")

    targets_raw = raw.get("targets", [])
    if not isinstance(targets_raw, list | tuple) or len(targets_raw) > MAX_TARGETS:
        raise _fail(name, f"targets must be a list of at most {MAX_TARGETS}")
    targets = tuple(_target_from_wire(name, i, t) for i, t in enumerate(targets_raw))

    tls = raw.get("tls", False)
    if not isinstance(tls, bool):
        raise _fail(name, f"tls must be true or false, not {tls!r}")

    dns_raw = raw.get("dns_names", [])
    if not isinstance(dns_raw, list | tuple) or len(dns_raw) > MAX_DNS_NAMES:
        raise _fail(name, f"dns_names must be a list of at most {MAX_DNS_NAMES} names")
    for dns_name in dns_raw:
        if not is_valid_hostname(dns_name):
            raise _fail(
                name, f"dns_names holds {dns_name!r}, which is not a valid host name"
            )
    dns_names = tuple(dict.fromkeys(n.rstrip(".").lower() for n in dns_raw))

    public_ip = raw.get("public_ip")
    if public_ip is not None:
        address = parse_address(public_ip)
        if address is None:
            raise _fail(name, f"public_ip {public_ip!r} is not an IP address")
        public_ip = str(address)
    return Service(
        name=name,
        provider=provider,
        targets=targets,
        tls=tls,
        dns_names=dns_names,
        public_ip=public_ip,
    )
