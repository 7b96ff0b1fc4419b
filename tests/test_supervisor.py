"""deploy/supervisord.conf, as shipped, runs the process group under supervisord.

The test points the file at its own config and run folder through the two
environment variables the file reads, so supervisord's control socket,
pid file and logs all live in the test's temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import Api, wait_until, write_config

CONF = Path(__file__).resolve().parent.parent / "deploy" / "supervisord.conf"
PROGRAMS = ("interlook:core", "interlook:provider-file", "interlook:ipam-file")


class Supervisor:
    """supervisord running deploy/supervisord.conf, and supervisorctl beside it."""

    def __init__(self, config: Path, run_dir: Path) -> None:
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "INTERLOOK_CONFIG": str(config),
            "INTERLOOK_RUN_DIR": str(run_dir),
        }
        self.run_dir = run_dir
        self._out = open(run_dir / "supervisord.out", "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(CONF)],
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(CONF), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout + result.stderr

    def states(self) -> dict[str, str]:
        states = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("interlook:"):
                states[parts[0]] = parts[1]
        return states

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).strip())

    def log(self, program: str) -> str:
        path = self.run_dir / f"{program.split(':')[1]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._out.close()


def _services(path: Path, names: list[str]) -> None:
    services = [
        {"name": n, "targets": [{"host": "10.0.0.3", "port": 80}]} for n in names
    ]
    path.write_text(yaml.safe_dump({"services": services}))


@pytest.fixture
def supervised(tmp_path: Path, request: pytest.FixtureRequest):
    _services(tmp_path / "services.yml", ["web", "api"])
    config = write_config(
        tmp_path,
        "provider.file,ipam.file",
        {
            "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
            "ipam": {
                "file": {"network_cidr": "10.70.0.0/24", "db_file": "var/ipam.json"}
            },
        },
        logLevel="INFO",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    supervisor = Supervisor(config, run_dir)
    supervisor.api = Api(yaml.safe_load(config.read_text())["core"]["listenPort"])
    supervisor.services_file = tmp_path / "services.yml"
    try:
        yield supervisor
    finally:
        supervisor.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            for name in ("supervisord.out", "supervisord.log"):
                print((run_dir / name).read_text(errors="replace")[-5000:])
            for program in PROGRAMS:
                print(f"--- {program} ---\n{supervisor.log(program)[-5000:]}")


def _all(supervisor: Supervisor, state: str) -> bool:
    states = supervisor.states()
    return set(states) == set(PROGRAMS) and set(states.values()) == {state}


def test_the_group_deploys_survives_a_kill_and_stops_cleanly(supervised: Supervisor):
    wait_until(
        lambda: _all(supervised, "RUNNING"), 30, 0.2, what="every program RUNNING"
    )
    for name in ("web", "api"):
        supervised.api.wait_state(name, "deployed", timeout=30)

    # SIGKILL an extension: supervisor starts a new one, and work goes on.
    killed = supervised.pid("interlook:ipam-file")
    os.kill(killed, signal.SIGKILL)
    wait_until(
        lambda: (
            supervised.states().get("interlook:ipam-file") == "RUNNING"
            and supervised.pid("interlook:ipam-file") not in (0, killed)
        ),
        30,
        0.2,
        what="ipam-file restarted by supervisor",
    )
    _services(supervised.services_file, ["web", "api", "late"])
    supervised.api.wait_state("late", "deployed", timeout=30)

    # stop all: every program exits on SIGTERM, none needs SIGKILL.
    output = supervised.ctl("stop", "all")
    assert "ERROR" not in output, output
    assert _all(supervised, "STOPPED"), supervised.states()
    assert "STOPPED core" in supervised.log("interlook:core")
    assert "STOPPED extension=ipam.file" in supervised.log("interlook:ipam-file")
    assert "STOPPED extension=provider.file" in supervised.log(
        "interlook:provider-file"
    )
    supervisord_log = (supervised.run_dir / "supervisord.log").read_text()
    assert "killing" not in supervisord_log.lower(), "a program needed SIGKILL to stop"
    for program in PROGRAMS:
        short = program.split(":")[1]
        assert f"stopped: {short} (exit status 0)" in supervisord_log, supervisord_log

    # The next start resumes: entries kept, new work done.
    _services(supervised.services_file, ["web", "api", "late", "after"])
    supervised.ctl("start", "all")
    wait_until(
        lambda: _all(supervised, "RUNNING"), 30, 0.2, what="every program RUNNING again"
    )
    supervised.api.wait_state("after", "deployed", timeout=30)
    services = supervised.api.services()
    assert {n: e["state"] for n, e in services.items()} == {
        n: "deployed" for n in ("web", "api", "late", "after")
    }
    ips = [e["service"]["public_ip"] for e in services.values()]
    assert None not in ips and len(set(ips)) == 4
