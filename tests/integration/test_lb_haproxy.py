"""lb.haproxy against a real HAProxy in master-worker mode."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pydantic
import pytest

from interlook_core.errors import StepError
from interlook_core.service import Service, Target
from interlook_ext.lb_haproxy import HaproxyLoadBalancer, HaproxySettings
from tests.integration import servers
from tests.integration.servers import Haproxy, HttpTarget, http_get
from tests.support import free_port, wait_until

# The server fixtures, made visible to this module's tests.
haproxy = servers.haproxy
http_targets = servers.http_targets


@pytest.fixture
def make_lb(tmp_path: Path, haproxy: Haproxy):
    made: list[HaproxyLoadBalancer] = []
    port = free_port()

    def make(**overrides) -> HaproxyLoadBalancer:
        settings = {**haproxy.settings(port), **overrides}
        model = HaproxySettings.model_validate(settings, context={"base_dir": tmp_path})
        lb = HaproxyLoadBalancer("lb.haproxy", model)
        lb.port = settings["httpPort"]
        lb.tls_port = settings["httpsPort"]
        made.append(lb)
        return lb

    yield make
    for lb in made:
        lb.close()


def _service(
    name: str, ip: str, *targets: HttpTarget | Target, tls: bool = False
) -> Service:
    return Service(
        name=name,
        provider="provider.file",
        targets=tuple(
            t if isinstance(t, Target) else Target("127.0.0.1", t.port) for t in targets
        ),
        tls=tls,
        dns_names=(f"{name}.example.test",),
        public_ip=ip,
    )


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_deploy_change_and_undeploy_move_traffic(
    make_lb, haproxy: Haproxy, http_targets
):
    lb = make_lb()
    a, b = http_targets["a"], http_targets["b"]

    lb.deploy(_service("web", "127.0.1.1", a))
    assert http_get("127.0.1.1", lb.port) == "a"
    assert "frontend il-fe-web" in haproxy.ours.read_text()

    lb.deploy(_service("web", "127.0.1.1", b))
    assert {http_get("127.0.1.1", lb.port) for _ in range(4)} == {"b"}

    reloads = haproxy.reloads()
    lb.deploy(_service("web", "127.0.1.1", b))
    assert haproxy.reloads() == reloads, "an unchanged definition needs no reload"

    lb.undeploy(_service("web", "127.0.1.1", b))
    assert _refused("127.0.1.1", lb.port)
    assert "il-fe-web" not in haproxy.ours.read_text()
    lb.undeploy(_service("web", "127.0.1.1", b))


def test_tls_service_is_passed_through_on_the_https_port(make_lb, http_targets):
    lb = make_lb()
    lb.deploy(_service("secure", "127.0.1.2", http_targets["a"], tls=True))
    # TCP passthrough: the bytes reach the target untouched (plain HTTP here).
    assert http_get("127.0.1.2", lb.tls_port) == "a"
    assert _refused("127.0.1.2", lb.port)


MALICIOUS = [
    "web\n    bind 127.0.0.1:1",
    "web bind",
    "web#comment",
    "w" * 300,
    "web\n",
]


@pytest.mark.parametrize(
    "bad", MALICIOUS, ids=["newline", "space", "hash", "300-chars", "final-newline"]
)
@pytest.mark.parametrize("field", ["name", "dns_name", "host"])
def test_malicious_values_never_reach_the_file(
    make_lb, haproxy: Haproxy, http_targets, bad, field
):
    lb = make_lb()
    lb.deploy(_service("good", "127.0.1.3", http_targets["a"]))
    before, reloads = haproxy.ours.read_text(), haproxy.reloads()

    service = _service("evil", "127.0.1.4", http_targets["b"])
    if field == "name":
        service = Service(**{**_fields(service), "name": bad})
    elif field == "dns_name":
        service = Service(**{**_fields(service), "dns_names": (bad,)})
    else:
        service = Service(**{**_fields(service), "targets": (Target(bad, 80),)})
    with pytest.raises(StepError) as failure:
        lb.deploy(service)

    message = str(failure.value)
    assert "not written to HAProxy's file" in message
    assert "\n" not in message
    assert len(message) < 300
    assert haproxy.ours.read_text() == before
    assert haproxy.reloads() == reloads
    assert http_get("127.0.1.3", lb.port) == "a"


@pytest.mark.parametrize("field", ["host", "public_ip"])
def test_an_ipv6_zone_never_reaches_the_file(
    make_lb, haproxy: Haproxy, http_targets, field
):
    lb = make_lb()
    before, reloads = haproxy.ours.read_text(), haproxy.reloads()
    # Python's ipaddress takes any text after "%" as the zone, a newline too.
    zoned = "fe80::1%x]:80\n    server t9 127.0.0.1:1 #"
    service = _service("zoned", "127.0.1.62", http_targets["b"])
    if field == "host":
        service = Service(**{**_fields(service), "targets": (Target(zoned, 80),)})
    else:
        service = Service(**{**_fields(service), "public_ip": zoned})
    with pytest.raises(StepError, match="not written to HAProxy's file.*IPv6 zone"):
        lb.deploy(service)
    assert haproxy.ours.read_text() == before
    assert haproxy.reloads() == reloads


def _fields(service: Service) -> dict:
    return {name: getattr(service, name) for name in Service.__slots__}


def test_a_file_haproxy_refuses_is_not_kept_and_others_still_serve(
    make_lb, haproxy: Haproxy, http_targets
):
    lb = make_lb()
    lb.deploy(_service("good", "127.0.1.5", http_targets["a"]))
    before = haproxy.ours.read_text()

    # Passes our checks (a valid host name) but HAProxy cannot resolve it.
    bad = _service("unresolvable", "127.0.1.6", Target("no-such-host.invalid", 80))
    with pytest.raises(
        StepError, match="HAProxy refused the configuration.*no-such-host"
    ):
        lb.deploy(bad)
    assert haproxy.ours.read_text() == before
    assert http_get("127.0.1.5", lb.port) == "a"

    # Passes 'haproxy -c' but the address is taken: refused at load, file restored.
    with socket.socket() as squatter:
        squatter.bind(("127.0.1.7", lb.port))
        squatter.listen()
        with pytest.raises(
            StepError, match="refused the new configuration when loading"
        ):
            lb.deploy(_service("squatted", "127.0.1.7", http_targets["b"]))
    assert haproxy.ours.read_text() == before
    assert http_get("127.0.1.5", lb.port) == "a"
    lb.deploy(_service("later", "127.0.1.8", http_targets["b"]))
    assert http_get("127.0.1.8", lb.port) == "b"


def test_same_address_and_port_twice_is_refused(make_lb, http_targets):
    lb = make_lb()
    lb.deploy(_service("first", "127.0.1.9", http_targets["a"]))
    with pytest.raises(StepError, match="already the frontend of service 'first'"):
        lb.deploy(_service("second", "127.0.1.9", http_targets["b"]))


def test_many_changes_at_once_share_few_reloads(
    make_lb, haproxy: Haproxy, http_targets
):
    lb = make_lb()
    reloads_before = haproxy.reloads()
    served: dict[str, str] = {}
    errors: dict[str, BaseException] = {}

    def deploy(index: int) -> None:
        name, ip = f"svc{index}", f"127.0.1.{20 + index}"
        # One of them is refused by 'haproxy -c'; it must fail alone.
        target = Target("no-such-host.invalid", 80) if index == 5 else http_targets["a"]
        try:
            lb.deploy(_service(name, ip, target))
            # The reply comes after the reload that holds the change.
            served[name] = http_get(ip, lb.port)
        except BaseException as exc:  # reported by the assertions below
            errors[name] = exc

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert list(errors) == ["svc5"], errors
    assert "no-such-host.invalid" in str(errors["svc5"])
    assert served == {f"svc{i}": "a" for i in range(12) if i != 5}
    reloads = haproxy.reloads() - reloads_before
    assert 1 <= reloads <= 4, f"{reloads} reloads for 12 changes"


def test_haproxy_down_fails_the_step_and_a_retry_loads_it(
    make_lb, haproxy: Haproxy, http_targets
):
    lb = make_lb()
    lb.deploy(_service("one", "127.0.1.40", http_targets["a"]))
    haproxy.kill_worker()

    with pytest.raises(StepError, match="cannot reach HAProxy's master socket"):
        lb.deploy(_service("two", "127.0.1.41", http_targets["b"]))
    assert "il-fe-two" in haproxy.ours.read_text(), (
        "the checked file stays for the next start"
    )

    haproxy.start()
    lb.deploy(_service("two", "127.0.1.41", http_targets["b"]))
    wait_until(lambda: http_get("127.0.1.41", lb.port) == "b", 10, what="service two")
    assert http_get("127.0.1.40", lb.port) == "a"


@pytest.mark.parametrize("blocked", ["binary", "folder"])
def test_a_check_that_cannot_run_fails_with_a_clear_message(
    make_lb, tmp_path: Path, http_targets, blocked
):
    if blocked == "binary":
        binary = tmp_path / "not-executable"
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o644)
        lb = make_lb(haproxyBinary=str(binary))
        expected = "cannot run haproxyBinary"
    else:
        plain_file = tmp_path / "plain-file"
        plain_file.write_text("")
        lb = make_lb(configFile=str(plain_file / "interlook.cfg"))
        expected = "cannot write a file to check in"
    with pytest.raises(StepError, match=expected):
        lb.deploy(_service("web", "127.0.1.60", http_targets["a"]))


def test_a_config_file_that_cannot_be_replaced_leaves_the_state_file_as_it_was(
    make_lb, tmp_path: Path, http_targets
):
    # A folder where configFile should be: the check passes, the state file
    # is written, then replacing configFile fails.
    blocked = tmp_path / "blocked.cfg"
    blocked.mkdir()
    state = tmp_path / "lb-state.json"
    lb = make_lb(configFile=str(blocked), stateFile=str(state))
    with pytest.raises(StepError, match="cannot write"):
        lb.deploy(_service("web", "127.0.1.61", http_targets["a"]))
    recorded = json.loads(state.read_text())["services"] if state.exists() else []
    assert recorded == [], "a service HAProxy never got must not be reloaded at start"


def test_state_file_rebuilds_the_file_in_a_new_process(
    make_lb, haproxy: Haproxy, http_targets
):
    lb = make_lb()
    lb.deploy(_service("kept", "127.0.1.50", http_targets["a"]))
    lb.close()
    haproxy.ours.write_text("# damaged by hand\n")

    again = make_lb(httpPort=lb.port)
    again.deploy(_service("other", "127.0.1.51", http_targets["b"]))
    text = haproxy.ours.read_text()
    assert "il-fe-kept" in text and "il-fe-other" in text
    assert http_get("127.0.1.50", lb.port) == "a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "udp"}, "'http' or 'tcp'"),
        ({"mainConfigFile": "/nonexistent.cfg"}, "/nonexistent.cfg is not a file"),
        ({"httpPort": 0}, "greater than or equal to 1"),
        ({"timeout": 15}, "not a duration; write it with a unit"),
        ({"configFile": None}, "configFile"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_settings_are_named(tmp_path, change, message):
    main = tmp_path / "haproxy.cfg"
    main.write_text("global\n", encoding="utf-8")
    settings = {
        "configFile": "interlook.cfg",
        "mainConfigFile": str(main),
        "masterSocket": "/run/master.sock",
        **change,
    }
    with pytest.raises(pydantic.ValidationError, match=message):
        HaproxySettings.model_validate(settings, context={"base_dir": tmp_path})
