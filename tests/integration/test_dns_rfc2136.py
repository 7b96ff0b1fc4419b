"""dns.rfc2136 against a real BIND: records, ownership marks, conflicts, failures."""

from __future__ import annotations

import threading
from pathlib import Path

import pydantic
import pytest

from interlook_core.errors import StepError
from interlook_core.service import Service
from interlook_ext.dns_rfc2136 import Rfc2136Dns, Rfc2136Settings
from tests.integration import servers
from tests.integration.servers import Named, free_udp_and_tcp_port

# The server fixtures, made visible to this module's tests.
named = servers.named

MARK = '"interlook service={}"'


def _dns(tmp_path: Path, settings: dict) -> Rfc2136Dns:
    model = Rfc2136Settings.model_validate(settings, context={"base_dir": tmp_path})
    return Rfc2136Dns("dns.rfc2136", model)


def _service(name: str, ip: str | None, *names: str) -> Service:
    return Service(name=name, provider="provider.file", dns_names=names, public_ip=ip)


def test_deploy_adds_marked_records_and_repeating_changes_nothing(
    tmp_path, named: Named
):
    dns = _dns(tmp_path, named.settings())
    web = _service("web", "127.0.1.1", "web.example.test", "www.example.test")

    dns.deploy(web)
    dns.deploy(web)

    for name in ("web.example.test", "www.example.test"):
        assert named.dig(name) == ["127.0.1.1"]
        assert named.records(name, "TXT") == [MARK.format("web")]
    assert dns.owned_names("web") == ["web.example.test", "www.example.test"]


def test_changed_ip_and_names_replace_exactly_what_changed(tmp_path, named: Named):
    dns = _dns(tmp_path, named.settings())
    dns.deploy(_service("web", "127.0.1.1", "a.example.test", "b.example.test"))

    dns.deploy(_service("web", "127.0.1.2", "b.example.test", "c.example.test"))

    assert named.records("a.example.test", "A") == []
    assert named.records("a.example.test", "TXT") == []
    assert named.records("b.example.test", "A") == ["127.0.1.2"]
    assert named.records("c.example.test", "A") == ["127.0.1.2"]
    assert named.records("c.example.test", "TXT") == [MARK.format("web")]
    assert dns.owned_names("web") == ["b.example.test", "c.example.test"]

    # A new process knows the names from the state file, not from the request.
    again = _dns(tmp_path, named.settings())
    again.undeploy(_service("web", "127.0.1.2"))
    for name in ("b.example.test", "c.example.test"):
        assert named.records(name, "A") == []
        assert named.records(name, "TXT") == []
    assert again.owned_names("web") == []
    again.undeploy(_service("web", "127.0.1.2"))


def test_ipv6_public_ip_gets_aaaa_and_switching_back_drops_it(tmp_path, named: Named):
    dns = _dns(tmp_path, named.settings())
    dns.deploy(_service("six", "fd00::5", "six.example.test"))
    assert named.records("six.example.test", "AAAA") == ["fd00::5"]

    dns.deploy(_service("six", "127.0.1.6", "six.example.test"))
    assert named.records("six.example.test", "AAAA") == []
    assert named.records("six.example.test", "A") == ["127.0.1.6"]


def test_records_not_created_by_interlook_are_conflicts_and_stay(
    tmp_path, named: Named
):
    dns = _dns(tmp_path, named.settings())
    with pytest.raises(
        StepError, match=r"taken\.example\.test already has A 192\.0\.2\.7"
    ):
        dns.deploy(_service("web", "127.0.1.1", "taken.example.test"))
    assert named.records("taken.example.test", "A") == ["192.0.2.7"]

    dns.undeploy(_service("web", "127.0.1.1", "taken.example.test"))
    assert named.records("taken.example.test", "A") == ["192.0.2.7"]

    dns.deploy(_service("api", "127.0.1.2", "api.example.test"))
    with pytest.raises(StepError, match=r"belongs to service 'api'"):
        dns.deploy(_service("web", "127.0.1.1", "api.example.test"))
    dns.undeploy(_service("web", "127.0.1.1", "api.example.test"))
    assert named.records("api.example.test", "A") == ["127.0.1.2"]


