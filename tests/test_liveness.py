"""Liveness is judged on what peers sent, not on how busy the core was."""

from __future__ import annotations

import threading
import time

import yaml

from interlook_core import protocol
from tests.support import FakeExtension, write_config

SERVICES = 10_000


def test_a_busy_core_does_not_drop_instances_whose_heartbeats_wait_in_its_socket(
    tmp_path, cluster_factory
):
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "unused.yml"}}},
        logLevel="INFO",
        heartbeatInterval="300ms",
    )
    cluster = cluster_factory(config)
    core = cluster.core()
    endpoint = yaml.safe_load(config.read_text())["core"]["endpoint"]
    step = FakeExtension(endpoint, "noop.a")
    provider = FakeExtension(endpoint, "provider.file", "provider")
    stop = threading.Event()
    try:
        step.register(capacity=50, heartbeat_ms=300)
        provider.register(heartbeat_ms=600_000)

        def work() -> None:
            # This thread alone uses the step's socket: it answers every
            # request at once and sends a heartbeat every 100ms.
            last = 0.0
            while not stop.is_set():
                if time.monotonic() - last > 0.1:
                    step.send(protocol.HEARTBEAT, {})
                    last = time.monotonic()
                got = step.recv(0.05)
                if got is not None and got[0] == protocol.STEP:
                    step.send(protocol.RESULT, {"id": got[1]["id"], "ok": True})

        beater = threading.Thread(target=work, daemon=True)
        beater.start()
        # Taking in a snapshot this big keeps the core's loop busy for longer
        # than the step's liveness period (3 x 300ms), while its heartbeats
        # keep arriving.
        services = [
            {"name": f"s{i}", "targets": [{"host": "10.0.0.1", "port": 80}]}
            for i in range(SERVICES)
        ]
        provider.send(protocol.SNAPSHOT, {"services": services})
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            states = cluster.api.get("/workflow")["states"]
            if states.get("deployed") == SERVICES or "LOST extension" in core.output():
                break
            time.sleep(0.05)
        stop.set()
        beater.join(5)
        log = core.output()
        assert "LOST extension" not in log, log[-3000:]
    finally:
        stop.set()
        step.close()
        provider.close()
