"""ipam.file on its own: the pool, the file, idempotency."""

from __future__ import annotations

import json

import pytest

from interlook_core.errors import ConfigError, StepError
from interlook_core.service import service_from_wire
from interlook_ext.file_ipam import FileIpam, FileIpamSettings


def ipam(tmp_path, **settings):
    settings.setdefault("db_file", str(tmp_path / "ipam.json"))
    return FileIpam("ipam.file", FileIpamSettings(**settings))


def svc(name, public_ip=None):
    return service_from_wire(
        {"name": name, "provider": "provider.file", "public_ip": public_ip}
    )


def test_never_the_network_or_broadcast_address(tmp_path):
    pool = ipam(tmp_path, network_cidr="10.0.0.0/30")
    assert pool.deploy(svc("a")) == {"public_ip": "10.0.0.1"}
    assert pool.deploy(svc("b")) == {"public_ip": "10.0.0.2"}
    with pytest.raises(StepError, match="no free IP in the pool"):
        pool.deploy(svc("c"))


def test_the_same_service_gets_the_same_ip_and_a_freed_ip_is_reused(tmp_path):
    pool = ipam(tmp_path, network_cidr="10.0.0.0/29")
    first = pool.deploy(svc("a"))
    assert pool.deploy(svc("a")) == first
    pool.deploy(svc("b"))
    assert pool.undeploy(svc("a")) == {"public_ip": None}
    assert pool.undeploy(svc("a")) == {"public_ip": None}, "undeploy twice is harmless"
    assert pool.deploy(svc("c")) == first


def test_a_range_inside_the_network(tmp_path):
    pool = ipam(
        tmp_path, network_cidr="10.0.0.0/24", ip_start="10.0.0.10", ip_end="10.0.0.11"
    )
    assert [pool.deploy(svc(n))["public_ip"] for n in "ab"] == [
        "10.0.0.10",
        "10.0.0.11",
    ]
    with pytest.raises(StepError):
        pool.deploy(svc("c"))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"network_cidr": "10.0.0.0/33"}, "network_cidr"),
        ({"network_cidr": "10.0.0.0/24", "ip_start": "10.0.1.1"}, "not in 10.0.0.0/24"),
        (
            {
                "network_cidr": "10.0.0.0/24",
                "ip_start": "10.0.0.9",
                "ip_end": "10.0.0.8",
            },
            "empty",
        ),
    ],
)
def test_a_bad_pool_is_a_settings_error(tmp_path, settings, problem):
    with pytest.raises(ValueError, match=problem):
        FileIpamSettings(**settings)


def test_allocations_survive_a_new_process_and_the_file_is_json(tmp_path):
    ipam(tmp_path, network_cidr="10.0.0.0/24").deploy(svc("a"))
    data = json.loads((tmp_path / "ipam.json").read_text())
    assert data == {"version": 1, "allocations": {"a": "10.0.0.1"}}
    assert ipam(tmp_path, network_cidr="10.0.0.0/24").deploy(svc("b")) == {
        "public_ip": "10.0.0.2"
    }
    assert not list(tmp_path.glob(".ipam.json-*")), "no temporary file is left behind"


def test_after_a_lost_file_the_ip_the_core_remembers_is_kept(tmp_path):
    pool = ipam(tmp_path, network_cidr="10.0.0.0/24")
    assert pool.deploy(svc("a", public_ip="10.0.0.77")) == {"public_ip": "10.0.0.77"}


def test_a_corrupt_file_stops_the_extension_with_a_clear_message(tmp_path):
    (tmp_path / "ipam.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not an allocations file"):
        ipam(tmp_path, network_cidr="10.0.0.0/24")


def test_an_ipv6_pool(tmp_path):
    pool = ipam(tmp_path, network_cidr="fd00::/126")
    assert pool.deploy(svc("a")) == {"public_ip": "fd00::1"}


def test_two_processes_sharing_one_file_never_give_one_ip_twice(tmp_path):
    import multiprocessing

    def allocate(prefix: str) -> None:
        pool = ipam(tmp_path, network_cidr="10.0.0.0/24")
        for index in range(40):
            pool.deploy(svc(f"{prefix}{index}"))

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=allocate, args=(p,)) for p in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    allocations = json.loads((tmp_path / "ipam.json").read_text())["allocations"]
    assert len(allocations) == 80
    assert len(set(allocations.values())) == 80
