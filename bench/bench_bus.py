"""Benchmark of the bus: services through provider.file,noop.a,noop.b,noop.c.

``make bench`` runs this script. For each size (1,000 and 10,000 services;
``--quick`` for 1,000 only) it starts a real core and four real extension
processes on tcp loopback, writes a services file for provider.file, and
measures through the HTTP API, the processes' /proc files and the step
processes' own timestamps:

- services/s deployed and undeployed: from writing the services file (or
  emptying it) until /workflow counts every entry deployed (undeployed) and
  none in progress. This includes provider.file noticing the file (it polls
  every 100ms) and parsing it.
- step round trips/s: step requests handled by the three no-op steps,
  divided by the time from the first request's arrival at a step to the
  last one's.
- step latency p50/p99: for each service, the time from its request arriving
  at one step to its next request arriving at the next step (noop.a ->
  noop.b -> noop.c, and back for undeploy). That is one full round trip
  through the core: the extension replies, the core applies the result,
  commits it to the entries file and sends the next request. With every
  service started at once it includes the time a request waits in the
  core's queue for a free slot (each step takes 100 at a time).
- core peak RSS: VmHWM of the core process(es) of that size.
- core restart: SIGTERM with every entry stored, start again, time until
  /health answers and /workflow counts every entry.

It also measures a bare pyzmq ROUTER/DEALER pair (bench/raw_zmq.py) with
step-shaped msgpack bodies and 100 requests in flight, and prints the ratio.
The exit status is 0 whatever the figures; a missed target prints a line
starting ``TARGET MISSED:``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

# Sibling scripts, not a package: ``python bench/bench_bus.py`` finds them here.
from procstat import cpu_seconds, peak_rss_mb  # noqa: E402
from raw_zmq import RawResult, measure_raw  # noqa: E402

STEPS = ("noop.a", "noop.b", "noop.c")
WORKFLOW = "provider.file," + ",".join(STEPS)
POLL = 0.1
TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0
TARGET_RESTART_S = 1.0
TARGET_SIZE = 10_000

_METHOD_COMMON = """How measured:
  services/s: file written -> /workflow shows all deployed (undeployed), none
    in progress; polled every 100ms; includes provider.file polling and parsing.
  CPU %: user+system time from /proc/PID/stat over the phase (100 = one CPU);
    per step round trip: that CPU time / (3 x services); the core's includes
    its handling of the provider's snapshot and of the API polls.
  RSS: VmHWM of the core processes. Restart: SIGTERM, start, until /health
    and /workflow count every entry (process start, imports, entry load)."""
METHOD = _METHOD_COMMON + """
  step round trips/s and latency: arrival times recorded inside the three
    no-op steps (bench/noop_probe.py: interlook_ext.noop.Noop run by the
    ExtensionRunner). Latency = arrival at one step -> arrival of the same
    service at the next step: reply, core apply + commit + send, delivery.
    Every service starts at once, so it includes waiting in the core's queue
    for one of the step's 100 slots."""
METHOD_STOCK = _METHOD_COMMON + """
  steps: `interlook ext noop.X`; step round trips and latency not recorded."""


# -- processes ----------------------------------------------------------------


def _interlook_command() -> list[str]:
    script = Path(sys.executable).with_name("interlook")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "interlook_core.cli"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Proc:
    """One process of the run, its output in a log file, stopped by :meth:`stop`."""

    def __init__(self, label: str, command: list[str], directory: Path) -> None:
        self.label = label
        self.command = command
        self.log_path = directory / f"{label}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait (SIGKILL after ``timeout``); return the seconds it took."""
        started = time.monotonic()
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return time.monotonic() - started

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


# -- the HTTP API -------------------------------------------------------------


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.load(response)

    def try_get(self, path: str, timeout: float = 10.0) -> Any:
        try:
            return self.get(path, timeout)
        except (urllib.error.URLError, OSError, ValueError):
            return None


