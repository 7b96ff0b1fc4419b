"""SIGKILL at any moment: nothing lost, no IP handed out twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import yaml

from tests.support import wait_until, write_config

COUNT = 200


def _write_services(path: Path, names) -> None:
    services = [
        {"name": n, "targets": [{"host": "10.0.0.5", "port": 8000 + i}]}
        for i, n in enumerate(names)
    ]
    path.write_text(yaml.safe_dump({"services": services}), encoding="utf-8")


def _config(tmp_path: Path) -> Path:
    _write_services(tmp_path / "services.yml", [f"svc{i}" for i in range(COUNT)])
    return write_config(
        tmp_path,
        "provider.file,ipam.file",
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {
                "file": {"network_cidr": "10.40.0.0/22", "db_file": "var/ipam.json"}
            },
        },
        logLevel="INFO",
        serviceWIPTimeout="2s",
    )


def _deployed(api) -> dict[str, dict]:
    return {n: e for n, e in api.services().items() if e["state"] == "deployed"}


def _check_consistent(tmp_path: Path, api, expected: set[str]) -> None:
    services = api.services()
    live = {n: e for n, e in services.items() if e["expected_state"] == "deployed"}
    assert set(live) == expected
    ips = [e["service"]["public_ip"] for e in live.values()]
    assert None not in ips and len(set(ips)) == len(ips), "every IP given once"
    allocations = json.loads((tmp_path / "var/ipam.json").read_text())["allocations"]
    assert allocations == {n: e["service"]["public_ip"] for n, e in live.items()}


def test_a_core_killed_mid_flow_resumes_every_entry(tmp_path, cluster_factory):
    cluster = cluster_factory(_config(tmp_path))
    core = cluster.core()
    cluster.ext("provider.file")
    cluster.ext("ipam.file")
    wait_until(lambda: len(_deployed(cluster.api)) >= 20, 30, what="some deployed")
    core.kill(signal.SIGKILL)

    cluster.core()
    names = {f"svc{i}" for i in range(COUNT)}
    wait_until(lambda: set(_deployed(cluster.api)) == names, 60, what="all deployed")
    _check_consistent(tmp_path, cluster.api, names)

    # Kill it again in the middle of undeploying half of them.
    kept = {f"svc{i}" for i in range(COUNT // 2)}
    _write_services(tmp_path / "services.yml", sorted(kept))
    wait_until(
        lambda: (
            sum(e["state"] == "undeployed" for e in cluster.api.services().values())
            >= 10
        ),
        30,
        what="some undeployed",
    )
    cluster.processes[-1].kill(signal.SIGKILL)
    cluster.core()
    wait_until(
        lambda: all(
            e["state"] == ("deployed" if n in kept else "undeployed")
            for n, e in cluster.api.services().items()
        ),
        60,
        what="the removals to finish",
    )
    _check_consistent(tmp_path, cluster.api, kept)


def test_up_restarts_an_extension_killed_mid_step(tmp_path, cluster_factory):
    cluster = cluster_factory(_config(tmp_path))
    up = cluster.start("up")
    api = cluster.api
    wait_until(lambda: api.get("/health"), 30, what="the core under supervisord")
    api.wait_extensions({"provider.file", "ipam.file"}, 30)
    pid = next(e["pid"] for e in api.get("/extensions") if e["name"] == "ipam.file")
    wait_until(lambda: _deployed(api), 30, what="a first deploy")
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        pids = [e["pid"] for e in api.get("/extensions") if e["name"] == "ipam.file"]
        return bool(pids) and pid not in pids

    wait_until(restarted, 30, what="supervisord to restart ipam.file")
    names = {f"svc{i}" for i in range(COUNT)}
    wait_until(lambda: set(_deployed(api)) == names, 60, what="all deployed")
    _check_consistent(tmp_path, api, names)

    assert up.stop() == 0
    output = up.output()
    assert "STOPPED core" in output and "STOPPED extension=ipam.file" in output


def test_an_unreadable_entries_file_stops_the_core_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    config = _config(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var/entries.db").write_bytes(b"this is not a database" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "interlook_core.cli", "core", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "START_FAILED" in result.stdout and "entries.db" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
