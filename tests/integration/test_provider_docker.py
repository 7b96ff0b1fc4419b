"""provider.docker against a real Docker engine, through the whole product.

Each test writes a config with ``provider.docker,ipam.file``, starts the core
and both extensions as real processes, and drives the engine with the Docker
SDK. The provider only sees objects carrying the test's own label
(``labelSelector``), so tests never see each other's containers.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker.errors
import pydantic
import pytest
import requests
import yaml

from interlook_core.config import load_config, validate_section
from interlook_core.errors import ConfigError
from interlook_ext.base import ServiceFeed
from interlook_ext.docker_labels import LabelError, is_candidate, parse_publication
from interlook_ext.docker_provider import (
    DockerProvider,
    DockerProviderSettings,
    EngineError,
    _engine_errors,
    open_client,
)
from tests.integration import docker_engine
from tests.integration.docker_engine import DockerObjects, EngineProxy, make_tls_files
from tests.support import Cluster, free_port, wait_until, write_config

short_dir = docker_engine.short_dir

CIDR = "10.32.31.0/28"
FIRST_IP = "10.32.31.1"


def _config(
    tmp_path: Path, endpoint: str, objects: DockerObjects, **provider: Any
) -> Path:
    settings = {
        "endpoint": endpoint,
        "mode": "containers",
        "labelSelector": objects.selector,
        # Long by default: a change seen within seconds came from the event stream.
        "pollInterval": "60s",
        "reconnectMaxInterval": "500ms",
    }
    settings.update(provider)
    return write_config(
        tmp_path,
        "provider.docker,ipam.file",
        {
            "provider": {"docker": settings},
            "ipam": {"file": {"network_cidr": CIDR, "db_file": "var/ipam.json"}},
        },
    )


def _set_core(config: Path, **settings: Any) -> None:
    document = yaml.safe_load(config.read_text())
    document["core"].update(settings)
    config.write_text(yaml.safe_dump(document, sort_keys=False))


def _start(cluster: Cluster) -> Any:
    cluster.core()
    provider = cluster.ext("provider.docker")
    cluster.ext("ipam.file")
    cluster.api.wait_extensions({"provider.docker", "ipam.file"})
    wait_until(
        lambda: "ENGINE_UP" in provider.output(),
        20,
        what="the provider to reach the engine",
    )
    return provider


def _allocations(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "var/ipam.json"
    return json.loads(path.read_text())["allocations"] if path.exists() else {}


def _targets(entry: dict[str, Any]) -> list[tuple[str, int, int]]:
    return sorted(
        (t["host"], t["port"], t["weight"]) for t in entry["service"]["targets"]
    )


def _deployed_with(targets: list[tuple[str, int, int]]):
    def check(entry: dict[str, Any]) -> bool:
        return (
            entry["state"] == "deployed"
            and not entry["work_in_progress"]
            and _targets(entry) == targets
        )

    return check


# -- labels and settings, no engine needed ---------------------------------------------


@pytest.mark.parametrize(
    ("labels", "label", "reason"),
    [
        (
            {"interlook.hosts": "a.test", "interlook.port": "http"},
            "interlook.port",
            "port",
        ),
        (
            {"interlook.hosts": "a.test", "interlook.port": "0"},
            "interlook.port",
            "port",
        ),
        (
            {"interlook.hosts": "a.test", "interlook.port": "65536"},
            "interlook.port",
            "port",
        ),
        (
            {"interlook.hosts": " , ", "interlook.port": "80"},
            "interlook.hosts",
            "empty",
        ),
        (
            {"interlook.hosts": "ok.test,bad_name!", "interlook.port": "80"},
            "interlook.hosts",
            "bad_name!",
        ),
        (
            {
                "interlook.hosts": "a.test",
                "interlook.port": "80",
                "interlook.ssl": "maybe",
            },
            "interlook.ssl",
            "true or false",
        ),
    ],
)
def test_bad_label_names_the_label_and_the_problem(labels, label, reason):
    with pytest.raises(LabelError) as caught:
        parse_publication(labels)
    assert caught.value.label == label
    assert reason in str(caught.value)


def test_labels_give_names_port_and_tls():
    labels = {
        "interlook.hosts": "A.test, b.test.,",
        "interlook.port": "8080",
        "interlook.ssl": "TRUE",
    }
    publication = parse_publication(labels)
    assert publication.dns_names == ("a.test", "b.test")
    assert publication.port == 8080 and publication.tls is True
    assert is_candidate(labels, ["interlook.hosts"])
    assert not is_candidate(labels, ["team=blue"])
    assert not is_candidate({"interlook.hosts": "a.test"}, [])


def test_bad_settings_are_named_in_the_config_error(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    cases = {
        "endpoint: http://x": "endpoint",
        "endpoint: tcp://host": "endpoint",
        "{endpoint: 'tcp://h:2376', tlsCert: cert.pem}": "tlsCert and tlsKey go",
        "{tlsCa: cert.pem}": "need a tcp:// endpoint",
        "{endpoint: 'tcp://h:2376', tlsCa: missing.pem}": "file not found",
        "labelSelector: 'a b'": "not a label selector",
        "hostAddress: 'not a host!'": "hostAddress",
        "mode: kubernetes": "mode",
        "pollInterval: 30": "pollInterval",
    }
    for text, expected in cases.items():
        section = text if text.startswith("{") else "{" + text + "}"
        path = tmp_path / "interlook.yml"
        path.write_text(
            "core: {workflowSteps: 'provider.docker,ipam.file'}\n"
            f"provider:\n  docker: {section}\n"
            "ipam:\n  file: {network_cidr: 10.0.0.0/24}\n"
        )
        with pytest.raises(ConfigError) as caught:
            validate_section(
                load_config(path), "provider.docker", DockerProviderSettings
            )
        assert expected in str(caught.value), (text, str(caught.value))
        assert "provider.docker" in str(caught.value) or "docker" in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [
        docker.errors.APIError(
            "refused", explanation="This node is not a swarm manager."
        ),
        docker.errors.DockerException("Error while fetching server API version"),
        requests.ConnectionError("connection refused"),
        requests.Timeout("read timed out"),
        OSError(111, "Connection refused"),
    ],
)
def test_engine_errors_are_mapped_to_engine_error(error):
    with pytest.raises(EngineError) as caught, _engine_errors("listing containers"):
        raise error
    assert str(caught.value).startswith("listing containers: ")
    assert caught.value.__cause__ is error


def test_tls_settings_reach_the_sdk_client(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    settings = DockerProviderSettings(
        endpoint="tcp://127.0.0.1:1",
        tlsCa=str(tls.ca),
        tlsCert=str(tls.client_cert),
        tlsKey=str(tls.client_key),
        apiTimeout="1s",
    )
    # Nothing listens on port 1: the client is built, then version detection fails.
    with pytest.raises(EngineError) as caught:
        open_client(settings)
    assert "tcp://127.0.0.1:1" in str(caught.value)
    with pytest.raises(pydantic.ValidationError):
        DockerProviderSettings(tlsCa=str(tls.ca))


class _RecordingFeed(ServiceFeed):
    """Records each wait of the watch loop; asks it to stop after ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.limit = limit

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return len(self.waits) >= self.limit


