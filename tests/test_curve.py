"""CurveZMQ: only listed keys connect, and only as the names they are allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
import zmq.auth

from interlook_core.security import generate_keys
from tests.support import free_port, wait_until, write_config


def _public_text(path: Path) -> str:
    return zmq.auth.load_certificate(str(path))[0].decode("ascii")


def _keys(tmp_path: Path, *names: str) -> dict[str, tuple[Path, Path]]:
    return {name: generate_keys(name, tmp_path / "keys") for name in names}


def _curve_config(tmp_path: Path, keys, authorized: dict, client: str) -> Path:
    (tmp_path / "authorized.yml").write_text(yaml.safe_dump(authorized))
    (tmp_path / "services.yml").write_text(
        yaml.safe_dump(
            {
                "services": [
                    {"name": "web", "targets": [{"host": "10.0.0.1", "port": 80}]}
                ]
            }
        )
    )
    return write_config(
        tmp_path,
        "provider.file,noop.a",
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "curve": {
                "serverPublicKey": str(keys["core"][0]),
                "secretKeyFile": str(keys[client][1]),
            },
        },
        endpoint=f"tcp://127.0.0.1:{free_port()}",
        curve={
            "secretKeyFile": str(keys["core"][1]),
            "authorizedKeys": "authorized.yml",
        },
    )


def test_listed_keys_work_and_deploy(tmp_path, cluster_factory):
    keys = _keys(tmp_path, "core", "ext")
    ext_key = _public_text(keys["ext"][0])
    config = _curve_config(
        tmp_path, keys, {ext_key: ["provider.file", "noop.a"]}, "ext"
    )
    cluster = cluster_factory(config)
    core = cluster.core()
    cluster.ext("provider.file")
    cluster.ext("noop.a")
    cluster.api.wait_state("web", "deployed")
    assert "curve=on" in core.output()


def test_an_unknown_key_gets_nothing_done(tmp_path, cluster_factory):
    keys = _keys(tmp_path, "core", "ext", "stranger")
    ext_key = _public_text(keys["ext"][0])
    config = _curve_config(tmp_path, keys, {ext_key: "provider.file"}, "stranger")
    cluster = cluster_factory(config)
    core = cluster.core()
    cluster.ext("provider.file")
    wait_until(lambda: "DENIED" in core.output(), 10, what="the key to be denied")
    assert cluster.api.get("/extensions") == []
    assert cluster.api.services() == {}


def test_a_key_registers_only_as_its_names(tmp_path, cluster_factory):
    keys = _keys(tmp_path, "core", "ext")
    ext_key = _public_text(keys["ext"][0])
    config = _curve_config(tmp_path, keys, {ext_key: "noop.a"}, "ext")
    cluster = cluster_factory(config)
    core = cluster.core()
    cluster.ext("provider.file")
    cluster.ext("noop.a")
    cluster.api.wait_extensions({"noop.a"})
    wait_until(lambda: "may not register as 'provider.file'" in core.output(), 10)
    assert [e["name"] for e in cluster.api.get("/extensions")] == ["noop.a"]


def test_a_plaintext_bind_beyond_loopback_is_refused(tmp_path):
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "services.yml"}}},
        endpoint="tcp://0.0.0.0:5999",
    )
    result = subprocess.run(
        [sys.executable, "-m", "interlook_core.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "without encryption" in result.stderr and "allowInsecureBind" in result.stderr
    )


def test_an_accepted_plaintext_bind_logs_the_risk(tmp_path, cluster_factory):
    config = write_config(
        tmp_path,
        "provider.file,noop.a",
        {"provider": {"file": {"path": "services.yml"}}},
        endpoint=f"tcp://0.0.0.0:{free_port()}",
        allowInsecureBind=True,
    )
    cluster = cluster_factory(config)
    core = cluster.core()
    assert "INSECURE endpoint=tcp://0.0.0.0" in core.output()


def test_keys_generate_writes_a_usable_pair(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlook_core.cli",
            "keys",
            "generate",
            "lb-host2",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    public, secret = zmq.auth.load_certificate(str(tmp_path / "lb-host2.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert (tmp_path / "lb-host2.key_secret").stat().st_mode & 0o077 == 0
    assert public.decode() in result.stdout
