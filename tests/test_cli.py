"""The interlook command: version, help, status, and start order."""

from __future__ import annotations

import subprocess
import sys

import yaml

from interlook_core import __version__
from tests.support import write_config


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "interlook_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_and_help():
    assert run("--version").stdout.strip() == f"interlook {__version__}"
    help_text = run("--help").stdout
    for command in ("core", "ext", "up", "status", "check", "keys"):
        assert command in help_text


def test_an_unknown_extension_name_is_a_config_error(tmp_path):
    config = write_config(
        tmp_path, "provider.file,noop.a", {"provider": {"file": {"path": "s.yml"}}}
    )
    result = run("ext", "ipam.nothere", "-c", str(config))
    assert result.returncode == 2
    assert "no installed extension named 'ipam.nothere'" in result.stderr


def test_extensions_started_before_the_core_register_when_it_comes(
    tmp_path, cluster_factory
):
    (tmp_path / "services.yml").write_text(
        yaml.safe_dump(
            {
                "services": [
                    {
                        "name": "web",
                        "targets": [{"host": "10.0.0.5", "port": 80}],
                        "dns_names": ["web.example.test"],
                    }
                ]
            }
        )
    )
    config = write_config(
        tmp_path,
        "provider.file,ipam.file",
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {"file": {"network_cidr": "10.9.0.0/24"}},
        },
    )
    cluster = cluster_factory(config)
    cluster.ext("provider.file")
    cluster.ext("ipam.file")
    cluster.core()
    cluster.api.wait_state("web", "deployed")

    status = run("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "EXPECTED"]
    assert row.split() == ["web", "deployed", "deployed", "10.9.0.1", "web.example.test"]


def test_status_says_when_the_core_cannot_be_reached(tmp_path):
    config = write_config(
        tmp_path, "provider.file,noop.a", {"provider": {"file": {"path": "s.yml"}}}
    )
    result = run("status", "-c", str(config))
    assert result.returncode == 1
    assert "cannot read http://127.0.0.1:" in result.stderr


def test_status_says_when_the_api_is_off(tmp_path):
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "s.yml"}}},
        listenPort=0,
    )
    result = run("status", "-c", str(config))
    assert result.returncode == 1
    assert "the API is off" in result.stderr
