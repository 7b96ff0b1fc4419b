"""Real daemons for the DNS and load-balancer tests: named, HAProxy, HTTP targets.

Each runs in its own temporary folder on free ports and is stopped by the
fixture that started it, even when the test fails. ``named`` and HAProxy can
also be stopped and started again inside a test, keeping their files.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import free_port, need_program, wait_until

ZONE = "example.test"
KEY_NAME = "interlook-test"


def free_udp_and_tcp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (named wants both)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def _stop(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Named:
    """BIND's ``named`` serving ``example.test`` with updates allowed by a TSIG key."""

    def __init__(self, directory: Path) -> None:
        self.binary = need_program("named")
        keygen = need_program("tsig-keygen")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_and_tcp_port()
        key_text = subprocess.run(
            [keygen, "-a", "hmac-sha256", KEY_NAME],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.key_file = directory / "tsig.key"
        self.key_file.write_text(key_text, encoding="utf-8")
        self.secret = re.search(r'secret "([^"]+)"', key_text).group(1)
        self.zone_file = directory / f"{ZONE}.zone"
        self.zone_file.write_text(
            f"$TTL 60\n"
            f"@ IN SOA ns1.{ZONE}. admin.{ZONE}. 1 60 60 600 60\n"
            f"@ IN NS ns1.{ZONE}.\n"
            f"ns1 IN A 127.0.0.1\n"
            f"taken IN A 192.0.2.7\n",
            encoding="utf-8",
        )
        self.conf = directory / "named.conf"
        self.conf.write_text(
            f"""
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
include "{self.key_file}";
zone "{ZONE}" {{
    type primary;
    file "{self.zone_file}";
    allow-update {{ key "{KEY_NAME}"; }};
}};
""",
            encoding="utf-8",
        )
        self.process: subprocess.Popen | None = None
        self.log_path = directory / "named.log"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "-u", "root", "-g", "-n", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(
            self._answers, 20, what=f"named on port {self.port}: {self.log()[-2000:]}"
        )

    def stop(self) -> None:
        _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"named exited: {self.log()[-2000:]}")
        query = dns.message.make_query(ZONE, "SOA")
        return dns.query.tcp(query, "127.0.0.1", port=self.port, timeout=1).rcode() == 0

    def records(self, name: str, rdtype: str) -> list[str]:
        """The records of one type at ``name``, as text, asked over TCP."""
        query = dns.message.make_query(name, rdtype)
        response = dns.query.tcp(query, "127.0.0.1", port=self.port, timeout=3)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return []
        found = []
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                found += [rdata.to_text() for rdata in rrset]
        return sorted(found)

    def dig(self, name: str, rdtype: str = "A") -> list[str]:
        """What ``dig @127.0.0.1 -p PORT NAME`` answers, one record per line."""
        dig = need_program("dig")
        result = subprocess.run(
            [
                dig,
                "@127.0.0.1",
                "-p",
                str(self.port),
                "+short",
                "+tries=1",
                "+time=2",
                name,
                rdtype,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sorted(line for line in result.stdout.splitlines() if line)

    def settings(self, state_file: str = "var/dns.json") -> dict:
        """The ``dns: rfc2136:`` settings for this server."""
        return {
            "server": "127.0.0.1",
            "port": self.port,
            "zone": ZONE,
            "tsigKeyName": KEY_NAME,
            "tsigSecretFile": str(self.key_file),
            "ttl": 30,
            "timeout": "2s",
            "stateFile": state_file,
        }


MAIN_CONFIG = """\
global
    log stderr local0 notice
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
"""


class Haproxy:
    """HAProxy in master-worker mode with a main file and interlook's file."""

    def __init__(self, directory: Path) -> None:
        self.binary = need_program("haproxy")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.main = directory / "haproxy.cfg"
        self.main.write_text(MAIN_CONFIG, encoding="utf-8")
        self.ours = directory / "interlook.cfg"
        self.ours.write_text("", encoding="utf-8")
        self.socket = directory / "master.sock"
        self.log_path = directory / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [
                self.binary,
                "-W",
                "-S",
                str(self.socket),
                "-f",
                str(self.main),
                "-f",
                str(self.ours),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(
            lambda: self.workers(), 20, what=f"haproxy master: {self.log()[-2000:]}"
        )

    def stop(self) -> None:
        _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def cli(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(3)
            conn.connect(str(self.socket))
            conn.sendall(command.encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while data := conn.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def workers(self) -> list[int]:
        """Pids of the current workers, from ``show proc``."""
        answer = self.cli("show proc")
        section = answer.split("# workers", 1)[1].split("#", 1)[0]
        return [int(line.split()[0]) for line in section.splitlines() if line.strip()]

    def reloads(self) -> int:
        found = re.search(r"master\s+(\d+)", self.cli("show proc"))
        return int(found.group(1)) if found else -1

    def kill_worker(self) -> None:
        """SIGKILL the worker; HAProxy's master then stops everything."""
        for pid in self.workers():
            os.kill(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def settings(self, http_port: int, state_file: str = "var/lb.json") -> dict:
        """The ``lb: haproxy:`` settings for this HAProxy."""
        return {
            "configFile": str(self.ours),
            "mainConfigFile": str(self.main),
            "masterSocket": str(self.socket),
            "haproxyBinary": self.binary,
            "httpPort": http_port,
            "httpsPort": free_port(),
            "mode": "http",
            "healthCheck": True,
            "healthCheckInterval": "500ms",
            "stateFile": state_file,
            "timeout": "5s",
        }


class HttpTarget:
    """A small HTTP server answering ``GET /`` with its own label."""

    def __init__(self, directory: Path, label: str) -> None:
        self.label = label
        self.root = directory / f"target-{label}"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "index.html").write_text(label, encoding="utf-8")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(up, 15, what=f"HTTP target {label}")

    def stop(self) -> None:
        _stop(self.process)


# Straight to the address: an http_proxy in the environment must not be used.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    host: str,
    port: int,
    path: str = "/",
    timeout: float = 3.0,
    host_header: str | None = None,
) -> str:
    """The body of ``GET http://host:port/path``; raises OSError when it fails.

    ``host_header`` sends that name as ``Host``, as a browser that resolved
    the name to ``host`` would.
    """
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    if host_header is not None:
        request.add_header("Host", host_header)
    with _DIRECT.open(request, timeout=timeout) as response:
        return response.read().decode()


def refused(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is refused (nothing listens there)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Named]:
    server = Named(tmp_path / "named")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    server = Haproxy(tmp_path / "haproxy")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_targets(tmp_path: Path) -> Iterator[dict[str, HttpTarget]]:
    """Two HTTP targets, ``a`` and ``b``."""
    targets: dict[str, HttpTarget] = {}
    try:
        for label in ("a", "b"):
            targets[label] = HttpTarget(tmp_path, label)
        yield targets
    finally:
        for target in targets.values():
            target.stop()


def start_chain(
    directory: Path,
    cluster_factory: Any,
    provider: dict[str, Any],
    named: Named,
    haproxy: Haproxy,
) -> Any:
    """Start the core and the four steps: a provider, ipam.file, dns.rfc2136, lb.haproxy.

    Args:
        directory: the test's folder, for the config and the state files.
        cluster_factory: the fixture from tests/support.py.
        provider: ``{"file": {...}}`` or ``{"docker": {...}}``, the provider's section.
        named, haproxy: the running servers.

    Returns:
        The started cluster, with ``http_port`` (HAProxy's frontends) and
        ``ipam`` (the allocations file) set.
    """
    from tests.support import free_port, write_config

    kind = next(iter(provider))
    steps = [f"provider.{kind}", "ipam.file", "dns.rfc2136", "lb.haproxy"]
    http_port = free_port()
    config = write_config(
        directory,
        ",".join(steps),
        {
            "provider": provider,
            "ipam": {
                "file": {"network_cidr": "127.0.1.0/24", "db_file": "var/ipam.json"}
            },
            "dns": {"rfc2136": named.settings()},
            "lb": {"haproxy": haproxy.settings(http_port)},
        },
        serviceRetryMaxInterval="2s",
        serviceWIPTimeout="10s",
    )
    cluster = cluster_factory(config)
    cluster.core()
    for name in steps:
        cluster.ext(name)
    cluster.api.wait_extensions(set(steps))
    cluster.http_port = http_port
    cluster.ipam = directory / "var/ipam.json"
    return cluster