def test_engine_refusing_every_listing_is_retried_with_growing_waits(monkeypatch):
    provider = DockerProvider(
        "provider.docker", DockerProviderSettings(reconnectMaxInterval="2s")
    )

    def refuse(feed: ServiceFeed) -> None:
        raise EngineError("listing Swarm services: the engine answered 503")

    # The engine answers (connect succeeds) but refuses the listing every time.
    monkeypatch.setattr(provider, "_connect", lambda: None)
    monkeypatch.setattr(provider, "_follow", refuse)
    feed = _RecordingFeed(limit=6)
    provider.watch(feed)
    assert feed.waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


# -- against the engine ---------------------------------------------------------------


def test_labelled_container_deploys_with_an_ip_and_undeploys_when_stopped(
    tmp_path, cluster_factory, docker_host, docker_objects
):
    config = _config(tmp_path, docker_host, docker_objects)
    # The core asks the provider to confirm entries older than a second.
    _set_core(config, serviceMaxLastUpdated="1s")
    cluster = cluster_factory(config)
    provider = _start(cluster)
    port = free_port()
    bare = docker_objects.run("bare", docker_objects.labels())
    web = docker_objects.run(
        "web",
        docker_objects.publication("web.example.test", port),
        ["httpd", "-f", "-p", str(port)],
    )

    entry = cluster.api.wait_state(web.name, "deployed", timeout=10)
    assert entry["service"]["provider"] == "provider.docker"
    assert entry["service"]["dns_names"] == ["web.example.test"]
    assert entry["service"]["tls"] is False
    assert _targets(entry) == [("127.0.0.1", port, 1)]
    assert entry["service"]["public_ip"] == FIRST_IP
    assert _allocations(tmp_path) == {web.name: FIRST_IP}
    # The target is the container's own httpd, on the host network.
    wait_until(lambda: _http_answers(port), 10, what="httpd in the container")
    assert cluster.api.entry(bare.name) is None
    # A refresh is answered with the current definition: nothing changes.
    wait_until(lambda: "REFRESHED provider=provider.docker" in provider.output(), 10)
    assert cluster.api.entry(web.name)["state"] == "deployed"

    web.stop(timeout=0)
    entry = cluster.api.wait_state(web.name, "undeployed", timeout=10)
    assert entry["expected_state"] == "undeployed"
    assert entry["service"]["public_ip"] is None
    assert _allocations(tmp_path) == {}
    assert cluster.api.entry(bare.name) is None


