"""Decoding frames: every malformed message is a ProtocolError naming the problem."""

from __future__ import annotations

import msgpack
import pytest

from interlook_core import protocol
from interlook_core.errors import ProtocolError


def frames(command: bytes, body: object) -> list[bytes]:
    return [protocol.PROTOCOL_VERSION, command, msgpack.packb(body)]


def test_a_message_round_trips():
    message = protocol.decode(
        protocol.encode(protocol.RESULT, {"id": "a-1", "ok": True})
    )
    assert message.command == protocol.RESULT
    assert message.body == {"id": "a-1", "ok": True}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([b"ILK1", b"HEARTBEAT"], "expected 3 frames"),
        ([b"ILK9", b"HEARTBEAT", b"\x80"], "unsupported protocol version"),
        ([b"ILK1", b"EXPLODE", b"\x80"], "unknown command"),
        ([b"ILK1", b"RESULT", b"\xc1"], "not valid msgpack"),
        ([b"ILK1", b"RESULT", b"\x92\x01\x02"], "must be a msgpack map"),
        (frames(b"RESULT", {1: 2}), "not valid msgpack"),
        (frames(b"RESULT", {"ok": True}), "missing field 'id'"),
        (frames(b"RESULT", {"id": 5, "ok": True}), "'id' must be of type string"),
        (frames(b"RESULT", {"id": "x", "ok": 1}), "'ok' must be of type boolean"),
        (frames(b"REGISTER", {"name": "a.b", "role": "boss"}), "expected one of"),
        (
            frames(b"REGISTER", {"name": "a.b", "role": "provider", "capacity": 0}),
            "outside 1..10000",
        ),
        (
            frames(b"REGISTER", {"name": "a.b", "role": "provider", "capacity": True}),
            "must be of type integer",
        ),
        (
            frames(
                b"STEP",
                {"id": "x" * 5000, "step": "a", "action": "deploy", "service": {}},
            ),
            "longer than",
        ),
        ([b"ILK1", b"RESULT", b"\xa2\xff\xfe"], "not valid msgpack"),
    ],
)
def test_malformed_messages_are_refused_with_the_reason(raw, problem):
    with pytest.raises(ProtocolError, match=problem.replace("(", r"\(")):
        protocol.decode(raw)


def test_an_ipv6_zone_is_never_an_address_in_a_definition():
    from interlook_core.errors import ServiceDefinitionError
    from interlook_core.service import service_from_wire

    for bad in ("fe80::1%x]:80\n    server evil 1.2.3.4:80", "fe80::1%eth0"):
        with pytest.raises(ServiceDefinitionError):
            service_from_wire(
                {"name": "web", "provider": "provider.x", "targets": [{"host": bad, "port": 80}]}
            )
        with pytest.raises(ServiceDefinitionError):
            service_from_wire({"name": "web", "provider": "provider.x", "public_ip": bad})
