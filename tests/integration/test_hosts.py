"""The bus across hosts: namespaces on a bridge, tcp with CurveZMQ.

The core, provider.file and ipam.file run in one namespace; one noop.a
instance (capacity 1) runs in each of two other namespaces and connects to
the core's 198.18.x address with its own key. The test reaches the API over
a veth pair from the root namespace.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.auth

from interlook_core.security import generate_keys
from tests.integration.netns import Hosts, NsProcess, open_hosts
from tests.support import Api, free_port, wait_until

HEARTBEAT = 0.5
# The core drops an instance silent for 3 heartbeat intervals.
LIVENESS = 3 * HEARTBEAT
STEPS = "provider.file,ipam.file,noop.a"


@pytest.fixture(scope="module")
def hosts():
    made = open_hosts(2)
    try:
        yield made
    finally:
        made.remove()


def _public(path: Path) -> str:
    return zmq.auth.load_certificate(str(path))[0].decode("ascii")


class Group:
    """The core's namespace and two extension hosts, their configs and processes."""

    def __init__(self, hosts: Hosts, directory: Path) -> None:
        self.hosts = hosts
        self.directory = directory
        self.port = free_port()
        self.endpoint = f"tcp://{hosts.core_address}:{self.port}"
        self.api = Api(free_port(), host=hosts.api_address)
        self.processes: list[NsProcess] = []
        keys = directory / "keys"
        self.keys = {
            name: generate_keys(name, keys)
            for name in ("core", "local", "host1", "host2", "stranger", "dns-host")
        }
        authorized = {
            _public(self.keys["local"][0]): ["provider.file", "ipam.file"],
            _public(self.keys["host1"][0]): "noop.a",
            _public(self.keys["host2"][0]): "noop.a",
            _public(self.keys["dns-host"][0]): "dns.rfc2136",
        }
        (directory / "authorized.yml").write_text(yaml.safe_dump(authorized))
        self.services: list[dict[str, Any]] = []
        self.write_services()
        core = {
            "endpoint": self.endpoint,
            "listenAddress": hosts.api_address,
            "listenPort": int(self.api.base.rsplit(":", 1)[1]),
            "logLevel": "DEBUG",
            "workflowSteps": STEPS,
            "workflowEntriesFile": "var/entries.db",
            "checkFlowInterval": "200ms",
            "workflowHousekeeperInterval": "500ms",
            "heartbeatInterval": f"{int(HEARTBEAT * 1000)}ms",
            # Far beyond the liveness period: a request that moves in time
            # was moved because its instance was dropped, not resent.
            "serviceWIPTimeout": "60s",
            "curve": {
                "secretKeyFile": str(self.keys["core"][1]),
                "authorizedKeys": "authorized.yml",
            },
        }
        extensions = {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {
                "file": {"network_cidr": "10.60.0.0/16", "db_file": "var/ipam.json"}
            },
        }
        self._write("core.yml", {"core": core, **extensions, **self._client("local")})
        # An extension host has no core key: a bare core section, its own key,
        # the sections of what it runs only, and --endpoint on the command line.
        bare = {"workflowSteps": STEPS, "heartbeatInterval": core["heartbeatInterval"]}
        for host in ("host1", "host2", "stranger"):
            self._write(f"{host}.yml", {"core": bare, **self._client(host)})
        ipam = {"ipam": extensions["ipam"]}
        self._write("dns-host.yml", {"core": bare, **ipam, **self._client("dns-host")})

    def _client(self, key: str) -> dict[str, Any]:
        return {
            "curve": {
                "serverPublicKey": _public(self.keys["core"][0]),
                "secretKeyFile": str(self.keys[key][1]),
            }
        }

    def _write(self, name: str, document: dict[str, Any]) -> None:
        (self.directory / name).write_text(yaml.safe_dump(document, sort_keys=False))

    def write_services(self) -> None:
        (self.directory / "services.yml").write_text(
            yaml.safe_dump({"services": self.services})
        )

    def add_services(self, *names: str) -> None:
        for name in names:
            self.services.append(
                {"name": name, "targets": [{"host": "10.0.0.7", "port": 80}]}
            )
        self.write_services()

    def run(self, namespace: str, *args: str) -> NsProcess:
        label = "-".join(a for a in args[:2] if not a.startswith("-"))
        log = self.directory / f"{len(self.processes):02d}-{namespace}-{label}.log"
        process = NsProcess(namespace, list(args), log, self.directory)
        self.processes.append(process)
        return process

    def start_core(self) -> NsProcess:
        core = self.run(self.hosts.core_ns, "core", "-c", "core.yml")

        def serving() -> Any:
            if core.popen.poll() is not None:
                raise AssertionError(f"the core exited:\n{core.output()[-5000:]}")
            return self.api.get("/health")

        wait_until(serving, 20, what="the core's API")
        self.core = core
        return core

    def start_local(self) -> None:
        for step in ("provider.file", "ipam.file"):
            self.run(self.hosts.core_ns, "ext", step, "-c", "core.yml")

    def start_noop(
        self, index: int, key: str | None = None, step: str = "noop.a"
    ) -> NsProcess:
        key = key or f"host{index + 1}"
        return self.run(
            self.hosts.host_ns[index],
            "ext",
            step,
            "-c",
            f"{key}.yml",
            "--endpoint",
            self.endpoint,
            "--capacity",
            "1",
        )

    def instances(self, name: str = "noop.a") -> list[dict[str, Any]]:
        return [i for i in self.api.get("/extensions") if i["name"] == name]

    def wait_instances(self, count: int, timeout: float = 20.0) -> None:
        wait_until(
            lambda: (
                len(self.instances()) == count
                and len(self.api.get("/extensions")) == count + 2
            ),
            timeout,
            what=f"{count} noop.a instances and the local extensions registered",
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.namespace} {p.args} ---\n{p.output()}" for p in self.processes
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def group(hosts: Hosts, tmp_path: Path, request: pytest.FixtureRequest):
    made = Group(hosts, tmp_path)
    try:
        made.start_core()
        made.start_local()
        made.hosts_up = [made.start_noop(0), made.start_noop(1)]
        made.wait_instances(2)
        yield made
    finally:
        made.stop()
        for namespace in hosts.host_ns:
            hosts.set_link(namespace, up=True)
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(made.logs()[-30000:])