def _http_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
    except urllib.error.HTTPError:
        return True  # any HTTP answer is the container's httpd answering
    except OSError:
        return False
    return True


def test_container_health_decides_whether_it_is_a_target(
    tmp_path, cluster_factory, docker_host, docker_objects
):
    cluster = cluster_factory(_config(tmp_path, docker_host, docker_objects))
    _start(cluster)
    port = free_port()
    web = docker_objects.run(
        "health",
        docker_objects.publication("health.test", port),
        healthcheck={
            "test": ["CMD", "test", "-f", "/tmp/ok"],
            "interval": 200_000_000,
            "retries": 1,
        },
    )

    # Published from the start, but no target until the health check passes.
    cluster.api.wait_entry(web.name, _deployed_with([]), 10)
    web.exec_run(["touch", "/tmp/ok"])
    cluster.api.wait_entry(web.name, _deployed_with([("127.0.0.1", port, 1)]), 10)
    web.exec_run(["rm", "/tmp/ok"])
    entry = cluster.api.wait_entry(web.name, _deployed_with([]), 10)
    assert entry["service"]["public_ip"] == FIRST_IP


def test_bad_labels_are_logged_once_and_others_are_unaffected(
    tmp_path, cluster_factory, docker_host, docker_objects
):
    cluster = cluster_factory(
        _config(tmp_path, docker_host, docker_objects, pollInterval="300ms")
    )
    provider = _start(cluster)
    bad = {
        "port-word": docker_objects.publication("p.test", "http"),
        "port-big": docker_objects.publication("p.test", 70000),
        "host-bad": docker_objects.publication("ok.test,bad_name!", 80),
        "host-empty": docker_objects.publication(",", 80),
        "ssl-bad": docker_objects.publication(
            "s.test", 80, **{"interlook.ssl": "maybe"}
        ),
    }
    containers = {
        base: docker_objects.run(base, labels) for base, labels in bad.items()
    }
    good = docker_objects.run(
        "good",
        docker_objects.publication("good.test", 8443, **{"interlook.ssl": "true"}),
    )

    entry = cluster.api.wait_state(good.name, "deployed", timeout=10)
    assert entry["service"]["tls"] is True
    # Several full snapshots later, each bad definition is still reported once.
    wait_until(
        lambda: provider.output().count("SNAPSHOT provider=provider.docker") >= 4,
        10,
        what="three more snapshots",
    )
    lines = [line for line in provider.output().splitlines() if "BAD_LABELS" in line]
    expected_label = {
        "port-word": "interlook.port",
        "port-big": "interlook.port",
        "host-bad": "interlook.hosts",
        "host-empty": "interlook.hosts",
        "ssl-bad": "interlook.ssl",
    }
    for base, container in containers.items():
        mine = [line for line in lines if f"container={container.name} " in line]
        assert len(mine) == 1, (base, lines)
        assert f"label={expected_label[base]} " in mine[0]
        assert cluster.api.entry(container.name) is None
    assert len(lines) == len(bad)
    assert set(cluster.api.services()) == {good.name}