def test_two_services_claiming_one_name_at_once_one_wins(tmp_path, named: Named):
    dns = _dns(tmp_path, named.settings())
    errors: dict[str, str] = {}

    def claim(service: str, ip: str) -> None:
        try:
            dns.deploy(_service(service, ip, "race.example.test"))
        except StepError as exc:
            errors[service] = str(exc)

    threads = [
        threading.Thread(target=claim, args=(f"s{i}", f"127.0.1.{10 + i}"))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(errors) == 3, errors
    (winner,) = {f"s{i}" for i in range(4)} - set(errors)
    assert named.records("race.example.test", "TXT") == [MARK.format(winner)]
    assert len(named.records("race.example.test", "A")) == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("web.elsewhere.test", "outside the zone 'example.test'"),
        ("bad_name.example.test", "not a valid host name"),
        ("with space.example.test", "not a valid host name"),
        ("evil\n.example.test", "not a valid host name"),
        ("final-newline.example.test\n", "not a valid host name"),
        ("with#hash.example.test", "not a valid host name"),
        ("w" * 300 + ".example.test", "not a valid host name"),
    ],
)
def test_bad_names_fail_clearly_and_change_nothing(
    tmp_path, named: Named, name, message
):
    dns = _dns(tmp_path, named.settings())
    with pytest.raises(StepError, match=message):
        dns.deploy(_service("web", "127.0.1.1", "ok.example.test", name))
    assert named.records("ok.example.test", "A") == []


def test_wrong_secret_is_reported_as_a_refused_key(tmp_path, named: Named):
    settings = named.settings()
    del settings["tsigSecretFile"]
    settings["tsigSecret"] = "c2VjcmV0IHRoYXQgaXMgd3Jvbmc="
    dns = _dns(tmp_path, settings)
    with pytest.raises(StepError, match=r"TSIG key 'interlook-test'.*\(BADSIG\)"):
        dns.deploy(_service("web", "127.0.1.1", "web.example.test"))

    settings["tsigKeyName"] = "unknown-key"
    with pytest.raises(StepError, match=r"does not know the TSIG key 'unknown-key'"):
        _dns(tmp_path, settings).deploy(
            _service("web", "127.0.1.1", "web.example.test")
        )


def test_unreachable_server_and_missing_ip_fail_clearly(tmp_path, named: Named):
    settings = {**named.settings(), "port": free_udp_and_tcp_port()}
    with pytest.raises(StepError, match=r"cannot reach DNS server 127\.0\.0\.1:\d+"):
        _dns(tmp_path, settings).deploy(
            _service("web", "127.0.1.1", "web.example.test")
        )
    with pytest.raises(StepError, match="no public_ip yet; put an ipam step before"):
        _dns(tmp_path, named.settings()).deploy(
            _service("web", None, "web.example.test")
        )
    with pytest.raises(StepError, match="has an IPv6 zone"):
        _dns(tmp_path, named.settings()).deploy(
            _service("web", "fd00::5%eth0", "web.example.test")
        )
    assert named.records("web.example.test", "TXT") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zone": "bad zone"}, "zone 'bad zone' is not a valid DNS name"),
        ({"tsigSecret": "x"}, "give tsigSecret or tsigSecretFile, not both"),
        ({"tsigKeyName": None}, "tsigKeyName is needed"),
        ({"ttl": -1}, "greater than or equal to 0"),
        ({"tsigAlgorithm": "md4"}, "hmac-sha256"),
        ({"server": "not a host"}, "not an IP address or host name"),
        ({"tsigSecretFile": "/nonexistent/key"}, "cannot read /nonexistent/key"),
        ({"timeout": 5}, "not a duration; write it with a unit"),
    ],
)
def test_bad_settings_are_named(tmp_path, named: Named, change, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        Rfc2136Settings.model_validate({**named.settings(), **change})
