"""The extension SDK's runner against a test playing the core on a real socket."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest
import zmq

from interlook_core import protocol
from interlook_core.config import ExtensionSettings
from interlook_ext.base import Provisioner
from interlook_ext.runner import ExtensionRunner


class OddReturns(Provisioner):
    """Returns what a careless extension might: objects msgpack cannot encode."""

    def deploy(self, service):
        return {"public_ip": ipaddress.ip_address("10.0.0.1")}

    def undeploy(self, service):
        return ["not", "a", "map"]


class FakeCore:
    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def recv(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000)):
                break
            peer, *frames = self.socket.recv_multipart()
            message = protocol.decode(frames)
            if message.command != protocol.HEARTBEAT:
                return peer, message.command, message.body
        raise AssertionError("nothing from the extension")

    def send(self, peer: bytes, command: bytes, body: dict) -> None:
        self.socket.send_multipart([peer, *protocol.encode(command, body)])

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def running():
    core = FakeCore()
    extension = OddReturns("noop.a", ExtensionSettings())
    runner = ExtensionRunner(extension, core.endpoint, heartbeat=0.5)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(runner.run(stop),))
    thread.start()
    yield core
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    core.close()


def _service() -> dict:
    return {"name": "web", "provider": "provider.file", "targets": []}


def test_a_value_that_cannot_be_sent_becomes_a_clear_failure(running):
    peer, command, body = running.recv()
    assert command == protocol.REGISTER and body["name"] == "noop.a"
    running.send(peer, protocol.WELCOME, {"heartbeat_ms": 500})
    for action, problem in (("deploy", "cannot be encoded"), ("undeploy", "not a map")):
        step = {"id": action, "step": "noop.a", "action": action, "service": _service()}
        running.send(peer, protocol.STEP, step)
        _, command, result = running.recv()
        assert command == protocol.RESULT and result["id"] == action
        assert result["ok"] is False and problem in result["error"]


def test_registration_backs_off_while_the_core_refuses(running):
    times = []
    for _ in range(4):
        peer, command, _ = running.recv()
        assert command == protocol.REGISTER
        times.append(time.monotonic())
        running.send(
            peer, protocol.DISCONNECT, {"reason": "not a step of this workflow"}
        )
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert gaps[0] >= 0.2 and gaps[2] >= 0.8, gaps
    assert gaps[2] > gaps[0]