def test_swarm_service_follows_scale_label_update_and_removal(
    tmp_path, cluster_factory, docker_host, docker_objects, docker_client
):
    swarm = docker_client.info().get("Swarm") or {}
    assert swarm.get("ControlAvailable"), "the test engine must be a swarm manager"
    # mode auto: the engine is a manager, so the provider reads Swarm services.
    cluster = cluster_factory(
        _config(tmp_path, docker_host, docker_objects, mode="auto")
    )
    provider = _start(cluster)
    assert "mode=swarm" in provider.output()
    port = free_port()
    labels = docker_objects.publication("svc.example.test", port)
    service = docker_objects.service("svc", labels)
    name = service.name

    entry = cluster.api.wait_entry(name, _deployed_with([("127.0.0.1", port, 1)]), 20)
    assert entry["service"]["dns_names"] == ["svc.example.test"]
    assert entry["service"]["public_ip"] == FIRST_IP

    service.reload()
    service.scale(3)
    cluster.api.wait_entry(name, _deployed_with([("127.0.0.1", port, 3)]), 30)

    service.reload()
    service.update(labels=docker_objects.publication("svc2.example.test", port))
    entry = cluster.api.wait_entry(
        name,
        lambda e: (
            e["service"]["dns_names"] == ["svc2.example.test"]
            and e["state"] == "deployed"
            and not e["work_in_progress"]
        ),
        30,
    )
    assert _targets(entry) == [("127.0.0.1", port, 3)]
    assert entry["service"]["public_ip"] == FIRST_IP
    # The new definition ran the steps again: ipam.file saw each definition.
    ipam_log = next(
        p for p in cluster.processes if p.args[:2] == ["ext", "ipam.file"]
    ).output()
    deploys = re.findall(
        rf"STEP_DONE service={re.escape(name)} step=ipam.file action=deploy", ipam_log
    )
    assert len(deploys) >= 3

    service.remove()
    entry = cluster.api.wait_state(name, "undeployed", timeout=20)
    assert _allocations(tmp_path) == {}


def test_provider_restart_undeploys_what_went_away_meanwhile(
    tmp_path, cluster_factory, docker_host, docker_objects
):
    cluster = cluster_factory(_config(tmp_path, docker_host, docker_objects))
    provider = _start(cluster)
    gone = docker_objects.run(
        "gone", docker_objects.publication("gone.test", free_port())
    )
    kept = docker_objects.run(
        "kept", docker_objects.publication("kept.test", free_port())
    )
    cluster.api.wait_state(gone.name, "deployed", timeout=10)
    cluster.api.wait_state(kept.name, "deployed", timeout=10)

    provider.stop()
    gone.remove(force=True)
    restarted = cluster.ext("provider.docker")

    # pollInterval is 60s: only the snapshot sent at start can report it gone.
    cluster.api.wait_state(gone.name, "undeployed", timeout=15)
    assert cluster.api.entry(kept.name)["state"] == "deployed"
    assert _allocations(tmp_path) == {
        kept.name: cluster.api.entry(kept.name)["service"]["public_ip"]
    }
    assert "ENGINE_UP" in restarted.output()


