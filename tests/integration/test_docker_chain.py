"""The whole chain from ``docker run`` to an HTTP answer by name, as real processes.

A labelled container on a real Docker engine is published by provider.docker,
given an IP by ipam.file, a name in a real BIND by dns.rfc2136 and a frontend
in a real HAProxy by lb.haproxy. The name then resolves to that IP and an HTTP
request to it reaches the container's own httpd. Removing the container takes
all of it away again.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.integration import servers
from tests.integration.docker_engine import DockerObjects
from tests.integration.servers import (
    ZONE,
    Haproxy,
    Named,
    http_get,
    refused,
    start_chain,
)
from tests.support import Cluster, free_port, wait_until

# The server fixtures, made visible to this module's tests.
named = servers.named
haproxy = servers.haproxy


@pytest.fixture
def chain(
    tmp_path: Path,
    cluster_factory,
    docker_host: str,
    docker_objects: DockerObjects,
    named: Named,
    haproxy: Haproxy,
) -> Cluster:
    provider = {
        "docker": {
            "endpoint": docker_host,
            "mode": "containers",
            # Only this test's containers, whatever else the engine runs.
            "labelSelector": docker_objects.selector,
            # Long: what the test sees within seconds came from the events.
            "pollInterval": "60s",
            "reconnectMaxInterval": "500ms",
        }
    }
    return start_chain(tmp_path, cluster_factory, provider, named, haproxy)


def _allocations(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8"))["allocations"]


def test_docker_run_to_http_by_name_and_back(
    chain: Cluster, docker_objects: DockerObjects, named: Named, haproxy: Haproxy
):
    port = free_port()
    text = f"interlook-{uuid.uuid4().hex}"
    service = docker_objects.name("web")
    dns_name = f"{service}.{ZONE}"
    # Removed by the docker_objects fixture however the test ends.
    container = docker_objects.run(
        "web",
        docker_objects.publication(dns_name, port),
        [
            "sh",
            "-c",
            f"mkdir -p /www && echo {text} > /www/index.html"
            f" && httpd -f -p {port} -h /www",
        ],
    )

    entry = chain.api.wait_state(service, "deployed", timeout=30)
    assert entry["service"]["provider"] == "provider.docker"
    assert entry["service"]["dns_names"] == [dns_name]
    assert [(t["host"], t["port"]) for t in entry["service"]["targets"]] == [
        ("127.0.0.1", port)
    ]
    ip = entry["service"]["public_ip"]
    assert ip.startswith("127.0.1."), ip
    assert _allocations(chain.ipam) == {service: ip}

    assert named.dig(dns_name) == [ip]
    # HAProxy marks the target up after its first health checks pass, and
    # busybox httpd may still be starting in the container: poll.
    body = wait_until(
        lambda: http_get(ip, chain.http_port, host_header=dns_name),
        15,
        what=f"GET http://{dns_name}:{chain.http_port}/ through HAProxy",
    )
    assert body.strip() == text

    container.remove(force=True)
    entry = chain.api.wait_state(service, "undeployed", timeout=30)
    assert entry["expected_state"] == "undeployed"
    assert entry["service"]["public_ip"] is None
    assert named.dig(dns_name) == []
    assert named.records(dns_name, "TXT") == []
    assert refused(ip, chain.http_port)
    assert f"il-fe-{service}" not in haproxy.ours.read_text(encoding="utf-8")
    assert service not in _allocations(chain.ipam)
