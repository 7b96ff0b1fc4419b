"""Hostile bytes on the bus: hypothesis drives peers against a real core process.

Each example is a batch: a few peers (some registered as a provider or a
step, some not) send random frame lists, random msgpack, well-formed bodies
with one field of the wrong type or range, truncated messages, messages near
and over the core's size limit, and replies with unknown or real request ids.
After every batch the core must still answer its API and still take a new
service through the whole workflow with its real extensions.

The figures of what was tried are printed at the end of the module (run with
``-s``) and written to ``fuzz-counts.json`` in the module's temporary folder.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlook_core import protocol
from tests.support import Cluster, FakeExtension, wait_until, write_config

# Small enough that an oversize message is cheap to send, large enough for
# every normal message of this test.
MAX_MESSAGE = 1024 * 1024
STEPS = ("provider.file", "ipam.file", "noop.a")
EXAMPLES = int(os.environ.get("INTERLOOK_FUZZ_EXAMPLES", "80"))

TRIED: Counter[str] = Counter()
_names = itertools.count()


# -- strategies ---------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
_keys = st.text(max_size=10) | st.integers(-1000, 1000) | st.binary(max_size=4)
_objects = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5)
    ),
    max_leaves=20,
)
_commands = st.sampled_from(sorted(protocol.ALL_COMMANDS)) | st.binary(max_size=12)


def _target() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"host": st.sampled_from(["10.0.0.5", "app.example", "", "::1", "300.1.1.1"])},
        optional={
            "port": st.integers(-5, 70_000) | _scalars,
            "weight": st.integers(-1, 300) | _scalars,
        },
    )


_service = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["fz-a", "fz-b", "-bad", "", "x" * 200])
        | st.text(max_size=8)
    },
    optional={
        "targets": st.lists(_target(), max_size=3) | _scalars,
        "tls": _scalars,
        "dns_names": st.lists(
            st.sampled_from(["a.example", "bad..name", "x" * 300]), max_size=3
        ),
        "public_ip": st.sampled_from(["10.1.2.3", "nope", 5, b"\x01\x02\x03\x04"]),
        "provider": _scalars,
    },
)

# Well-formed bodies for every command, before one field is spoiled.
_valid_bodies: dict[bytes, st.SearchStrategy[dict[str, Any]]] = {
    protocol.REGISTER: st.fixed_dictionaries(
        {
            "name": st.sampled_from([*STEPS, "dns.rfc2136", "noop.b"]),
            "role": st.sampled_from(["provider", "provisioner"]),
        },
        optional={
            "capacity": st.integers(1, 10_000),
            "heartbeat_ms": st.integers(100, 600_000),
            "host": st.text(max_size=20),
            "pid": st.integers(0, 2**31),
            "version": st.text(max_size=10),
        },
    ),
    protocol.RESULT: st.fixed_dictionaries(
        {"id": st.text(max_size=36), "ok": st.booleans()},
        optional={
            "error": st.none() | st.text(max_size=50),
            "changes": st.none()
            | st.dictionaries(st.sampled_from(["public_ip", "x"]), _scalars),
        },
    ),
    protocol.EVENT: st.fixed_dictionaries(
        {"action": st.sampled_from(["update", "delete"])},
        optional={"service": _service, "name": st.text(max_size=10)},
    ),
    protocol.SNAPSHOT: st.fixed_dictionaries(
        {"services": st.lists(_service, max_size=4)}
    ),
    protocol.HEARTBEAT: st.just({}),
    protocol.DISCONNECT: st.fixed_dictionaries(
        {}, optional={"reason": st.text(max_size=20)}
    ),
    protocol.WELCOME: st.fixed_dictionaries(
        {"heartbeat_ms": st.integers(100, 600_000)}
    ),
    protocol.STEP: st.fixed_dictionaries(
        {
            "id": st.text(max_size=8),
            "step": st.sampled_from(STEPS),
            "action": st.sampled_from(["deploy", "undeploy"]),
            "service": _service,
        }
    ),
    protocol.REFRESH: st.fixed_dictionaries(
        {"names": st.lists(st.text(max_size=8), max_size=3)}
    ),
}

# Values that break a field: another type, out of range, too long, bad UTF-8.
_spoilers = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        2**40,
        1.5,
        "",
        "x" * 5000,
        b"bytes",
        [],
        {},
        [1, 2],
        {"k": 1},
        "provider",
        "deploy",
        "update",
    ]
)


@st.composite
def _spoiled(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    command = draw(st.sampled_from(sorted(_valid_bodies)))
    body = dict(draw(_valid_bodies[command]))
    how = draw(
        st.sampled_from(
            ["wrong value", "missing", "extra key", "bad utf-8", "non-str key"]
        )
    )
    if how == "wrong value" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(_spoilers)
    elif how == "missing" and body:
        del body[draw(st.sampled_from(sorted(body)))]
    elif how == "extra key":
        body[draw(st.text(max_size=8))] = draw(_scalars)
    elif how == "non-str key":
        body[draw(st.integers(-1000, 1000) | st.binary(max_size=4))] = 1
    packed = msgpack.packb(body, use_bin_type=True, strict_types=False)
    if how == "bad utf-8":
        # A msgpack map {"id": <str 3 bytes that are not UTF-8>}.
        packed = b"\x81\xa2id\xa3\xff\xfe\xfd"
    return f"wrong types ({how})", [protocol.PROTOCOL_VERSION, command, packed]


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    kind = draw(
        st.sampled_from(
            [
                "random frames",
                "random msgpack",
                "wrong types",
                "truncated",
                "bad version",
                "huge",
                "oversize",
                "unknown id reply",
                "valid",
            ]
        )
    )
    version = protocol.PROTOCOL_VERSION
    if kind == "random frames":
        return kind, draw(st.lists(st.binary(max_size=64), min_size=1, max_size=6))
    if kind == "random msgpack":
        obj = draw(_objects)
        return kind, [version, draw(_commands), msgpack.packb(obj, use_bin_type=True)]
    if kind == "wrong types":
        return draw(_spoiled())
    if kind == "truncated":
        command = draw(st.sampled_from(sorted(_valid_bodies)))
        frames = protocol.encode(command, draw(_valid_bodies[command]))
        cut = draw(st.integers(0, max(0, len(frames[2]) - 1)))
        frames[2] = frames[2][:cut]
        drop = draw(st.integers(0, 2))
        return kind, frames[: 3 - drop]
    if kind == "bad version":
        other = draw(st.binary(max_size=8).filter(lambda v: v != version))
        return kind, [other, protocol.HEARTBEAT, msgpack.packb({})]
    if kind == "huge":
        size = draw(st.integers(100_000, MAX_MESSAGE - 4096))
        shape = draw(st.sampled_from(["long id", "many services", "raw"]))
        if shape == "long id":
            body = msgpack.packb({"id": "i" * size, "ok": True})
            return kind, [version, protocol.RESULT, body]
        if shape == "many services":
            body = msgpack.packb({"services": [{"name": 1}] * min(size // 8, 5000)})
            return kind, [version, protocol.SNAPSHOT, body]
        return kind, [version, protocol.EVENT, b"\x00" * size]
    if kind == "oversize":
        return kind, [
            version,
            protocol.RESULT,
            b"\x00" * (MAX_MESSAGE + draw(st.integers(1, 4096))),
        ]
    if kind == "unknown id reply":
        body = {"id": draw(st.text(max_size=36)), "ok": draw(st.booleans())}
        return kind, protocol.encode(protocol.RESULT, body)
    command = draw(st.sampled_from(sorted(_valid_bodies)))
    return kind, protocol.encode(command, draw(_valid_bodies[command]))


_result_bodies = st.fixed_dictionaries(
    {"ok": _scalars | st.booleans()},
    optional={
        "error": _scalars,
        "changes": st.none()
        | _objects
        | st.fixed_dictionaries(
            {
                "public_ip": st.sampled_from(
                    ["10.9.9.9", "nope", 7, b"\x01\x02\x03\x04", None]
                )
            }
        ),
    },
)


@st.composite
def _batches(
    draw: st.DrawFn,
) -> tuple[list[str], list[tuple[int, str, list[bytes]]], list]:
    peers = draw(
        st.lists(
            st.sampled_from(
                ["unregistered", "provider.file", "ipam.file", "ipam.file", "noop.a"]
            ),
            min_size=1,
            max_size=4,
        )
    )
    messages = [
        (draw(st.integers(0, len(peers) - 1)), *draw(_message()))
        for _ in range(draw(st.integers(1, 25)))
    ]
    answers = draw(st.lists(_result_bodies, max_size=3))
    return peers, messages, answers


# -- the running core -----------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_bus(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "services.yml").write_text("services: []\n")
    config = write_config(
        directory,
        ",".join(STEPS),
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {
                "file": {"network_cidr": "10.80.0.0/16", "db_file": "var/ipam.json"}
            },
        },
        logLevel="INFO",
        maxMessageSize=MAX_MESSAGE,
        heartbeatInterval="300ms",
        serviceWIPTimeout="3s",
    )
    cluster = Cluster(config)
    try:
        core = cluster.core()
        for step in STEPS:
            cluster.ext(step)
        cluster.api.wait_extensions(set(STEPS))
        cluster.endpoint = yaml.safe_load(config.read_text())["core"]["endpoint"]
        cluster.core_process = core
        yield cluster
        log = core.output()
        assert core.popen.poll() is None, "the core exited"
        for sign in ("Traceback", "Exception in callback", "TIMER_FAILED"):
            assert sign not in log, f"{sign} in the core's log:\n{log[-8000:]}"
    except BaseException:
        print(cluster.logs()[-20000:])
        raise
    finally:
        cluster.stop()
        counts = dict(sorted(TRIED.items()))
        (directory / "fuzz-counts.json").write_text(json.dumps(counts, indent=1))
        print(
            "\nFUZZ_COUNTS "
            + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items())
        )


def _check_workflow(bus: Cluster) -> None:
    """The core serves its API and deploys a new service through every step."""
    assert bus.core_process.popen.poll() is None, bus.core_process.output()[-5000:]
    assert bus.api.get("/health")["status"] == "ok"
    name = f"check-{next(_names)}"
    services = {
        "services": [{"name": name, "targets": [{"host": "10.0.0.9", "port": 80}]}]
    }
    (bus.directory / "services.yml").write_text(yaml.safe_dump(services))
    entry = bus.api.wait_state(name, "deployed", timeout=30)
    assert entry["service"]["public_ip"], entry
    json.dumps(bus.api.services())  # every entry can still be shown
    TRIED["workflows completed"] += 1


def _answer_steps(peers: list[FakeExtension], answers: list[dict[str, Any]]) -> None:
    """Registered step peers answer the requests they got with spoiled results."""
    for peer in peers:
        if peer.role != "provisioner" or not answers:
            continue
        deadline = time.monotonic() + 0.3
        while answers and (left := deadline - time.monotonic()) > 0:
            try:
                got = peer.recv(left)
            except Exception:  # noqa: BLE001 - the core may send what the peer cannot read
                continue
            if got is None:
                break
            if got[0] != protocol.STEP:
                continue
            body = {**answers.pop(), "id": got[1]["id"]}
            peer.socket.send_multipart(
                [protocol.PROTOCOL_VERSION, protocol.RESULT, msgpack.packb(body)]
            )
            TRIED["replies to real requests"] += 1


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=_batches())
def test_the_core_survives_hostile_batches(fuzz_bus: Cluster, batch) -> None:
    kinds, messages, answers = batch
    peers: list[FakeExtension] = []
    try:
        for kind in kinds:
            name = kind if kind != "unregistered" else "noop.a"
            role = "provider" if name.startswith("provider.") else "provisioner"
            peer = FakeExtension(fuzz_bus.endpoint, name, role)
            peers.append(peer)
            if kind != "unregistered":
                peer.register(capacity=5, heartbeat_ms=5000)
                TRIED["registrations"] += 1
        if answers and "ipam.file" in kinds:
            # New services give the step peers real requests to answer with
            # spoiled results: a new instance is the least recently used.
            feeder = FakeExtension(fuzz_bus.endpoint, "provider.file", "provider")
            peers.append(feeder)
            feeder.register()
            for _ in answers:
                service = {"name": f"fz-{next(_names)}", "targets": [], "dns_names": []}
                feeder.send(protocol.EVENT, {"action": "update", "service": service})
        for index, kind, frames in messages:
            peer = peers[index]
            registered = kinds[index] != "unregistered"
            try:
                peer.socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                TRIED["not sent (peer queue full)"] += 1
                continue
            TRIED[kind] += 1
            TRIED[
                "from registered peers" if registered else "from unregistered peers"
            ] += 1
            TRIED["messages"] += 1
        _answer_steps(peers, list(answers))
    finally:
        for peer in peers:
            peer.close()
    TRIED["batches"] += 1
    _check_workflow(fuzz_bus)


def test_an_oversize_message_is_refused_by_the_socket(fuzz_bus: Cluster) -> None:
    peer = FakeExtension(fuzz_bus.endpoint, "noop.a")
    try:
        peer.register(heartbeat_ms=60_000)
        peer.socket.send_multipart(
            [protocol.PROTOCOL_VERSION, protocol.RESULT, b"\x00" * (MAX_MESSAGE + 1)]
        )

        # The socket dropped the connection without handing the message to the
        # core; the peer's socket reconnects under a new routing id, which the
        # core does not know.
        def told_to_register() -> bool:
            peer.send(protocol.HEARTBEAT, {})
            got = peer.recv(0.3)
            return (
                got is not None
                and got[0] == protocol.DISCONNECT
                and ("not registered" in got[1]["reason"])
            )

        wait_until(told_to_register, 10, what="the oversize sender to be forgotten")
    finally:
        peer.close()
    log = fuzz_bus.core_process.output()
    assert f"{MAX_MESSAGE + 1}" not in log
    _check_workflow(fuzz_bus)


def test_the_size_limit_is_a_core_setting(tmp_path: Path) -> None:
    from interlook_core.config import load_config
    from interlook_core.errors import ConfigError

    config = write_config(tmp_path, "provider.file,noop.a", maxMessageSize=100)
    with pytest.raises(ConfigError, match="maxMessageSize"):
        load_config(config)
