"""Hosts for tests: Linux network namespaces on a bridge, in 198.18.0.0/15.

:func:`open_hosts` makes a core namespace holding a bridge, one namespace
per extension host with a veth pair to that bridge, and one more veth pair
from the root namespace to the core's namespace so that the test can reach
the core's HTTP API. Everything is addressed from the benchmarking range, so
no packet can leave the machine. :meth:`Hosts.remove` deletes the
namespaces, which deletes every interface in them.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import IN_CI, Process

__all__ = ["Hosts", "NsProcess", "open_hosts"]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Hosts:
    """The namespaces of one test run and their addresses."""

    tag: str
    subnet: int
    core_ns: str
    host_ns: list[str]
    links: dict[str, str] = field(default_factory=dict)

    @property
    def core_address(self) -> str:
        """The core's address on the bridge, where extensions connect."""
        return f"198.18.{self.subnet}.1"

    @property
    def api_address(self) -> str:
        """The core namespace's address on the link to the root namespace."""
        return f"198.19.{self.subnet}.2"

    def host_address(self, index: int) -> str:
        return f"198.18.{self.subnet}.{11 + index}"

    def set_link(self, namespace: str, up: bool) -> None:
        """Plug or unplug a host's only interface."""
        _ip(
            "-n",
            namespace,
            "link",
            "set",
            "dev",
            self.links[namespace],
            "up" if up else "down",
        )

    def remove(self) -> None:
        for namespace in [self.core_ns, *self.host_ns]:
            subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, timeout=30
            )


def _make(tag: str, hosts: int) -> Hosts:
    subnet = random.randrange(1, 255)
    made = Hosts(tag, subnet, f"{tag}-core", [f"{tag}-h{i + 1}" for i in range(hosts)])
    try:
        for namespace in [made.core_ns, *made.host_ns]:
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        core = made.core_ns
        _ip("-n", core, "link", "add", "br0", "type", "bridge")
        _ip("-n", core, "addr", "add", f"{made.core_address}/24", "dev", "br0")
        _ip("-n", core, "link", "set", "br0", "up")
        for index, namespace in enumerate(made.host_ns):
            outer, inner = f"{tag}b{index}", f"{tag}h{index}"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", outer, "netns", core)
            _ip("link", "set", inner, "netns", namespace)
            _ip("-n", core, "link", "set", outer, "master", "br0", "up")
            _ip(
                "-n",
                namespace,
                "addr",
                "add",
                f"{made.host_address(index)}/24",
                "dev",
                inner,
            )
            _ip("-n", namespace, "link", "set", inner, "up")
            made.links[namespace] = inner
        # The root end keeps its address only while the core namespace exists.
        root, api = f"{tag}r", f"{tag}a"
        _ip("link", "add", root, "type", "veth", "peer", "name", api)
        _ip("link", "set", api, "netns", core)
        _ip("addr", "add", f"198.19.{subnet}.1/30", "dev", root)
        _ip("link", "set", root, "up")
        _ip("-n", core, "addr", "add", f"{made.api_address}/30", "dev", api)
        _ip("-n", core, "link", "set", api, "up")
    except BaseException:
        made.remove()
        raise
    return made


def open_hosts(hosts: int = 2) -> Hosts:
    """Make the namespaces, or skip (outside CI) / fail (in CI) saying why not."""
    problem = None
    if shutil.which("ip") is None:
        problem = "the ip program (iproute2) is not installed"
    elif os.geteuid() != 0:
        problem = "network namespaces need root (ip netns add)"
    if problem is None:
        tag = f"ilk{os.getpid() % 100000}"
        try:
            return _make(tag, hosts)
        except RuntimeError as exc:
            problem = f"cannot make network namespaces: {exc}"
    if IN_CI:
        pytest.fail(problem)
    pytest.skip(problem)


class NsProcess(Process):
    """An ``interlook`` subcommand run inside a namespace, output in a log file."""

    def __init__(
        self, namespace: str, args: list[str], log_path: Path, cwd: Path
    ) -> None:
        self.namespace = namespace
        # ip netns exec execs the command: the pid is interlook's own.
        super().__init__(args, log_path, cwd, prefix=("ip", "netns", "exec", namespace))

    def signal(self, signum: int) -> None:
        self.kill(signum)
