"""The labels that publish a Docker container or Swarm service, and their checks.

A container or service is published when it carries both ``interlook.hosts``
and ``interlook.port`` (and every label of ``provider.docker.labelSelector``).
:func:`parse_publication` turns those labels into a :class:`Publication`, or
raises :class:`LabelError` naming the label, its value and what is wrong.
Nothing here talks to an engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from interlook_core.service import is_valid_hostname

__all__ = [
    "LABEL_HOSTS",
    "LABEL_PORT",
    "LABEL_SSL",
    "LabelError",
    "Publication",
    "is_candidate",
    "matches_selector",
    "parse_publication",
    "parse_selector_item",
]

LABEL_HOSTS = "interlook.hosts"
LABEL_PORT = "interlook.port"
LABEL_SSL = "interlook.ssl"

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})


class LabelError(ValueError):
    """A publication label with a value that cannot be used.

    Attributes:
        label: the label's key, e.g. ``interlook.port``.
        value: the value found on the container or service.
        reason: what is wrong with it, for the operator.
    """

    def __init__(self, label: str, value: str, reason: str) -> None:
        super().__init__(f"label {label}={value!r}: {reason}")
        self.label = label
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Publication:
    """What the labels ask for: names, the application's port, TLS or not."""

    dns_names: tuple[str, ...]
    port: int
    tls: bool


def parse_selector_item(item: str) -> tuple[str, str | None]:
    """Split a ``labelSelector`` item, ``key`` or ``key=value``.

    Raises:
        ValueError: the key is empty or holds white space.
    """
    key, sep, value = item.strip().partition("=")
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"{item!r} is not a label selector; use key or key=value")
    return key, (value.strip() if sep else None)


def matches_selector(labels: Mapping[str, str], selector: Iterable[str]) -> bool:
    """True when ``labels`` holds every ``key`` / ``key=value`` of ``selector``."""
    for item in selector:
        key, value = parse_selector_item(item)
        if key not in labels or (value is not None and labels[key] != value):
            return False
    return True


def is_candidate(labels: Mapping[str, str] | None, selector: Iterable[str]) -> bool:
    """True when the labels ask for publication: hosts, port and the selector."""
    if not labels:
        return False
    return (
        LABEL_HOSTS in labels
        and LABEL_PORT in labels
        and matches_selector(labels, selector)
    )


def parse_publication(labels: Mapping[str, str]) -> Publication:
    """Read the publication labels of a candidate (see :func:`is_candidate`).

    Raises:
        LabelError: a port that is not a number in 1..65535, a host list that
            is empty or holds a name that is not a valid host name, or an
            ``interlook.ssl`` that is not true or false.
    """
    return Publication(
        dns_names=_parse_hosts(labels.get(LABEL_HOSTS, "")),
        port=_parse_port(labels.get(LABEL_PORT, "")),
        tls=_parse_ssl(labels.get(LABEL_SSL)),
    )


def _parse_hosts(raw: str) -> tuple[str, ...]:
    # Empty items are tolerated so that a trailing comma is not an error.
    names = [item.strip() for item in raw.split(",") if item.strip()]
    if not names:
        raise LabelError(LABEL_HOSTS, raw, "the host list is empty")
    for name in names:
        if not is_valid_hostname(name):
            raise LabelError(LABEL_HOSTS, raw, f"{name!r} is not a valid host name")
    return tuple(dict.fromkeys(name.rstrip(".").lower() for name in names))


def _parse_port(raw: str) -> int:
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise LabelError(LABEL_PORT, raw, "not a port number (1..65535)")
    return int(text)


def _parse_ssl(raw: str | None) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise LabelError(LABEL_SSL, raw, "must be true or false")
