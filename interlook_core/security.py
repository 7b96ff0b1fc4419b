"""CurveZMQ on the bus: key files, the authorized keys list, the authenticator.

With ``core.curve`` configured, every connection to the core is encrypted
and must present a key listed in ``authorizedKeys``. The list also says
which extension names each key may register as; the core reads the key of
each message from the ZAP handler's verdict (the ``User-Id`` property),
never from what the peer claims.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from interlook_core.errors import ConfigError

__all__ = [
    "AuthorizedKeys",
    "CurveKeys",
    "apply_client_keys",
    "apply_server_keys",
    "generate_keys",
    "is_loopback_endpoint",
    "load_authorized_keys",
    "load_key_pair",
    "load_public_key",
    "open_authenticator",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveKeys:
    """A key pair, and for a client the server's public key; z85 bytes."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None


class AuthorizedKeys:
    """Public key (z85 text) -> the extension names it may register as."""

    def __init__(self, names_by_key: dict[str, frozenset[str]], path: Path) -> None:
        self.names_by_key = names_by_key
        self.path = path

    def allows(self, key: str | None, name: str) -> bool:
        return key is not None and name in self.names_by_key.get(key, frozenset())

    def knows(self, key: str) -> bool:
        return key in self.names_by_key


def _is_z85_key(text: object) -> bool:
    if not isinstance(text, str) or len(text) != 40:
        return False
    try:
        return len(z85.decode(text.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError, KeyError):
        return False


def load_authorized_keys(path: str | Path) -> AuthorizedKeys:
    """Read the authorized keys file: a YAML map of z85 public key -> name(s).

    Raises:
        ConfigError: unreadable file, or a key or name that is not valid.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such authorized keys file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: cannot read the authorized keys file: {exc}"
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must map each public key to extension name(s)")
    names_by_key: dict[str, frozenset[str]] = {}
    for key, names in data.items():
        if not _is_z85_key(key):
            raise ConfigError(
                f"{path}: {str(key)[:60]!r} is not a z85 public key (40 characters)"
            )
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(
            isinstance(n, str) and "." in n for n in names
        ):
            raise ConfigError(
                f"{path}: key {key[:8]}...: names must be kind.name or a list of them"
            )
        names_by_key[key] = frozenset(names)
    return AuthorizedKeys(names_by_key, path)


def load_key_pair(secret_file: str | Path) -> CurveKeys:
    """Read a ``.key_secret`` file written by :func:`generate_keys`.

    Raises:
        ConfigError: missing file, or it holds no secret key.
    """
    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{secret_file}: cannot read the secret key file: {exc}"
        ) from exc
    if secret is None:
        raise ConfigError(
            f"{secret_file}: holds no secret key (a .key_secret file is needed)"
        )
    return CurveKeys(public=public, secret=secret)


def load_public_key(value: str) -> bytes:
    """A public key given as z85 text or as the path of a ``.key`` file."""
    if _is_z85_key(value):
        return value.encode("ascii")
    try:
        public, _ = zmq.auth.load_certificate(value)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{value}: not a z85 key nor a readable key file: {exc}"
        ) from exc
    return public


def generate_keys(name: str, directory: str | Path) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (secret readable by the owner only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


class _KnownKeys:
    """The ZAP callback: a connection is accepted only with a listed key."""

    def __init__(self, authorized: AuthorizedKeys) -> None:
        self.authorized = authorized

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.authorized.knows(key.decode("ascii"))
        if not allowed:
            log.warning(
                "DENIED key=%s reason=not in %s",
                key.decode("ascii"),
                self.authorized.path,
            )
        return allowed


def open_authenticator(
    context: zmq.Context, authorized: AuthorizedKeys
) -> ThreadAuthenticator:
    """Start the ZAP handler; it must run before a CURVE server socket binds.

    Raises:
        RuntimeError: the handler did not start. A CURVE server without a
            ZAP handler accepts any client key, so the caller must not bind.
    """
    authenticator = ThreadAuthenticator(
        context, log=logging.getLogger("interlook_core.zap")
    )
    authenticator.start()
    authenticator.configure_curve_callback(
        "*", credentials_provider=_KnownKeys(authorized)
    )
    if not authenticator.is_alive():
        raise RuntimeError("the CURVE authenticator is not running; refusing to bind")
    return authenticator


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc:// and for tcp:// on a loopback address or localhost."""
    scheme, _, address = endpoint.partition("://")
    if scheme != "tcp":
        return scheme == "ipc"
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def apply_server_keys(socket: Any, keys: CurveKeys) -> None:
    """Make ``socket`` a CURVE server with ``keys`` (before it binds)."""
    socket.curve_server = True
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public


def apply_client_keys(socket: Any, keys: CurveKeys) -> None:
    """Make ``socket`` a CURVE client of ``keys.server_public`` (before it connects)."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public
