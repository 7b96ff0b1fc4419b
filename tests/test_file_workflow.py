"""The seed example, end to end: provider.file -> ipam.file -> deployed."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support import write_config


def _services(path: Path, *services: dict) -> None:
    path.write_text(yaml.safe_dump({"services": list(services)}), encoding="utf-8")


def _web(name: str = "web", port: int = 8081) -> dict:
    return {
        "name": name,
        "targets": [{"host": "127.0.0.1", "port": port}],
        "dns_names": [f"{name}.example.test"],
    }


def test_service_deploys_with_an_ip_and_undeploys_freeing_it(tmp_path, cluster_factory):
    services = tmp_path / "services.yml"
    _services(services, _web())
    config = write_config(
        tmp_path,
        "provider.file,ipam.file",
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {"file": {"network_cidr": "10.32.30.0/30", "db_file": "var/ipam.json"}},
        },
    )
    cluster = cluster_factory(config)
    cluster.core()
    cluster.ext("provider.file")
    cluster.ext("ipam.file")

    entry = cluster.api.wait_state("web", "deployed")
    assert entry["service"]["public_ip"] == "10.32.30.1"
    assert entry["expected_state"] == "deployed"
    ipam = json.loads((tmp_path / "var/ipam.json").read_text())
    assert ipam["allocations"] == {"web": "10.32.30.1"}

    _services(services)
    entry = cluster.api.wait_state("web", "undeployed")
    assert entry["expected_state"] == "undeployed"
    assert entry["close_time"] is not None
    assert entry["service"]["public_ip"] is None
    assert json.loads((tmp_path / "var/ipam.json").read_text())["allocations"] == {}
