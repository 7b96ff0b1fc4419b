"""A real Docker engine for the tests, and tools around it.

- ``docker_host``: the engine's address. CI names one in
  ``INTERLOOK_TEST_DOCKER_HOST``; without it the fixture starts a private
  engine with deploy/ci/start-dockerd.sh for the session and stops it at the
  end. Without dockerd the tests skip (outside CI) or fail (in CI).
- ``docker_objects``: runs containers and creates Swarm services that carry a
  label unique to the test, and removes every one of them afterwards.
- :class:`EngineProxy`: forwards a unix or TLS socket to the engine, so a
  test can cut the engine off and bring it back without touching it.
- :func:`make_tls_files`: a test CA, a server and a client certificate.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.types import ServiceMode

from tests.support import IN_CI, need_program

IMAGE = "interlook-test-busybox:latest"
TEST_LABEL = "interlook.test"
REPO = Path(__file__).resolve().parents[2]
START_SCRIPT = REPO / "deploy/ci/start-dockerd.sh"
STOP_SCRIPT = REPO / "deploy/ci/stop-dockerd.sh"


def _skip_or_fail(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _check_engine(host: str) -> None:
    client = docker.DockerClient(base_url=host, timeout=10)
    try:
        client.ping()
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"the engine at {host} has no image {IMAGE}; run {START_SCRIPT.name}"
        )
    except docker.errors.DockerException as exc:
        pytest.fail(f"the engine at {host} does not answer: {exc}")
    finally:
        client.close()


def start_engine(directory: Path) -> str:
    """Start a private engine in ``directory`` with the CI script; its address."""
    done = subprocess.run(
        ["bash", str(START_SCRIPT), str(directory)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{START_SCRIPT.name} failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def stop_engine(directory: Path) -> None:
    """Stop the engine in ``directory`` and delete the directory."""
    subprocess.run(
        ["bash", str(STOP_SCRIPT), str(directory)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """The address of a Docker engine with the test image and a swarm."""
    host = os.environ.get("INTERLOOK_TEST_DOCKER_HOST")
    if host:
        _check_engine(host)
        yield host
        return
    need_program("dockerd")
    need_program("docker")
    if os.geteuid() != 0:
        _skip_or_fail(
            "dockerd needs root; set INTERLOOK_TEST_DOCKER_HOST to use a running engine"
        )
    # A short folder: it holds the engine's unix socket (108 bytes at most).
    directory = Path(tempfile.mkdtemp(prefix="ild-", dir="/tmp"))
    try:
        try:
            host = start_engine(directory)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            pytest.fail(str(exc))
        _check_engine(host)
        yield host
    finally:
        stop_engine(directory)


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, timeout=30)
    yield client
    client.close()


class DockerObjects:
    """Containers and services made by one test, all labelled ``interlook.test=TAG``."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.tag = uuid.uuid4().hex[:8]
        self.selector = f"{TEST_LABEL}={self.tag}"

    def name(self, base: str) -> str:
        return f"ilt-{self.tag}-{base}"

    def labels(self, **labels: str) -> dict[str, str]:
        return {TEST_LABEL: self.tag, **labels}

    def publication(self, hosts: str, port: int | str, **extra: str) -> dict[str, str]:
        return self.labels(
            **{"interlook.hosts": hosts, "interlook.port": str(port)}, **extra
        )

    def run(
        self,
        base: str,
        labels: dict[str, str],
        command: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a host-network container named ``ilt-TAG-BASE``; returns it started."""
        return self.client.containers.run(
            IMAGE,
            command or ["sleep", "600"],
            name=self.name(base),
            labels={TEST_LABEL: self.tag, **labels},
            network_mode="host",
            detach=True,
            **kwargs,
        )

    def service(
        self,
        base: str,
        labels: dict[str, str],
        replicas: int = 1,
        command: list[str] | None = None,
    ) -> Any:
        """Create a host-network Swarm service named ``ilt-TAG-BASE``."""
        return self.client.services.create(
            IMAGE,
            command or ["sleep", "600"],
            name=self.name(base),
            labels={TEST_LABEL: self.tag, **labels},
            networks=["host"],
            mode=ServiceMode("replicated", replicas),
            # A busybox sleep as pid 1 ignores SIGTERM; do not wait for it.
            stop_grace_period=100_000_000,
        )

    def cleanup(self) -> None:
        label = {"label": self.selector}
        for service in self.client.services.list(filters=label):
            try:
                service.remove()
            except docker.errors.NotFound:
                pass
        for container in self.client.containers.list(all=True, filters=label):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def docker_objects(docker_client: docker.DockerClient) -> Iterator[DockerObjects]:
    objects = DockerObjects(docker_client)
    try:
        yield objects
    finally:
        objects.cleanup()


class EngineProxy:
    """Forwards a listening socket to the engine's unix socket; can be cut and restored.

    ``listen`` is a unix socket path, or ``("127.0.0.1", port)`` for TCP. With
    ``tls`` (a server context) it accepts TLS, as ``dockerd --tlsverify`` does.
    """

    def __init__(
        self,
        engine_host: str,
        listen: str | tuple[str, int],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not engine_host.startswith("unix://"):
            raise ValueError(f"the proxy forwards to a unix socket, not {engine_host}")
        self.engine_path = engine_host.removeprefix("unix://")
        self.listen = listen
        self.tls = tls
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        if isinstance(self.listen, str):
            return f"unix://{self.listen}"
        return f"tcp://{self.listen[0]}:{self.listen[1]}"

    def start(self) -> None:
        if isinstance(self.listen, str):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.listen)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.listen)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and cut every forwarded connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _shut(listener)
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)
        if isinstance(self.listen, str):
            Path(self.listen).unlink(missing_ok=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._sockets.update((client, upstream))
        try:
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
                with self._lock:
                    self._sockets.add(client)
            upstream.connect(self.engine_path)
            _pipe(client, upstream)
        except (OSError, ssl.SSLError):
            pass
        finally:
            _shut(client)
            _shut(upstream)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in selector.select(timeout=1.0):
                source, target = key.fileobj, key.data
                data = source.recv(65536)
                if not data:
                    return
                target.sendall(data)
                # TLS may hold decrypted bytes that select() cannot see.
                while isinstance(source, ssl.SSLSocket) and source.pending():
                    target.sendall(source.recv(source.pending()))
    finally:
        selector.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path, for unix sockets."""
    directory = Path(tempfile.mkdtemp(prefix="ilt-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server context that requires a client certificate (``--tlsverify``)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.load_verify_locations(self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    """A CA and, signed by it, a server certificate for 127.0.0.1 and a client one."""
    openssl = need_program("openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        f"/CN=interlook {name} CA",
    )
    for role, extension in (("server", "serverAuth"), ("client", "clientAuth")):
        run(
            "req",
            *key,
            "-keyout",
            f"{role}.key",
            "-out",
            f"{role}.csr",
            "-subj",
            f"/CN=interlook {name} {role}",
        )
        (directory / f"{role}.ext").write_text(
            f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={extension}\n",
            encoding="utf-8",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{role}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{role}.pem",
            "-days",
            "2",
            "-extfile",
            f"{role}.ext",
        )
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