class BenchError(Exception):
    """The run could not go on; the message says what was being waited for."""


def wait_for(condition: Any, timeout: float, what: str, interval: float = POLL) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- one size -----------------------------------------------------------------


def write_services(path: Path, count: int) -> None:
    """Write ``count`` services for provider.file, replacing the file atomically."""
    lines = ["services:"] if count else ["services: []"]
    for i in range(count):
        name = f"svc-{i:05d}"
        lines.append(
            f"  - name: {name}\n"
            f"    targets: [{{host: {_address(i)}, port: 8080}}]\n"
            f"    dns_names: [{name}.bench.test]"
        )
    temporary = path.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _address(index: int) -> str:
    return f"10.1.{index // 250 % 250}.{index % 250 + 1}"


def write_config(directory: Path) -> tuple[Path, int]:
    port = _free_port()
    document = {
        "core": {
            "endpoint": f"tcp://127.0.0.1:{_free_port()}",
            "listenPort": port,
            "logLevel": "WARNING",
            "workflowSteps": WORKFLOW,
            "workflowEntriesFile": "./var/entries.db",
        },
        "provider": {"file": {"path": "services.yml", "pollInterval": "100ms"}},
        "noop": {step.split(".")[1]: {"capacity": 100} for step in STEPS},
    }
    path = directory / "interlook.yml"
    # JSON is YAML; it keeps this script free of a YAML writer.
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path, port


@dataclass
class SizeRun:
    """Figures of one size; seconds unless named otherwise."""

    services: int
    deploy_seconds: float = math.nan
    undeploy_seconds: float = math.nan
    first_step_after: float = math.nan
    step_rate_deploy: float = math.nan
    step_rate_undeploy: float = math.nan
    step_rate: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_samples: int = 0
    # phase ("deployed", "undeployed") -> process group -> CPU share (1.0 = one CPU)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    core_peak_rss_mb: float = math.nan
    core_stop_seconds: float = math.nan
    store_load_seconds: float = math.nan
    restart_health_seconds: float = math.nan
    restart_seconds: float = math.nan
    problems: list[str] = field(default_factory=list)

    @property
    def deployed_per_s(self) -> float:
        return self.services / self.deploy_seconds

    @property
    def undeployed_per_s(self) -> float:
        return self.services / self.undeploy_seconds


