"""A burst of services while one of two instances of a step is killed and restarted.

provider.file publishes COUNT services at once; two noop.a processes share
the step. When part of the burst is deployed, one of them gets SIGKILL and a
new process takes its place. Every service must end ``deployed``, none in
progress or in error, and the core must have applied exactly one deploy
result per service: its ``STEP_DONE`` log lines are counted per service.

The figures (time, results performed by the extensions, replies the core
ignored, requests moved off the killed instance) are printed with ``-s``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import wait_until, write_config

COUNT = int(os.environ.get("INTERLOOK_LOAD_SERVICES", "10000"))
# The kill comes once this share of the burst is deployed.
KILL_AT = 0.2

pytestmark = pytest.mark.load


def _write_services(path: Path, count: int) -> None:
    # Written by hand: yaml.safe_dump of 10,000 maps costs seconds.
    lines = ["services:"]
    for i in range(count):
        host = f"10.1.{i // 250}.{i % 250 + 1}"
        lines.append(f"- {{name: svc{i}, targets: [{{host: {host}, port: 80}}]}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _step_done_per_service(log: str, step: str) -> Counter[str]:
    pattern = re.compile(
        rf"STEP_DONE service=(\S+) step={re.escape(step)} action=deploy "
    )
    return Counter(pattern.findall(log))


def test_a_burst_survives_an_instance_killed_and_restarted(tmp_path, cluster_factory):
    (tmp_path / "services.yml").write_text("services: []\n")
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}}},
        logLevel="INFO",
        serviceWIPTimeout="10s",
        cleanUndeployedServiceAfter="1h",
        serviceMaxLastUpdated="1h",
    )
    cluster = cluster_factory(config)
    core = cluster.core()
    cluster.ext("provider.file")
    victim = cluster.ext("noop.a", "--capacity", "50")
    survivor = cluster.ext("noop.a", "--capacity", "50")
    wait_until(
        lambda: len(cluster.api.get("/extensions")) == 3, 20, what="three extensions"
    )

    started = time.monotonic()
    _write_services(tmp_path / "services.yml", COUNT)

    def deployed() -> int:
        return cluster.api.get("/workflow")["states"].get("deployed", 0)

    wait_until(
        lambda: deployed() >= COUNT * KILL_AT, 120, 0.02, what="part of the burst"
    )
    at_kill = deployed()
    victim.kill(signal.SIGKILL)
    killed_at = time.monotonic() - started
    replacement = cluster.ext("noop.a", "--capacity", "50")

    def settled() -> bool:
        workflow = cluster.api.get("/workflow")
        return (
            workflow["states"].get("deployed", 0) == COUNT
            and workflow["in_progress"] == 0
        )

    wait_until(settled, 150, 0.1, what=f"all {COUNT} services deployed")
    elapsed = time.monotonic() - started

    services = cluster.api.services()
    assert len(services) == COUNT, "no service lost"
    stuck = [n for n, e in services.items() if e["work_in_progress"] or e["error"]]
    assert not stuck, f"stuck or failed: {stuck[:10]}"
    assert {e["state"] for e in services.values()} == {"deployed"}

    core_log = core.output()
    applied = _step_done_per_service(core_log, "noop.a")
    assert set(applied) == set(services), "every service had its deploy applied"
    twice = {name: n for name, n in applied.items() if n != 1}
    assert not twice, (
        f"deploy results applied more than once: {list(twice.items())[:10]}"
    )
    lost = re.findall(r"LOST extension=noop\.a .*requests_moved=(\d+)", core_log)
    assert lost, "the core noticed the killed instance"
    assert "Traceback" not in core_log

    performed = {
        label: len(_step_done_per_service(process.output(), "noop.a").keys())
        for label, process in (
            ("killed", victim),
            ("survivor", survivor),
            ("replacement", replacement),
        )
    }
    print(
        f"\nLOAD services={COUNT} seconds={elapsed:.1f} rate={COUNT / elapsed:.0f}/s "
        f"killed_at={killed_at:.1f}s deployed_at_kill={at_kill} "
        f"requests_moved={','.join(lost)} "
        f"ignored_replies={core_log.count('IGNORED_REPLY')} "
        + " ".join(f"performed_{k}={v}" for k, v in performed.items())
    )
