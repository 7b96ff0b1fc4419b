"""dns.rfc2136: DNS names by RFC 2136 dynamic update (BIND, PowerDNS, Knot...).

Every name in a service's ``dns_names`` gets an A record (AAAA for an IPv6
``public_ip``) and, beside it at the same name, a TXT record
``"interlook service=NAME"`` that marks the name as created by interlook for
that service. Only names carrying this service's mark are ever changed or
removed; an address record without it, or a mark naming another service, is
a conflict reported as the entry's error.

Each change is one update message whose prerequisites state what was read
just before (no address record and the same TXT set for a new name, the same
TXT set for an owned one), so the check and the change are atomic on the
server: if someone changed the name in between, the server refuses the
update and the name is read again.

A step request carries only the new definition, so the names a service held
before are kept in ``stateFile`` (JSON, written atomically). Before a change
the file records the union of the old and new names, after a complete
success only the new ones: a crash in between leaves a name that a later
step still finds and removes. If the file is lost, names dropped from a
definition while it was gone stay in the zone with their mark; they can be
found by their TXT value and removed by hand.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
from pydantic import Field, field_validator, model_validator

from interlook_core.config import (
    ConfigPath,
    Duration,
    ExtensionSettings,
    duration_field,
)
from interlook_core.errors import ConfigError, StepError
from interlook_core.service import Service, is_valid_hostname, is_valid_service_name
from interlook_ext.atomic_file import read_if_present, write_atomically
from interlook_ext.base import Provisioner

__all__ = ["Rfc2136Dns", "Rfc2136Settings"]

log = logging.getLogger(__name__)

OWNER_PREFIX = "interlook service="
# A name changed by someone else between the read and the update is read again
# this many times before the step gives up with an error.
MAX_ATTEMPTS = 3
# fullmatch, because "$" in a pattern also matches before a final newline.
_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9.-]{1,253}")
_SERVICE_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_KEY_FILE_SECRET = re.compile(r'secret\s+"([^"]+)"')

_ALGORITHMS = Literal[
    "hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"
]


class Rfc2136Settings(ExtensionSettings):
    server: str
    port: int = Field(53, ge=1, le=65535)
    zone: str
    tsigKeyName: str | None = None
    tsigSecret: str | None = None
    tsigSecretFile: ConfigPath | None = None
    tsigAlgorithm: _ALGORITHMS = "hmac-sha256"
    ttl: int = Field(60, ge=0, le=2_147_483_647)
    timeout: Duration = duration_field("5s", gt=0, le=300)
    stateFile: ConfigPath = "./var/dns-rfc2136.json"

    @field_validator("tsigSecretFile")
    @classmethod
    def _readable_secret(cls, path: str | None) -> str | None:
        if path is not None:
            _read_secret_file(path)
        return path

    @model_validator(mode="after")
    def _check(self) -> Rfc2136Settings:
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            if not is_valid_hostname(self.server):
                raise ValueError(
                    f"server {self.server!r} is not an IP address or host name"
                ) from None
        if not is_valid_hostname(self.zone):
            raise ValueError(f"zone {self.zone!r} is not a valid DNS name")
        if self.tsigSecret is not None and self.tsigSecretFile is not None:
            raise ValueError("give tsigSecret or tsigSecretFile, not both")
        has_secret = self.tsigSecret is not None or self.tsigSecretFile is not None
        if has_secret and not self.tsigKeyName:
            raise ValueError("tsigKeyName is needed with a TSIG secret")
        if self.tsigKeyName and not has_secret:
            raise ValueError("tsigKeyName needs tsigSecret or tsigSecretFile")
        if self.tsigSecret is not None:
            _check_secret(self.tsigSecret, "tsigSecret")
        return self


def _check_secret(secret: str, where: str) -> str:
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not base64 (as tsig-keygen prints it)") from None
    return secret


def _read_secret_file(path: str) -> str:
    """The base64 secret in ``path``: a bare secret, or a BIND key file.

    Raises:
        ValueError: the file cannot be read or holds no usable secret.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    found = _KEY_FILE_SECRET.search(text)
    secret = found.group(1) if found else text.strip()
    return _check_secret(secret, f"{path}")


@dataclass
class _NameView:
    """What the server holds at one name, as read before an update."""

    owners: set[str] = field(default_factory=set)
    txt: list[dns.rdata.Rdata] = field(default_factory=list)
    addresses: set[tuple[str, str]] = field(default_factory=set)
    alias: bool = False


class _PrerequisiteFailed(Exception):
    """The name changed between the read and the update."""


