"""The whole chain as real processes: provider.file, ipam.file, dns.rfc2136, lb.haproxy.

A service written to a file becomes a DNS name in a real BIND that resolves
to an IP from the pool, and an HTTP request to that name reaches the target
through a real HAProxy.
"""

from __future__ import annotations

import json
from pathlib import Path

import dns.resolver
import pytest
import yaml

from tests.integration import servers
from tests.integration.servers import Haproxy, Named, http_get, refused, start_chain
from tests.support import wait_until

# The server fixtures, made visible to this module's tests.
named = servers.named
haproxy = servers.haproxy
http_targets = servers.http_targets


def _write(directory: Path, file: str, *services: dict) -> None:
    path = directory / file
    temp = path.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump({"services": list(services)}), encoding="utf-8")
    temp.replace(path)


def _service(name: str, port: int, *dns_names: str) -> dict:
    return {
        "name": name,
        "targets": [{"host": "127.0.0.1", "port": port}],
        "dns_names": list(dns_names) or [f"{name}.example.test"],
    }


@pytest.fixture
def chain(tmp_path: Path, cluster_factory, named: Named, haproxy: Haproxy):
    services = tmp_path / "services"
    services.mkdir()
    provider = {"file": {"path": "services", "pollInterval": "100ms"}}
    cluster = start_chain(tmp_path, cluster_factory, provider, named, haproxy)
    cluster.services = services
    return cluster


def _resolve(named: Named, name: str) -> str | None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = named.port
    resolver.lifetime = 3
    try:
        return resolver.resolve(name, "A", tcp=True)[0].address
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None


def _get_by_name(named: Named, name: str, port: int) -> str:
    ip = _resolve(named, name)
    assert ip is not None, f"{name} does not resolve"
    return http_get(ip, port)


def test_add_change_remove_and_bad_definitions(
    chain, named: Named, haproxy: Haproxy, http_targets
):
    a, b = http_targets["a"], http_targets["b"]
    _write(chain.services, "web.yml", _service("web", a.port))
    # Accepted by the provider, refused by the DNS step: that entry alone fails.
    _write(chain.services, "away.yml", _service("away", b.port, "away.elsewhere.test"))

    entry = chain.api.wait_state("web", "deployed", timeout=30)
    ip = entry["service"]["public_ip"]
    assert ip.startswith("127.0.1.")
    assert named.dig("web.example.test") == [ip]
    assert _get_by_name(named, "web.example.test", chain.http_port) == "a"

    away = chain.api.wait_entry("away", lambda e: e["error"], timeout=20)
    assert "dns.rfc2136 deploy" in away["error"]
    assert "'away.elsewhere.test' is outside the zone 'example.test'" in away["error"]

    # Names with a newline, a space, a '#' or 300 characters are refused where
    # they enter (the provider reads the file, the core checks each event);
    # the provisioners check them again (see test_lb_haproxy, test_dns_rfc2136).
    # The file keeps its last good services, and other files still deploy.
    refusals = {
        "'evil name'": "service 'evil name': name must be",
        "'evil#x'": "service 'evil#x': name must be",
        "e" * 300: "service '<unnamed>': name must be",
        '"evil\\nbind 127.0.0.1:1"': "service 'evil\\nbind 127.0.0.1:1': name must be",
        '"evil\\n"': "service 'evil\\n': name must be",
    }
    for bad, reason in refusals.items():
        (chain.services / "away.yml").write_text(
            f"services:\n  - {{name: {bad}, targets: [{{host: 127.0.0.1, port: 1}}]}}\n",
            encoding="utf-8",
        )
        wait_until(
            lambda r=reason: r in chain.logs(),
            10,
            what=f"the provider to refuse {bad!r}",
        )
    (chain.services / "late.yml").write_text(
        "services:\n"
        f"  - {{name: late, targets: [{{host: 127.0.0.1, port: {a.port}}}],\n"
        '     dns_names: [late.example.test, "evil\\n.example.test"]}\n',
        encoding="utf-8",
    )
    wait_until(
        lambda: "dns_names holds 'evil\\n.example.test'" in chain.logs(),
        10,
        what="the provider to refuse late.yml",
    )
    _write(chain.services, "late.yml", _service("late", a.port))
    chain.api.wait_state("late", "deployed", timeout=30)
    assert _get_by_name(named, "late.example.test", chain.http_port) == "a"
    assert "evil" not in haproxy.ours.read_text()
    assert sorted(chain.api.services()) == ["away", "late", "web"]
    assert chain.api.entry("away")["error"], "away keeps its definition and its error"

    # New targets: traffic moves.
    _write(chain.services, "web.yml", _service("web", b.port))
    wait_until(
        lambda: _get_by_name(named, "web.example.test", chain.http_port) == "b",
        20,
        what="traffic to move to target b",
    )
    chain.api.wait_state("web", "deployed")

    # Removed: the name, the frontend and the IP are gone.
    (chain.services / "web.yml").unlink()
    chain.api.wait_state("web", "undeployed", timeout=30)
    assert named.dig("web.example.test") == []
    assert named.records("web.example.test", "TXT") == []
    assert refused(ip, chain.http_port)
    assert "il-fe-web" not in haproxy.ours.read_text()
    assert "web" not in json.loads(chain.ipam.read_text())["allocations"]


def test_servers_down_during_deploy_then_back(
    chain, named: Named, haproxy: Haproxy, http_targets
):
    a = http_targets["a"]
    named.stop()
    _write(chain.services, "one.yml", _service("one", a.port))

    entry = chain.api.wait_entry("one", lambda e: e["error"], timeout=20)
    assert "dns.rfc2136 deploy" in entry["error"]
    assert "cannot reach DNS server 127.0.0.1" in entry["error"]
    assert entry["state"] == "ipam.file"

    named.start()
    entry = chain.api.wait_state("one", "deployed", timeout=30)
    assert named.records("one.example.test", "A") == [entry["service"]["public_ip"]]
    assert named.records("one.example.test", "TXT") == ['"interlook service=one"']
    assert _get_by_name(named, "one.example.test", chain.http_port) == "a"

    haproxy.kill_worker()
    _write(chain.services, "two.yml", _service("two", a.port))
    entry = chain.api.wait_entry("two", lambda e: e["error"], timeout=20)
    assert "lb.haproxy deploy" in entry["error"]
    assert "cannot reach HAProxy's master socket" in entry["error"]
    assert entry["state"] == "dns.rfc2136"

    haproxy.start()
    entry = chain.api.wait_state("two", "deployed", timeout=30)
    assert named.records("two.example.test", "A") == [entry["service"]["public_ip"]]
    assert named.records("two.example.test", "TXT") == ['"interlook service=two"']
    assert _get_by_name(named, "two.example.test", chain.http_port) == "a"
    assert _get_by_name(named, "one.example.test", chain.http_port) == "a"
