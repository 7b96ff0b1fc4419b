"""The raw-wire extension printed in docs/protocol.md works against a real core.

The example is read from the document itself, so the page and this test
cannot drift apart: it runs in place of ``noop.a`` in the workflow
``provider.file,noop.a``, as its own process, with nothing but pyzmq and
msgpack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import Cluster, wait_until, write_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
FIRST_LINE = (
    "# A provisioner speaking the interlook bus protocol with pyzmq and msgpack only."
)


def example_source() -> str:
    """The Python block of docs/protocol.md that starts with FIRST_LINE."""
    text = DOC.read_text(encoding="utf-8")
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(FIRST_LINE):
            return code
    raise AssertionError(f"{DOC}: no python block starting with {FIRST_LINE!r}")


class RawExtension:
    """The example running as a process, its output in a log file."""

    def __init__(self, directory: Path, endpoint: str, name: str) -> None:
        script = directory / "raw_extension.py"
        script.write_text(example_source(), encoding="utf-8")
        self.log_path = directory / "raw_extension.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, str(script), endpoint, name],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def _write_services(path: Path, *names: str) -> None:
    services = [
        {
            "name": name,
            "targets": [{"host": "127.0.0.1", "port": 8081}],
            "dns_names": [f"{name}.example.test"],
        }
        for name in names
    ]
    # Written whole and renamed, so the provider never reads half a file.
    temp = path.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump({"services": services}), encoding="utf-8")
    temp.replace(path)


@pytest.fixture
def bus(
    tmp_path: Path, cluster_factory
) -> Iterator[tuple[Cluster, RawExtension, Path]]:
    """A core, provider.file, and the raw example registered as noop.a."""
    services = tmp_path / "services.yml"
    _write_services(services, "web")
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}}},
    )
    cluster = cluster_factory(config)
    cluster.core()
    cluster.ext("provider.file")
    endpoint = yaml.safe_load(config.read_text(encoding="utf-8"))["core"]["endpoint"]
    raw = RawExtension(tmp_path, endpoint, "noop.a")
    try:
        yield cluster, raw, services
    finally:
        raw.stop()
        if raw.popen.returncode not in (None, -signal.SIGTERM):
            print(raw.output()[-5000:])


def _registered_pids(cluster: Cluster, name: str) -> set[int]:
    return {i["pid"] for i in cluster.api.get("/extensions") if i["name"] == name}


def test_raw_extension_deploys_and_undeploys_a_service(bus):
    cluster, raw, services = bus

    entry = cluster.api.wait_state("web", "deployed")
    assert entry["error"] is None
    assert _registered_pids(cluster, "noop.a") == {raw.popen.pid}
    assert "deploy web" in raw.output()

    _write_services(services)
    cluster.api.wait_state("web", "undeployed")
    wait_until(lambda: "undeploy web" in raw.output(), 5, what="the undeploy step")
    assert raw.popen.poll() is None, raw.output()


def test_raw_extension_registers_again_with_a_restarted_core(bus):
    cluster, raw, services = bus
    cluster.api.wait_state("web", "deployed")
    old_core = next(p for p in cluster.processes if p.args[0] == "core")

    # A stopping core tells every instance DISCONNECT; the example registers
    # again after a short pause, and on a new connection when the core stays
    # silent, until the new core welcomes it.
    old_core.stop()
    cluster.core()
    wait_until(
        lambda: _registered_pids(cluster, "noop.a") == {raw.popen.pid},
        15,
        what="the raw extension to register with the new core",
    )
    _write_services(services, "web", "api")
    entry = cluster.api.wait_state("api", "deployed")
    assert entry["error"] is None
    assert "deploy api" in raw.output()
    assert cluster.api.entry("web")["state"] == "deployed"
    assert raw.popen.poll() is None, raw.output()