class Bench:
    """The processes of one size and the measurements on them."""

    def __init__(
        self, count: int, directory: Path, options: argparse.Namespace
    ) -> None:
        self.count = count
        self.directory = directory
        self.options = options
        self.config, port = write_config(directory)
        self.api = Api(port)
        self.services_file = directory / "services.yml"
        self.run = SizeRun(count)
        self.procs: list[Proc] = []
        self.core: Proc | None = None
        self._core_starts = 0
        self._stopped = False
        self.phase_started = 0.0

    def start_core(self) -> Proc:
        self._core_starts += 1
        command = [*_interlook_command(), "core", "-c", str(self.config)]
        if self.options.profile_core:
            out = Path(self.options.profile_core).resolve()
            out = out.with_name(
                f"{out.stem}-{self.count}-{self._core_starts}{out.suffix}"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable, "-m", "cProfile", "-o", str(out),
                "-m", "interlook_core.cli", "core", "-c", str(self.config),
            ]  # fmt: skip
        self.core = Proc(f"core-{self._core_starts}", command, self.directory)
        self.procs.append(self.core)
        return self.core

    def start_extensions(self) -> None:
        self.procs.append(
            Proc("provider.file", [*_interlook_command(), "ext", "provider.file", "-c",
                                   str(self.config)], self.directory)
        )  # fmt: skip
        for step in STEPS:
            if self.options.stock_noop:
                command = [*_interlook_command(), "ext", step, "-c", str(self.config)]
            else:
                command = [
                    sys.executable, str(BENCH_DIR / "noop_probe.py"), step,
                    "-c", str(self.config),
                    "--record", str(self.directory / f"{step}.rec"),
                ]  # fmt: skip
            self.procs.append(Proc(step, command, self.directory))

    def check_alive(self) -> None:
        """Raise BenchError when a process that should run has exited."""
        live = [p for p in self.procs if not p.label.startswith("core-")] + [self.core]
        for proc in live:
            if proc is not None and not proc.alive():
                raise BenchError(f"{proc.label} exited early:\n{proc.tail()}")

    def wait_extensions(self, timeout: float = 60) -> None:
        wanted = {"provider.file", *STEPS}

        def registered() -> bool:
            self.check_alive()
            found = self.api.try_get("/extensions") or []
            return wanted <= {i["name"] for i in found}

        wait_for(registered, timeout, f"extensions {sorted(wanted)} to register")

    def wait_settled(self, state: str, timeout: float) -> float:
        """Poll /workflow until every entry is in ``state``; return the time seen."""

        def settled() -> float | None:
            self.check_alive()
            view = self.api.try_get("/workflow")
            if (
                view
                and view["states"] == {state: self.count}
                and view["in_progress"] == 0
            ):
                return time.monotonic()
            return None

        return wait_for(settled, timeout, f"{self.count} entries {state}")

    def spot_check(self, state: str) -> None:
        for index in sorted({0, self.count // 2, self.count - 1}):
            name = f"svc-{index:05d}"
            entry = self.api.get(f"/services/{name}")
            if entry["state"] != state or entry["error"] or entry["work_in_progress"]:
                self.run.problems.append(f"/services/{name}: {entry}")

    def phase(self, count: int, state: str) -> float:
        """Write ``count`` services; return the seconds until all are in ``state``.

        Also records the CPU share (100% = one CPU) each process used meanwhile.
        """
        procs = [p for p in self.procs if p.alive()]
        cpu = {p.label: cpu_seconds(p.pid) for p in procs}
        started = time.monotonic()
        self.phase_started = started
        write_services(self.services_file, count)
        done = self.wait_settled(state, self.options.timeout)
        used = {p.label: cpu_seconds(p.pid) - cpu[p.label] for p in procs}
        core = next(v for k, v in used.items() if k.startswith("core-"))
        steps = sum(used[step] for step in STEPS)
        elapsed = done - started
        self.run.cpu[state] = {
            "core": core / elapsed,
            "provider": used["provider.file"] / elapsed,
            "steps": steps / elapsed,
            "core_us_per_step": core / (len(STEPS) * self.count) * 1e6,
            "steps_us_per_step": steps / (len(STEPS) * self.count) * 1e6,
        }
        self.spot_check(state)
        return done - started

    def restart_core(self) -> None:
        assert self.core is not None
        self.run.core_peak_rss_mb = peak_rss_mb(self.core.pid)
        self.run.core_stop_seconds = self.core.stop()
        self.run.store_load_seconds = _time_store_load(
            self.directory / "var/entries.db"
        )
        started = time.monotonic()
        self.start_core()

        def health() -> float | None:
            self.check_alive()
            view = self.api.try_get("/health", timeout=30)
            return time.monotonic() if view and view["entries"] == self.count else None

        self.run.restart_health_seconds = (
            wait_for(health, 60, "the restarted core", 0.01) - started
        )

        def counted() -> float | None:
            view = self.api.try_get("/workflow", timeout=30)
            total = sum(view["states"].values()) if view else 0
            return time.monotonic() if total == self.count else None

        self.run.restart_seconds = (
            wait_for(counted, 60, "every entry after restart", 0.01) - started
        )

    def execute(self) -> SizeRun:
        run = self.run
        write_services(self.services_file, 0)
        self.start_core()
        wait_for(
            lambda: self.check_alive() or self.api.try_get("/health"),
            60,
            "the core's API",
        )
        self.start_extensions()
        self.wait_extensions()

        run.deploy_seconds = self.phase(self.count, "deployed")
        deploy_started = self.phase_started
        self.restart_core()
        self.wait_extensions()
        self.wait_settled("deployed", self.options.timeout)
        run.undeploy_seconds = self.phase(0, "undeployed")
        assert self.core is not None
        run.core_peak_rss_mb = max(run.core_peak_rss_mb, peak_rss_mb(self.core.pid))
        self.stop()
        if not self.options.stock_noop:
            self.analyse(deploy_started)
        return run

    def analyse(self, deploy_started: float) -> None:
        """Step rates and latencies from the arrival times the no-op steps recorded."""
        # step -> action -> service -> arrival; a request sent again (after a
        # timeout) counts from its first arrival.
        arrivals: dict[str, dict[str, dict[str, float]]] = {}
        for step in STEPS:
            path = self.directory / f"{step}.rec"
            records = msgpack.unpackb(path.read_bytes(), raw=False)
            by_action: dict[str, dict[str, float]] = defaultdict(dict)
            for name, action, moment in records:
                by_action[action].setdefault(name, moment)
            arrivals[step] = by_action

        hops: list[float] = []
        handled, spent = 0, 0.0
        for action, order in (("deploy", STEPS), ("undeploy", STEPS[::-1])):
            times = [t for step in STEPS for t in arrivals[step][action].values()]
            if len(times) < 2:
                continue
            # n arrivals span n - 1 intervals.
            window = max(times) - min(times)
            rate = (len(times) - 1) / window
            handled += len(times) - 1
            spent += window
            if action == "deploy":
                self.run.step_rate_deploy = rate
                self.run.first_step_after = min(times) - deploy_started
            else:
                self.run.step_rate_undeploy = rate
            for here, after in zip(order, order[1:], strict=False):
                first, then = arrivals[here][action], arrivals[after][action]
                hops.extend(then[name] - first[name] for name in first if name in then)
        if spent:
            self.run.step_rate = handled / spent
        hops.sort()
        self.run.latency_samples = len(hops)
        if hops:
            self.run.latency_p50_ms = _percentile(hops, 0.50) * 1000
            self.run.latency_p99_ms = _percentile(hops, 0.99) * 1000
        recorded = sum(len(by_name) for by_action in arrivals.values()
                       for by_name in by_action.values())  # fmt: skip
        expected = 2 * len(STEPS) * self.count
        if recorded != expected:
            self.run.problems.append(
                f"step requests recorded: {recorded}, expected {expected}"
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Extensions first, so the probes write their records while the core is up.
        for proc in reversed(self.procs):
            proc.stop()
        for proc in self.procs:
            if not proc.label.startswith("core-"):
                continue
            warnings = [
                line
                for line in proc.log_path.read_text(errors="replace").splitlines()
                if " WARNING " in line or " ERROR " in line
            ]
            if warnings:
                self.run.problems.append(
                    f"{proc.label} logged {len(warnings)} warnings/errors, "
                    f"first: {warnings[0]}"
                )


def _time_store_load(path: Path) -> float:
    from interlook_core.store import open_entry_store

    started = time.monotonic()
    store = open_entry_store(path)
    try:
        store.load()
    finally:
        store.close()
    return time.monotonic() - started


def _ratio(value: float, base: float) -> float:
    return value / base if base else math.nan


def _percentile(ordered: list[float], fraction: float) -> float:
    index = max(math.ceil(fraction * len(ordered)) - 1, 0)
    return ordered[index]


# -- report -------------------------------------------------------------------


def _fmt(value: float, spec: str) -> str:
    return (
        "n/a"
        if value is None or isinstance(value, float) and math.isnan(value)
        else format(value, spec)
    )


def _cpu(run: SizeRun, phase: str, group: str) -> str:
    value = run.cpu.get(phase, {}).get(group, math.nan)
    return _fmt(value if group.endswith("_us_per_step") else value * 100, ".0f")


def report(runs: list[SizeRun], raw: Any, options: argparse.Namespace) -> list[str]:
    """Print the table and return the missed targets."""
    rows = [
        ("services/s deployed", lambda r: _fmt(r.deployed_per_s, ",.0f")),
        ("services/s undeployed", lambda r: _fmt(r.undeployed_per_s, ",.0f")),
        (
            "  first step after file write (s)",
            lambda r: _fmt(r.first_step_after, ".2f"),
        ),
        ("step round trips/s (deploy)", lambda r: _fmt(r.step_rate_deploy, ",.0f")),
        ("step round trips/s (undeploy)", lambda r: _fmt(r.step_rate_undeploy, ",.0f")),
        ("step round trips/s (both)", lambda r: _fmt(r.step_rate, ",.0f")),
        ("  ratio to raw pyzmq", lambda r: _fmt(_ratio(r.step_rate, raw.rate), ".3f")),
        ("step latency p50 (ms)", lambda r: _fmt(r.latency_p50_ms, ".1f")),
        ("step latency p99 (ms)", lambda r: _fmt(r.latency_p99_ms, ".1f")),
        ("  latency samples", lambda r: f"{r.latency_samples:,}"),
        ("CPU % deploy: core", lambda r: _cpu(r, "deployed", "core")),
        ("  provider.file", lambda r: _cpu(r, "deployed", "provider")),
        ("  three no-op steps together", lambda r: _cpu(r, "deployed", "steps")),
        ("CPU % undeploy: core", lambda r: _cpu(r, "undeployed", "core")),
        ("  provider.file", lambda r: _cpu(r, "undeployed", "provider")),
        ("  three no-op steps together", lambda r: _cpu(r, "undeployed", "steps")),
        (
            "CPU us per step round trip, deploy: core",
            lambda r: _cpu(r, "deployed", "core_us_per_step"),
        ),
        ("  no-op step processes", lambda r: _cpu(r, "deployed", "steps_us_per_step")),
        (
            "CPU us per step round trip, undeploy: core",
            lambda r: _cpu(r, "undeployed", "core_us_per_step"),
        ),
        (
            "  no-op step processes",
            lambda r: _cpu(r, "undeployed", "steps_us_per_step"),
        ),
        ("core peak RSS (MiB)", lambda r: _fmt(r.core_peak_rss_mb, ".1f")),
        ("core stop on SIGTERM (s)", lambda r: _fmt(r.core_stop_seconds, ".2f")),
        ("entries file load alone (s)", lambda r: _fmt(r.store_load_seconds, ".3f")),
        (
            "core restart: /health answers (s)",
            lambda r: _fmt(r.restart_health_seconds, ".2f"),
        ),
        ("core restart: all entries (s)", lambda r: _fmt(r.restart_seconds, ".2f")),
    ]
    label_width = max(len(label) for label, _ in rows)
    header = f"{'':{label_width}}" + "".join(f"{r.services:>14,}" for r in runs)
    print()
    cpus = os.cpu_count()
    print(f"interlook bus benchmark, workflow {WORKFLOW}, tcp loopback")
    print(
        f"{cpus} CPUs; 1-minute load average before the run: {options.load_before:.2f}"
    )
    print(header.replace(" " * label_width, "services".ljust(label_width), 1))
    for label, cell in rows:
        print(f"{label:{label_width}}" + "".join(f"{cell(r):>14}" for r in runs))
    print(
        f"{'raw pyzmq ROUTER/DEALER round trips/s':{label_width}}{raw.rate:>14,.0f}"
        f"   ({raw.in_flight} in flight, msgpack step bodies, {raw.seconds:.1f}s)"
    )
    print(
        f"{'  CPU us per round trip: ROUTER, DEALER':{label_width}}"
        f"{_fmt(raw.router_us, '.0f'):>14}{_fmt(raw.dealer_us, '.0f'):>14}"
    )
    print()
    print(METHOD_STOCK if options.stock_noop else METHOD)

    missed = []
    for run in runs:
        for problem in run.problems:
            print(f"NOTE ({run.services:,} services): {problem}")
        ratio = _ratio(run.step_rate, raw.rate)
        if not ratio >= TARGET_RATIO:
            missed.append(
                f"step round trips/s {run.step_rate:,.0f} with {run.services:,} "
                f"services is {ratio:.3f} of raw {raw.rate:,.0f}; "
                f"target at least {TARGET_RATIO}"
            )
        if run.services >= TARGET_SIZE:
            if not run.core_peak_rss_mb <= TARGET_RSS_MB:
                missed.append(
                    f"core peak RSS {run.core_peak_rss_mb:.1f} MiB with "
                    f"{run.services:,} services; target at most {TARGET_RSS_MB:.0f} MiB"
                )
            if not run.restart_seconds <= TARGET_RESTART_S:
                missed.append(
                    f"core restart with {run.services:,} entries took "
                    f"{run.restart_seconds:.2f}s; "
                    f"target at most {TARGET_RESTART_S:.0f}s"
                )
    if not any(run.services >= TARGET_SIZE for run in runs):
        print(
            f"(RSS and restart targets apply to {TARGET_SIZE:,} services: not run here)"
        )
    for line in missed:
        print(f"TARGET MISSED: {line}")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 services only")
    parser.add_argument(
        "--sizes", help="comma-separated service counts (default 1000,10000)"
    )
    parser.add_argument(
        "--raw-seconds", type=float, default=4.0, help="raw pyzmq run length"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="limit per phase, seconds"
    )
    parser.add_argument(
        "--stock-noop",
        action="store_true",
        help="run `interlook ext noop.X` instead of the recording steps",
    )
    parser.add_argument(
        "--profile-core",
        metavar="FILE",
        help="run each core under cProfile, writing FILE-SIZE-N.prof",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    options = parser.parse_args(argv)
    if options.sizes:
        try:
            sizes = [int(s) for s in options.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes {options.sizes!r}: expected numbers like 1000,10000")
        if any(size < 1 for size in sizes):
            parser.error(f"--sizes {options.sizes!r}: every size must be at least 1")
    else:
        sizes = [1000] if options.quick else [1000, 10_000]

    # Other work on the machine skews every figure; the report shows how busy it was.
    options.load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="interlook-bench-"))
    runs = []
    try:
        print(f"raw pyzmq ROUTER/DEALER for {options.raw_seconds:.0f}s ...", flush=True)
        try:
            raw = measure_raw(options.raw_seconds)
        except (RuntimeError, zmq.ZMQError) as exc:
            print(f"raw pyzmq baseline failed: {exc}", flush=True)
            raw = RawResult(0, 0.0, 100, math.nan, math.nan)
        for count in sizes:
            print(f"{count:,} services ...", flush=True)
            directory = root / f"size-{count}"
            directory.mkdir()
            bench = Bench(count, directory, options)
            try:
                runs.append(bench.execute())
            except Exception as exc:
                # A failed size still leaves the others' figures worth printing.
                reason = str(exc) if isinstance(exc, BenchError) else repr(exc)
                print(f"ABORTED {count:,} services: {reason}", flush=True)
                bench.run.problems.append(f"aborted: {reason} (logs: --keep)")
                runs.append(bench.run)
            finally:
                bench.stop()
        report(runs, raw, options)
        if options.json:
            figures = {
                "raw_round_trips_per_s": raw.rate,
                "raw_cpu_us_per_round_trip": {
                    "router": raw.router_us,
                    "dealer": raw.dealer_us,
                },
                "sizes": [
                    {
                        **vars(r),
                        "deployed_per_s": r.deployed_per_s,
                        "undeployed_per_s": r.undeployed_per_s,
                        "ratio_to_raw": _ratio(r.step_rate, raw.rate),
                    }
                    for r in runs
                ],
            }
            Path(options.json).write_text(
                json.dumps(figures, indent=2), encoding="utf-8"
            )
    finally:
        if options.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