def _done(process: NsProcess) -> set[str]:
    return set(
        re.findall(
            r"STEP_DONE service=(\S+) step=noop\.a action=deploy", process.output()
        )
    )


def _deployed(group: Group, names: list[str], timeout: float) -> float:
    started = time.monotonic()
    for name in names:
        left = max(0.5, timeout - (time.monotonic() - started))
        entry = group.api.wait_state(name, "deployed", timeout=left)
        assert entry["service"]["public_ip"], entry
    return time.monotonic() - started


def test_steps_are_spread_over_both_hosts(group: Group):
    names = [f"spread{i}" for i in range(8)]
    group.add_services(*names)
    _deployed(group, names, 30)
    one, two = (_done(p) for p in group.hosts_up)
    assert one and two, "both hosts did steps"
    assert one | two == set(names) and not one & two
    assert {i["pid"] for i in group.instances()} == {p.pid for p in group.hosts_up}


def _moves(group: Group) -> list[int]:
    return [
        int(n)
        for n in re.findall(
            r"LOST extension=noop\.a .*requests_moved=(\d+)", group.core.output()
        )
    ]


def test_a_frozen_instance_loses_its_requests_and_comes_back(group: Group):
    frozen = group.hosts_up[1]
    frozen.signal(signal.SIGSTOP)
    names = ["frozen-a", "frozen-b"]
    # Two at once with capacity 1 each: one of them goes to the frozen host.
    group.add_services(*names)
    took = _deployed(group, names, 15)
    assert sum(_moves(group)) >= 1, "the frozen host's request was moved"
    assert took < 60 / 2, (
        f"moved within the liveness period, not by the WIP timeout ({took:.1f}s)"
    )
    assert not _done(frozen)

    frozen.signal(signal.SIGCONT)
    group.wait_instances(2, timeout=20)
    group.add_services("thawed-a", "thawed-b", "thawed-c", "thawed-d")
    _deployed(group, ["thawed-a", "thawed-b", "thawed-c", "thawed-d"], 20)
    assert _done(frozen), "the thawed host takes work again"


def test_a_cut_link_loses_its_requests_and_reconnects(group: Group):
    cut = group.hosts.host_ns[0]
    group.hosts.set_link(cut, up=False)
    names = ["cut-a", "cut-b"]
    group.add_services(*names)
    took = _deployed(group, names, 15)
    assert sum(_moves(group)) >= 1
    assert took < 30
    assert not _done(group.hosts_up[0]) & set(names)

    group.hosts.set_link(cut, up=True)
    group.wait_instances(2, timeout=30)
    later = [f"relinked{i}" for i in range(4)]
    group.add_services(*later)
    _deployed(group, later, 20)
    assert _done(group.hosts_up[0]) & set(later), (
        "the reconnected host takes work again"
    )


def test_foreign_keys_get_nothing_done(group: Group):
    stranger = group.start_noop(0, key="stranger")
    impostor = group.start_noop(1, key="dns-host", step="ipam.file")
    wait_until(
        lambda: "DENIED key=" in group.core.output(), 15, what="the unknown key denied"
    )
    wait_until(
        lambda: "may not register as 'ipam.file'" in group.core.output(),
        15,
        what="the dns.rfc2136 key refused as ipam.file",
    )
    names = [f"guarded{i}" for i in range(4)]
    group.add_services(*names)
    _deployed(group, names, 20)
    assert len(group.instances("ipam.file")) == 1 and len(group.instances()) == 2
    assert not _done(stranger)
    assert (
        "ALLOCATED" not in impostor.output() and "REGISTERED" not in impostor.output()
    )
    assert "REGISTERED" not in stranger.output()


def test_a_restarted_core_gets_every_instance_back_and_loses_nothing(group: Group):
    names = [f"kept{i}" for i in range(10)]
    group.add_services(*names)
    _deployed(group, names, 20)
    before = {n: e["service"]["public_ip"] for n, e in group.api.services().items()}

    group.core.signal(signal.SIGKILL)
    group.core.popen.wait(10)
    group.start_core()
    group.wait_instances(2, timeout=30)
    after = group.api.services()
    assert {n: e["service"]["public_ip"] for n, e in after.items()} == before
    assert {e["state"] for e in after.values()} == {"deployed"}

    group.add_services("after-restart-a", "after-restart-b")
    _deployed(group, ["after-restart-a", "after-restart-b"], 20)
