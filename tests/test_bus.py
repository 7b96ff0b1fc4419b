"""The core over its real socket, with a test standing in for an extension."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
import yaml

from interlook_core import protocol
from tests.support import FakeExtension, wait_until, write_config


def _definition(name: str, port: int = 80) -> dict:
    return {
        "name": name,
        "targets": [{"host": "10.0.0.5", "port": port}],
        "dns_names": [],
    }


@pytest.fixture
def bus(tmp_path: Path, cluster_factory):
    """A real core whose provider and step are played by the test."""
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "unused.yml"}}},
        serviceWIPTimeout="1s",
        serviceWIPMaxResends=1,
        serviceMaxLastUpdated="1s",
        cleanUndeployedServiceAfter="1h",
    )
    cluster = cluster_factory(config)
    cluster.core()
    endpoint = yaml.safe_load(config.read_text())["core"]["endpoint"]
    peers: list[FakeExtension] = []

    def peer(name: str, role: str = "provisioner") -> FakeExtension:
        fake = FakeExtension(endpoint, name, role)
        peers.append(fake)
        return fake

    cluster.peer = peer
    yield cluster
    for fake in peers:
        fake.close()


def _provider(bus, services=("web",)):
    provider = bus.peer("provider.file", "provider")
    provider.register()
    provider.send(protocol.SNAPSHOT, {"services": [_definition(n) for n in services]})
    return provider


def test_steps_reach_the_extension_and_results_deploy(bus):
    step = bus.peer("noop.a")
    step.register()
    _provider(bus)
    request = step.expect(protocol.STEP)
    assert request["step"] == "noop.a" and request["action"] == "deploy"
    assert request["service"]["name"] == "web"
    step.send(protocol.RESULT, {"id": request["id"], "ok": True, "changes": {}})
    bus.api.wait_state("web", "deployed")


def test_an_unregistered_peer_is_told_to_register(bus):
    stranger = bus.peer("noop.a")
    stranger.send(protocol.RESULT, {"id": "nothing", "ok": True})
    body = stranger.expect(protocol.DISCONNECT)
    assert "not registered" in body["reason"]


def test_an_unknown_name_or_wrong_role_is_refused(bus):
    stranger = bus.peer("lb.elsewhere")
    stranger.send(protocol.REGISTER, {"name": "lb.elsewhere", "role": "provisioner"})
    assert (
        "not a step of this workflow" in stranger.expect(protocol.DISCONNECT)["reason"]
    )
    liar = bus.peer("noop.a", "provider")
    liar.send(protocol.REGISTER, {"name": "noop.a", "role": "provider"})
    assert (
        "must register as a provisioner" in liar.expect(protocol.DISCONNECT)["reason"]
    )


def test_garbage_frames_are_dropped_and_the_core_keeps_working(bus):
    vandal = bus.peer("noop.a")
    vandal.register()
    for frames in (
        [b"hello"],
        [b"ILK1", b"RESULT", b"\xc1\xc1"],
        [b"ILK1", b"NOPE", msgpack.packb({})],
        [b"ILK1", b"RESULT", msgpack.packb({"id": 7})],
        [b"ILK1", b"RESULT", msgpack.packb({"id": "unknown-id", "ok": True})],
        [b"ILK1", b"RESULT", msgpack.packb([1, 2, 3])],
        [b"ILK1", b"STEP", b"\x00" * 100_000],
        [],
        [b""] * 50,
    ):
        if frames:
            vandal.send_raw(frames)
    vandal.send_raw([b"ILK2", b"HEARTBEAT", msgpack.packb({})])
    assert (
        "unsupported protocol version" in vandal.expect(protocol.DISCONNECT)["reason"]
    )
    assert bus.api.get("/health")["status"] == "ok"

    step = bus.peer("noop.a")
    step.register()
    _provider(bus)
    request = step.expect(protocol.STEP)
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("web", "deployed")
    log = bus.processes[0].output()
    assert "DROPPED" in log and "Traceback" not in log


def test_an_overdue_step_is_resent_then_fails_then_is_retried(bus):
    step = bus.peer("noop.a")
    step.register()
    _provider(bus)
    first = step.expect(protocol.STEP)
    again = step.expect(protocol.STEP, timeout=5)
    assert again["id"] == first["id"], "a resend keeps the request id"
    entry = bus.api.wait_entry("web", lambda e: e["error"] is not None, timeout=10)
    assert "no reply after 2 attempts" in entry["error"]
    assert entry["next_retry"] is not None
    retry = step.expect(protocol.STEP, timeout=10)
    assert retry["id"] != first["id"]
    # The first request's reply comes late: ignored, the retry's reply counts.
    step.send(protocol.RESULT, {"id": first["id"], "ok": False, "error": "stale"})
    step.send(protocol.RESULT, {"id": retry["id"], "ok": True})
    entry = bus.api.wait_state("web", "deployed")
    assert entry["error"] is None
    assert "IGNORED_REPLY id=" + first["id"] in bus.processes[0].output()


def test_a_failed_step_shows_its_error_and_retries(bus):
    step = bus.peer("noop.a")
    step.register()
    _provider(bus)
    request = step.expect(protocol.STEP)
    step.send(
        protocol.RESULT, {"id": request["id"], "ok": False, "error": "pool exhausted"}
    )
    entry = bus.api.wait_entry("web", lambda e: e["error"] is not None)
    assert entry["error"] == "noop.a deploy: pool exhausted"
    retry = step.expect(protocol.STEP, timeout=5)
    step.send(protocol.RESULT, {"id": retry["id"], "ok": True})
    bus.api.wait_state("web", "deployed")


def test_a_snapshot_undeploys_the_services_it_no_longer_lists(bus):
    step = bus.peer("noop.a")
    step.register(capacity=10)
    provider = _provider(bus, ("a", "b"))
    for _ in range(2):
        request = step.expect(protocol.STEP)
        step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("b", "deployed")
    provider.send(protocol.SNAPSHOT, {"services": [_definition("a")]})
    request = step.expect(protocol.STEP)
    assert (request["service"]["name"], request["action"]) == ("b", "undeploy")
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("b", "undeployed")
    assert bus.api.entry("a")["state"] == "deployed"


def test_a_refresh_answered_with_a_delete_undeploys(bus):
    step = bus.peer("noop.a")
    step.register()
    provider = _provider(bus)
    request = step.expect(protocol.STEP)
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("web", "deployed")
    refresh = provider.expect(protocol.REFRESH, timeout=10)
    assert refresh["names"] == ["web"]
    provider.send(protocol.EVENT, {"action": "delete", "name": "web"})
    request = step.expect(protocol.STEP)
    assert request["action"] == "undeploy"
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("web", "undeployed")


def test_a_bad_definition_in_a_snapshot_keeps_that_service(bus):
    step = bus.peer("noop.a")
    step.register(capacity=10)
    provider = _provider(bus, ("a",))
    request = step.expect(protocol.STEP)
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("a", "deployed")
    broken = {"name": "a", "targets": [{"host": "10.0.0.5", "port": 99999}]}
    provider.send(protocol.SNAPSHOT, {"services": [broken]})
    time.sleep(0.5)
    assert bus.api.entry("a")["expected_state"] == "deployed"
    assert "BAD_SERVICE" in bus.processes[0].output()


def test_steps_wait_for_an_absent_extension_and_the_api_says_so(bus):
    _provider(bus)
    entry = bus.api.wait_entry("web", lambda e: e["waiting_for_extension"] == "noop.a")
    assert entry["work_in_progress"]
    assert bus.api.get("/workflow")["waiting_for_extension"] == {"noop.a": 1}
    step = bus.peer("noop.a")
    step.register()
    request = step.expect(protocol.STEP)
    step.send(protocol.RESULT, {"id": request["id"], "ok": True})
    bus.api.wait_state("web", "deployed")


def test_requests_are_spread_and_capacity_is_respected(bus):
    one, two = bus.peer("noop.a"), bus.peer("noop.a")
    one.register(capacity=1)
    two.register(capacity=1)
    _provider(bus, ("a", "b", "c"))
    first, second = one.expect(protocol.STEP), two.expect(protocol.STEP)
    assert one.recv(0.5) is None, "never more than the announced capacity"
    one.send(protocol.RESULT, {"id": first["id"], "ok": True})
    third = one.expect(protocol.STEP)
    for peer, request in ((two, second), (one, third)):
        peer.send(protocol.RESULT, {"id": request["id"], "ok": True})
    for name in "abc":
        bus.api.wait_state(name, "deployed")
    extensions = bus.api.get("/extensions")
    assert sorted(e["name"] for e in extensions) == [
        "noop.a",
        "noop.a",
        "provider.file",
    ]


def test_a_silent_instance_loses_its_requests_to_a_live_one(bus):
    silent, live = bus.peer("noop.a"), bus.peer("noop.a")
    silent.register(heartbeat_ms=200)
    _provider(bus)
    request = silent.expect(protocol.STEP)
    live.register(heartbeat_ms=5000)
    moved = live.expect(protocol.STEP, timeout=5)
    assert moved["id"] == request["id"]
    live.send(protocol.RESULT, {"id": moved["id"], "ok": True})
    bus.api.wait_state("web", "deployed")
    wait_until(
        lambda: len(bus.api.get("/extensions")) == 2, what="the silent one dropped"
    )