class Rfc2136Dns(Provisioner):
    """Keeps an A/AAAA record per DNS name of a service, marked as its own.

    Error handling: every failure is a :class:`StepError` naming the DNS name
    and the cause (outside the zone, not a valid name, owned by something
    else, key refused, server unreachable). Logs to ``interlook_ext.dns_rfc2136``.
    """

    settings_model = Rfc2136Settings
    settings: Rfc2136Settings
    capacity: ClassVar[int] = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings
        self.zone = dns.name.from_text(settings.zone)
        self.server = settings.server
        self.state_file = Path(settings.stateFile)
        self._keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        self._keyname: dns.name.Name | None = None
        if settings.tsigKeyName:
            secret = settings.tsigSecret
            if secret is None:
                try:
                    secret = _read_secret_file(str(settings.tsigSecretFile))
                except ValueError as exc:
                    raise ConfigError(f"dns.rfc2136: tsigSecretFile: {exc}") from None
            self._keyname = dns.name.from_text(settings.tsigKeyName)
            self._keyring = {
                self._keyname: dns.tsig.Key(
                    self._keyname, secret, settings.tsigAlgorithm
                )
            }
        self._state_lock = threading.Lock()
        self._service_locks: dict[str, threading.Lock] = {}
        self._state = self._load_state()

    # -- the state file -------------------------------------------------------

    def _load_state(self) -> dict[str, list[str]]:
        text = read_if_present(self.state_file, "dns.rfc2136: stateFile")
        if text is None:
            return {}
        try:
            services = json.loads(text)["services"]
            if not isinstance(services, dict) or not all(
                isinstance(names, list) and all(isinstance(n, str) for n in names)
                for names in services.values()
            ):
                raise TypeError("services is not a map of name lists")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"dns.rfc2136: stateFile {self.state_file} is not a names file ({exc}); "
                "restore it or move it away to start empty"
            ) from exc
        return services

    def _record_names(self, service: str, names: list[str] | None) -> None:
        with self._state_lock:
            state = dict(self._state)
            if names:
                state[service] = sorted(names)
            else:
                state.pop(service, None)
            if state == self._state:
                return
            payload = json.dumps(
                {"version": 1, "services": state}, indent=1, sort_keys=True
            )
            try:
                write_atomically(self.state_file, payload)
            except OSError as exc:
                raise StepError(
                    f"cannot write stateFile {self.state_file}: {exc}"
                ) from exc
            self._state = state

    def owned_names(self, service: str) -> list[str]:
        """The names recorded for ``service`` in the state file."""
        with self._state_lock:
            return list(self._state.get(service, []))

    def _service_lock(self, service: str) -> threading.Lock:
        with self._state_lock:
            return self._service_locks.setdefault(service, threading.Lock())

    # -- names ----------------------------------------------------------------

    def _name(self, text: str) -> dns.name.Name:
        if not (_NAME_CHARACTERS.fullmatch(text) and is_valid_hostname(text)):
            raise StepError(f"DNS name {text[:80]!r} is not a valid host name")
        try:
            name = dns.name.from_text(text)
        except dns.exception.DNSException as exc:
            raise StepError(f"DNS name {text!r} is not valid: {exc}") from None
        if not name.is_subdomain(self.zone):
            raise StepError(
                f"DNS name {text!r} is outside the zone {self.zone.to_text(True)!r}"
            )
        return name

    # -- talking to the server ------------------------------------------------

    def _where(self) -> str:
        return f"{self.server}:{self.settings.port}"

    def _exchange(self, message: dns.message.Message) -> dns.message.Message:
        settings = self.settings
        if self._keyring is not None:
            message.use_tsig(self._keyring, keyname=self._keyname)
        try:
            return dns.query.tcp(
                message, self._address(), timeout=settings.timeout, port=settings.port
            )
        except dns.exception.Timeout:
            raise StepError(
                f"DNS server {self._where()} did not answer within {settings.timeout:g}s"
            ) from None
        except (dns.tsig.PeerBadKey, dns.tsig.BadKey):
            raise StepError(
                f"DNS server {self._where()} does not know the TSIG key "
                f"{settings.tsigKeyName!r} (BADKEY)"
            ) from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise StepError(
                f"DNS server {self._where()} rejected the signature of TSIG key "
                f"{settings.tsigKeyName!r}: wrong secret or algorithm (BADSIG)"
            ) from None
        except (dns.tsig.PeerError, dns.tsig.BadTime, dns.tsig.BadAlgorithm) as exc:
            raise StepError(
                f"DNS server {self._where()} rejected TSIG key {settings.tsigKeyName!r}: "
                f"{type(exc).__name__}"
            ) from None
        except OSError as exc:
            raise StepError(f"cannot reach DNS server {self._where()}: {exc}") from None
        except (dns.exception.DNSException, EOFError) as exc:
            raise StepError(
                f"bad answer from DNS server {self._where()}: {type(exc).__name__}: {exc}"
            ) from None

    def _address(self) -> str:
        try:
            return str(ipaddress.ip_address(self.server))
        except ValueError:
            pass
        try:
            return str(
                socket.getaddrinfo(
                    self.server, self.settings.port, type=socket.SOCK_STREAM
                )[0][4][0]
            )
        except OSError as exc:
            raise StepError(
                f"cannot resolve DNS server name {self.server!r}: {exc}"
            ) from None

    def _read(self, name: dns.name.Name) -> _NameView:
        view = _NameView()
        for rdtype in (dns.rdatatype.TXT, dns.rdatatype.A, dns.rdatatype.AAAA):
            response = self._exchange(dns.message.make_query(name, rdtype))
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return view
            if rcode != dns.rcode.NOERROR:
                raise StepError(
                    f"DNS server {self._where()} answered {dns.rcode.to_text(rcode)} "
                    f"to a query for {name.to_text(True)} {dns.rdatatype.to_text(rdtype)}"
                )
            if not response.flags & dns.flags.AA:
                raise StepError(
                    f"DNS server {self._where()} is not authoritative for "
                    f"{name.to_text(True)}; is the zone {self.zone.to_text(True)} served there?"
                )
            for rrset in response.answer:
                if rrset.name != name:
                    continue
                if rrset.rdtype == dns.rdatatype.CNAME:
                    view.alias = True
                elif rrset.rdtype == dns.rdatatype.TXT:
                    for rdata in rrset:
                        view.txt.append(rdata)
                        text = b"".join(rdata.strings).decode("utf-8", "replace")
                        if text.startswith(OWNER_PREFIX):
                            view.owners.add(text[len(OWNER_PREFIX) :])
                elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    kind = dns.rdatatype.to_text(rrset.rdtype)
                    view.addresses.update((kind, rdata.address) for rdata in rrset)
        return view

    def _update(self, message: dns.update.UpdateMessage, name: dns.name.Name) -> None:
        response = self._exchange(message)
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in (
            dns.rcode.NXRRSET,
            dns.rcode.YXRRSET,
            dns.rcode.NXDOMAIN,
            dns.rcode.YXDOMAIN,
        ):
            raise _PrerequisiteFailed()
        label = name.to_text(True)
        settings = self.settings
        if rcode == dns.rcode.REFUSED:
            raise StepError(
                f"DNS server {self._where()} refused the update of {label} (REFUSED): "
                f"does zone {self.zone.to_text(True)} allow updates by key "
                f"{settings.tsigKeyName!r}?"
            )
        if rcode == dns.rcode.NOTAUTH:
            raise StepError(
                f"DNS server {self._where()} refused the update of {label} (NOTAUTH): "
                f"not authoritative for {self.zone.to_text(True)}, or the TSIG key was rejected"
            )
        if rcode == dns.rcode.NOTZONE:
            raise StepError(
                f"{label} is not in zone {self.zone.to_text(True)} (NOTZONE)"
            )
        raise StepError(
            f"DNS server {self._where()} answered {dns.rcode.to_text(rcode)} to the update "
            f"of {label}"
        )

    def _message(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.zone)

    @staticmethod
    def _mark(service: str) -> str:
        return f'"{OWNER_PREFIX}{service}"'

    @staticmethod
    def _same_txt(
        message: dns.update.UpdateMessage, name: dns.name.Name, view: _NameView
    ) -> None:
        if view.txt:
            for rdata in view.txt:
                message.present(name, rdata)
        else:
            message.absent(name, dns.rdatatype.TXT)

    # -- one name -------------------------------------------------------------

    def _ensure(self, service: str, name: dns.name.Name, ip: str) -> None:
        settings = self.settings
        label = name.to_text(True)
        kind = "AAAA" if ipaddress.ip_address(ip).version == 6 else "A"
        other_kind = "A" if kind == "AAAA" else "AAAA"
        for _ in range(MAX_ATTEMPTS):
            view = self._read(name)
            others = view.owners - {service}
            if others:
                raise StepError(
                    f"DNS name {label} belongs to service {sorted(others)[0]!r} "
                    "(its interlook TXT mark); not changing it"
                )
            message = self._message()
            if service in view.owners:
                if view.addresses == {(kind, ip)}:
                    return
                self._same_txt(message, name, view)
                message.delete(name, other_kind)
                message.replace(name, settings.ttl, kind, ip)
                verdict = "RECORD_REPLACED"
            else:
                if view.alias:
                    raise StepError(
                        f"DNS name {label} is a CNAME that interlook did not create; "
                        "not changing it"
                    )
                if view.addresses:
                    found = ", ".join(f"{k} {a}" for k, a in sorted(view.addresses))
                    raise StepError(
                        f"DNS name {label} already has {found}, not created by interlook "
                        "(no TXT mark); not changing it"
                    )
                message.absent(name, "A")
                message.absent(name, "AAAA")
                message.absent(name, "CNAME")
                self._same_txt(message, name, view)
                message.add(name, settings.ttl, "TXT", self._mark(service))
                message.add(name, settings.ttl, kind, ip)
                verdict = "RECORD_ADDED"
            try:
                self._update(message, name)
            except _PrerequisiteFailed:
                log.info(
                    "RETRYING service=%s name=%s reason=changed since read",
                    service,
                    label,
                )
                continue
            log.info(
                "%s service=%s name=%s type=%s ip=%s", verdict, service, label, kind, ip
            )
            return
        raise StepError(
            f"DNS name {label} kept changing on the server; try again later"
        )

    def _remove(self, service: str, name: dns.name.Name) -> None:
        label = name.to_text(True)
        for _ in range(MAX_ATTEMPTS):
            view = self._read(name)
            if service not in view.owners:
                log.debug("NOT_OWNED service=%s name=%s action=keep", service, label)
                return
            message = self._message()
            self._same_txt(message, name, view)
            message.delete(name, "A")
            message.delete(name, "AAAA")
            message.delete(name, "TXT", self._mark(service))
            try:
                self._update(message, name)
            except _PrerequisiteFailed:
                log.info(
                    "RETRYING service=%s name=%s reason=changed since read",
                    service,
                    label,
                )
                continue
            log.info("RECORD_REMOVED service=%s name=%s", service, label)
            return
        raise StepError(
            f"DNS name {label} kept changing on the server; try again later"
        )

    # -- steps ----------------------------------------------------------------

    def deploy(self, service: Service) -> dict[str, Any] | None:
        """Point every name of ``service`` at its public IP; drop the names it lost.

        Raises:
            StepError: no public IP yet, a name is invalid, outside the zone or
                owned by something else, or the server refused or did not answer.
        """
        if not service.public_ip:
            raise StepError(
                "the service has no public_ip yet; put an ipam step before dns.rfc2136 "
                "in core.workflowSteps"
            )
        try:
            address = ipaddress.ip_address(service.public_ip)
        except ValueError:
            raise StepError(
                f"public_ip {service.public_ip!r} is not an IP address"
            ) from None
        if getattr(address, "scope_id", None) is not None:
            raise StepError(
                f"public_ip {service.public_ip!r} has an IPv6 zone (%...), "
                "which a DNS record cannot hold"
            )
        ip = str(address)
        if not (
            _SERVICE_CHARACTERS.fullmatch(service.name)
            and is_valid_service_name(service.name)
        ):
            raise StepError(
                f"service name {service.name[:80]!r} cannot be written in a TXT mark"
            )
        names = [self._name(text) for text in service.dns_names]
        wanted = {name.to_text(True).lower(): name for name in names}
        with self._service_lock(service.name):
            previous = self.owned_names(service.name)
            self._record_names(service.name, sorted(set(previous) | set(wanted)))
            errors: list[str] = []
            for name in wanted.values():
                try:
                    self._ensure(service.name, name, ip)
                except StepError as exc:
                    errors.append(str(exc))
            dropped = [text for text in previous if text not in wanted]
            errors += self._remove_all(service.name, dropped)
            if errors:
                raise StepError("; ".join(errors))
            self._record_names(service.name, sorted(wanted))
        return None

    def undeploy(self, service: Service) -> dict[str, Any] | None:
        """Remove every name ``service`` owns (recorded or in its definition).

        Raises:
            StepError: the server refused an update or did not answer.
        """
        with self._service_lock(service.name):
            names = set(self.owned_names(service.name))
            for text in service.dns_names:
                try:
                    names.add(self._name(text).to_text(True).lower())
                except StepError:
                    continue  # never created, so nothing to remove
            errors = self._remove_all(service.name, sorted(names))
            if errors:
                raise StepError("; ".join(errors))
            self._record_names(service.name, None)
        return None

    def _remove_all(self, service: str, names: list[str]) -> list[str]:
        errors = []
        for text in names:
            try:
                self._remove(service, dns.name.from_text(text))
            except StepError as exc:
                errors.append(str(exc))
            except dns.exception.DNSException as exc:
                errors.append(f"recorded name {text!r} is not valid: {exc}")
        return errors