def test_unreachable_engine_undeploys_nothing_and_events_resume(
    tmp_path, cluster_factory, docker_host, docker_objects, short_dir
):
    proxy = EngineProxy(docker_host, str(short_dir / "engine.sock"))
    proxy.start()
    try:
        cluster = cluster_factory(
            _config(tmp_path, proxy.address, docker_objects, pollInterval="500ms")
        )
        provider = _start(cluster)
        kept = docker_objects.run(
            "kept", docker_objects.publication("kept.test", free_port())
        )
        gone = docker_objects.run(
            "gone", docker_objects.publication("gone.test", free_port())
        )
        cluster.api.wait_state(kept.name, "deployed", timeout=10)
        cluster.api.wait_state(gone.name, "deployed", timeout=10)

        proxy.stop()
        wait_until(lambda: "ENGINE_DOWN" in provider.output(), 10, what="ENGINE_DOWN")
        # Several reconnection attempts, and several poll intervals, go by.
        wait_until(
            lambda: provider.output().count("ENGINE_STILL_DOWN") >= 4,
            15,
            what="four more reconnection attempts",
        )
        gone.remove(force=True)
        for container in (kept, gone):
            entry = cluster.api.entry(container.name)
            assert (
                entry["state"] == "deployed" and entry["expected_state"] == "deployed"
            )
        assert provider.output().count("ENGINE_DOWN") == 1

        proxy.start()
        wait_until(
            lambda: provider.output().count("ENGINE_UP") == 2,
            15,
            what="ENGINE_UP again",
        )
        # The snapshot after reconnecting reports what went away meanwhile ...
        cluster.api.wait_state(gone.name, "undeployed", timeout=10)
        assert cluster.api.entry(kept.name)["state"] == "deployed"
        # ... and events flow again.
        late = docker_objects.run(
            "late", docker_objects.publication("late.test", free_port())
        )
        cluster.api.wait_state(late.name, "deployed", timeout=10)
        assert provider.output().count("ENGINE_DOWN") == 1
    finally:
        proxy.stop()


def test_tls_endpoint_reaches_the_engine(
    tmp_path, cluster_factory, docker_host, docker_objects
):
    tls = make_tls_files(tmp_path / "tls")
    proxy = EngineProxy(
        docker_host, ("127.0.0.1", free_port()), tls=tls.server_context()
    )
    proxy.start()
    try:
        cluster = cluster_factory(
            _config(
                tmp_path,
                proxy.address,
                docker_objects,
                tlsCa=str(tls.ca),
                tlsCert=str(tls.client_cert),
                tlsKey=str(tls.client_key),
            )
        )
        _start(cluster)
        web = docker_objects.run(
            "tls", docker_objects.publication("tls.test", free_port())
        )
        cluster.api.wait_state(web.name, "deployed", timeout=10)

        # The same settings, in process: the SDK client holds our files.
        settings = DockerProviderSettings(
            endpoint=proxy.address,
            tlsCa=str(tls.ca),
            tlsCert=str(tls.client_cert),
            tlsKey=str(tls.client_key),
        )
        client = open_client(settings)
        try:
            assert client.api.base_url.startswith("https://127.0.0.1:")
            assert client.api.cert == (str(tls.client_cert), str(tls.client_key))
            assert client.api.verify == str(tls.ca)
            assert client.ping()
        finally:
            client.close()

        # A client that does not trust the engine's CA gets a clear error, no listing.
        other = make_tls_files(tmp_path / "other", name="other")
        untrusted = DockerProviderSettings(
            endpoint=proxy.address,
            tlsCa=str(other.ca),
            tlsCert=str(tls.client_cert),
            tlsKey=str(tls.client_key),
            apiTimeout="3s",
        )
        with pytest.raises(EngineError, match="SSL|certificate"):
            open_client(untrusted)
        assert isinstance(DockerProvider("provider.docker", untrusted), DockerProvider)
    finally:
        proxy.stop()
