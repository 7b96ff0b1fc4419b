"""The interlook bus protocol, version 1: frames and msgpack bodies.

docs/protocol.md is the reference for other languages; this module is the
Python side of it and knows nothing of sockets. A message is three frames
sent by an extension's DEALER socket (the core's ROUTER adds the peer's
routing id in front)::

    [PROTOCOL_VERSION, command, body]

``body`` is a msgpack map with string keys. :func:`decode` checks all of it
and raises :class:`ProtocolError` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgpack

from interlook_core.errors import ProtocolError

__all__ = [
    "ALL_COMMANDS",
    "DISCONNECT",
    "EVENT",
    "HEARTBEAT",
    "MAX_MESSAGE_BYTES",
    "Message",
    "PROTOCOL_VERSION",
    "REFRESH",
    "REGISTER",
    "RESULT",
    "SNAPSHOT",
    "STEP",
    "WELCOME",
    "decode",
    "encode",
]

PROTOCOL_VERSION = b"ILK1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_STRING = 4096

# extension -> core
REGISTER = b"REGISTER"
RESULT = b"RESULT"
EVENT = b"EVENT"
SNAPSHOT = b"SNAPSHOT"
# core -> extension
WELCOME = b"WELCOME"
STEP = b"STEP"
REFRESH = b"REFRESH"
# both ways
HEARTBEAT = b"HEARTBEAT"
DISCONNECT = b"DISCONNECT"

ALL_COMMANDS = frozenset(
    {REGISTER, RESULT, EVENT, SNAPSHOT, WELCOME, STEP, REFRESH, HEARTBEAT, DISCONNECT}
)

# Required and optional fields of each body, with their types. A service
# definition travels as a plain map; interlook_core.service checks it.
_STR, _INT, _BOOL, _MAP, _LIST = str, int, bool, dict, list
_FIELDS: dict[bytes, tuple[dict[str, type], dict[str, type | tuple[type, ...]]]] = {
    REGISTER: (
        {"name": _STR, "role": _STR},
        {
            "host": _STR,
            "pid": _INT,
            "version": _STR,
            "capacity": _INT,
            "heartbeat_ms": _INT,
        },
    ),
    WELCOME: ({"heartbeat_ms": _INT}, {"core_version": _STR}),
    STEP: ({"id": _STR, "step": _STR, "action": _STR, "service": _MAP}, {}),
    RESULT: (
        {"id": _STR, "ok": _BOOL},
        {"error": (_STR, type(None)), "changes": (_MAP, type(None))},
    ),
    EVENT: ({"action": _STR}, {"service": _MAP, "name": _STR}),
    SNAPSHOT: ({"services": _LIST}, {}),
    REFRESH: ({"names": _LIST}, {}),
    HEARTBEAT: ({}, {}),
    DISCONNECT: ({}, {"reason": _STR}),
}
_ENUMS = {
    (REGISTER, "role"): {"provider", "provisioner"},
    (STEP, "action"): {"deploy", "undeploy"},
    (EVENT, "action"): {"update", "delete"},
}
_RANGES = {
    (REGISTER, "capacity"): (1, 10_000),
    (REGISTER, "heartbeat_ms"): (100, 600_000),
    (REGISTER, "pid"): (0, 2**31),
    (WELCOME, "heartbeat_ms"): (100, 600_000),
}


class Message:
    """A decoded message: its command and its checked body."""

    __slots__ = ("body", "command")

    def __init__(self, command: bytes, body: dict[str, Any]) -> None:
        self.command = command
        self.body = body

    def __repr__(self) -> str:
        return f"Message({self.command.decode()}, {self.body!r})"


def encode(command: bytes, body: dict[str, Any] | None = None) -> list[bytes]:
    """Return the frames of a message, without any routing id."""
    return [PROTOCOL_VERSION, command, msgpack.packb(body or {}, use_bin_type=True)]


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "string", int: "integer", bool: "boolean", dict: "map", list: "list"}
    return " or ".join(names.get(k, "nil") for k in kinds)


def _check_field(
    command: bytes, key: str, value: Any, kind: type | tuple[type, ...]
) -> None:
    # bool is an int in Python: an integer field must not accept true/false.
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise ProtocolError(
            f"{command.decode()}: field {key!r} must be of type {_type_name(kind)}, "
            f"not {type(value).__name__}"
        )
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise ProtocolError(
            f"{command.decode()}: field {key!r} is longer than {MAX_STRING}"
        )
    allowed = _ENUMS.get((command, key))
    if allowed is not None and value not in allowed:
        raise ProtocolError(
            f"{command.decode()}: field {key!r} is {value!r}, expected one of {sorted(allowed)}"
        )
    bounds = _RANGES.get((command, key))
    if bounds is not None and not bounds[0] <= cast(int, value) <= bounds[1]:
        raise ProtocolError(
            f"{command.decode()}: field {key!r} is {value}, outside {bounds[0]}..{bounds[1]}"
        )


def _plain_result(body: dict[str, Any]) -> bool:
    """The common RESULT, checked inline: one per step, so the hot path.

    False sends the body through the general checks, which name the problem.
    """
    request_id = body.get("id")
    error = body.get("error")
    changes = body.get("changes")
    return (
        type(request_id) is str
        and len(request_id) <= MAX_STRING
        and type(body.get("ok")) is bool
        and (error is None or (type(error) is str and len(error) <= MAX_STRING))
        and (changes is None or type(changes) is dict)
    )


def decode(frames: Sequence[bytes]) -> Message:
    """Check the frames of one message (routing id removed) and decode them.

    Raises:
        ProtocolError: wrong frame count, unknown protocol version or
            command, a body that is not a msgpack map with string keys, or a
            field missing or of the wrong type or value.
    """
    if len(frames) != 3:
        raise ProtocolError(
            f"expected 3 frames (version, command, body), got {len(frames)}"
        )
    version, command, payload = frames
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {bytes(version[:16])!r}; "
            f"this core speaks {PROTOCOL_VERSION.decode()}"
        )
    command = bytes(command)
    if command not in ALL_COMMANDS:
        raise ProtocolError(f"unknown command {command[:32]!r}")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(
            f"{command.decode()}: body is not valid msgpack ({exc})"
        ) from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{command.decode()}: body must be a msgpack map")
    if command == RESULT and _plain_result(body):
        return Message(command, body)
    required, optional = _FIELDS[command]
    for key, kind in required.items():
        if key not in body:
            raise ProtocolError(f"{command.decode()}: missing field {key!r}")
        _check_field(command, key, body[key], kind)
    for key, kinds in optional.items():
        if key in body:
            _check_field(command, key, body[key], kinds)
    return Message(command, body)
