"""Shared test support: free ports, config files, real interlook processes, the API.

Every process started here is stopped by the fixture that started it, even
when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

IN_CI = os.environ.get("CI") == "true"


def need_program(name: str) -> str:
    """Path of a program the test needs; skip (outside CI) or fail (in CI) without it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except AssertionError:
            raise
        except Exception as exc:  # the condition may poll a server still starting
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}: {last_error}"
    )


def write_config(
    directory: Path,
    steps: str,
    sections: dict[str, Any] | None = None,
    **core: Any,
) -> Path:
    """Write an interlook.yml in ``directory`` with a fast-ticking core."""
    settings = {
        "endpoint": f"tcp://127.0.0.1:{free_port()}",
        "listenPort": free_port(),
        "logLevel": "DEBUG",
        "workflowSteps": steps,
        "workflowEntriesFile": "./var/entries.db",
        "checkFlowInterval": "200ms",
        "workflowHousekeeperInterval": "500ms",
        "heartbeatInterval": "500ms",
    }
    settings.update(core)
    document = {"core": settings, **(sections or {})}
    path = directory / "interlook.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


class Process:
    """An ``interlook`` subcommand running as a real process, output in a log file."""

    def __init__(
        self, args: list[str], log_path: Path, cwd: Path, prefix: Sequence[str] = ()
    ) -> None:
        """Start ``interlook ARGS``, after ``prefix`` (e.g. ``ip netns exec NS``)."""
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "interlook_core.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)
            if signum == signal.SIGKILL:
                self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                # A frozen (SIGSTOP) process would never act on SIGTERM.
                os.killpg(self.popen.pid, signal.SIGCONT)
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


class Api:
    """A client of the core's HTTP API."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            return json.load(response)

    def services(self) -> dict[str, Any]:
        return self.get("/services")

    def entry(self, name: str) -> dict[str, Any] | None:
        try:
            return self.get(f"/services/{name}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def wait_entry(
        self,
        name: str,
        condition: Callable[[dict[str, Any]], bool],
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            entry = self.entry(name)
            return entry if entry is not None and condition(entry) else None

        return wait_until(check, timeout, what=f"service {name} to match")

    def wait_state(
        self, name: str, state: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        return self.wait_entry(
            name, lambda e: e["state"] == state and not e["work_in_progress"], timeout
        )

    def wait_extensions(self, names: set[str], timeout: float = 20.0) -> None:
        wait_until(
            lambda: names <= {i["name"] for i in self.get("/extensions")},
            timeout,
            what=f"extensions {sorted(names)} to register",
        )


class Cluster:
    """A core and its extensions as real processes, around one config file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.directory = config.parent
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
        self.api = Api(document["core"]["listenPort"])
        self.processes: list[Process] = []
        self._count = 0

    def start(self, *args: str) -> Process:
        self._count += 1
        label = "-".join(a for a in args[:2] if not a.startswith("-")).replace("/", "_")
        log = self.directory / f"{self._count:02d}-{label}.log"
        process = Process([*args, "-c", str(self.config)], log, self.directory)
        self.processes.append(process)
        return process

    def core(self) -> Process:
        process = self.start("core")

        def serving() -> Any:
            if process.popen.poll() is not None:
                raise AssertionError(f"the core exited:\n{process.output()}")
            return self.api.get("/health")

        try:
            wait_until(serving, 20, what="the core's API")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{process.output()[-5000:]}") from None
        return process

    def ext(self, name: str, *extra: str) -> Process:
        return self.start("ext", name, *extra)

    def logs(self) -> str:
        return "\n".join(f"--- {p.args} ---\n{p.output()}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest):
    """Build clusters from config files; stops every process at the end."""
    clusters: list[Cluster] = []

    def make(config: Path) -> Cluster:
        cluster = Cluster(config)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
    reports = [getattr(request.node, f"rep_{when}", None) for when in ("setup", "call")]
    if any(report is not None and report.failed for report in reports):
        for cluster in clusters:
            print(cluster.logs()[-20000:])


class FakeExtension:
    """A peer speaking the raw protocol with pyzmq and msgpack, driven by a test."""

    def __init__(self, endpoint: str, name: str, role: str = "provisioner") -> None:
        import zmq

        self.name = name
        self.role = role
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send_raw(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def send(self, command: bytes, body: dict[str, Any]) -> None:
        from interlook_core import protocol

        self.socket.send_multipart(protocol.encode(command, body))

    def recv(self, timeout: float = 10.0, skip_heartbeats: bool = True):
        """The next message (command, body); None on timeout."""
        from interlook_core import protocol

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000)):
                return None
            message = protocol.decode(self.socket.recv_multipart())
            if skip_heartbeats and message.command == protocol.HEARTBEAT:
                continue
            return message.command, message.body
        return None

    def expect(self, command: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for ``command``, answering heartbeats; fail on anything else."""
        from interlook_core import protocol

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(left)
            if got is None:
                break
            if got[0] == command:
                return got[1]
            if got[0] != protocol.HEARTBEAT:
                raise AssertionError(f"expected {command!r}, got {got}")
        raise AssertionError(f"no {command!r} within {timeout}s")

    def register(self, capacity: int = 1, heartbeat_ms: int = 5000) -> dict[str, Any]:
        from interlook_core import protocol

        self.send(
            protocol.REGISTER,
            {
                "name": self.name,
                "role": self.role,
                "host": "test",
                "pid": os.getpid(),
                "capacity": capacity,
                "heartbeat_ms": heartbeat_ms,
            },
        )
        return self.expect(protocol.WELCOME)

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()
