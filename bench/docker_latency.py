"""Detection latency of provider.docker: from ``docker run`` returning to ``deployed``.

Starts a core, ``provider.docker`` and ``ipam.file`` as real processes, then
runs labelled containers one after another with the ``docker`` command and
times each from the moment ``docker run -d`` returns until the HTTP API shows
the entry ``deployed`` (the provider saw the start event, the core ran the
IPAM step). Prints p50, mean and max, next to what a provider polling every N
seconds would give (N/2 on average, N at worst).

Usage: .venv/bin/python bench/docker_latency.py [--count 20]
The engine is the one named by INTERLOOK_TEST_DOCKER_HOST; without it a
private engine is started with deploy/ci/start-dockerd.sh (as root) and
stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.docker_engine import IMAGE, start_engine, stop_engine  # noqa: E402
from tests.support import Cluster, free_port, wait_until, write_config  # noqa: E402

POLL = 0.005


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(host: str, count: int, work: Path) -> tuple[list[float], list[float]]:
    """Detection latencies and ``docker run`` durations, in seconds."""
    tag = uuid.uuid4().hex[:8]
    config = write_config(
        work,
        "provider.docker,ipam.file",
        {
            "provider": {
                "docker": {
                    "endpoint": host,
                    "mode": "containers",
                    "labelSelector": f"interlook.bench={tag}",
                    # Long, so that every detection below comes from an event.
                    "pollInterval": "10m",
                }
            },
            "ipam": {"file": {"network_cidr": "10.32.40.0/24", "db_file": "var/ipam.json"}},
        },
        logLevel="INFO",
    )
    cluster = Cluster(config)
    docker = shutil.which("docker")
    if docker is None:
        raise SystemExit("the docker command is not installed (Debian package docker.io)")
    names: list[str] = []
    try:
        cluster.core()
        provider = cluster.ext("provider.docker")
        cluster.ext("ipam.file")
        cluster.api.wait_extensions({"provider.docker", "ipam.file"})
        wait_until(lambda: "ENGINE_UP" in provider.output(), 20, what="the provider")
        latencies, run_times = [], []
        for index in range(count):
            name = f"bench-{tag}-{index:02d}"
            names.append(name)
            invoked = time.perf_counter()
            subprocess.run(
                [
                    docker, "-H", host, "run", "-d", "--network", "host", "--name", name,
                    "--label", f"interlook.bench={tag}",
                    "--label", f"interlook.hosts={name}.bench.test",
                    "--label", f"interlook.port={free_port()}",
                    IMAGE, "sleep", "600",
                ],
                check=True,
                capture_output=True,
            )
            returned = time.perf_counter()
            run_times.append(returned - invoked)
            while True:
                entry = cluster.api.entry(name)
                if entry and entry["state"] == "deployed" and not entry["work_in_progress"]:
                    break
                if time.perf_counter() - returned > 30:
                    raise SystemExit(f"{name} was not deployed within 30s")
                time.sleep(POLL)
            latencies.append(time.perf_counter() - returned)
        return latencies, run_times
    finally:
        if names:
            subprocess.run([docker, "-H", host, "rm", "-f", *names], capture_output=True)
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="containers to run (20)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interlook-bench-"))
    engine_dir: Path | None = None
    host = os.environ.get("INTERLOOK_TEST_DOCKER_HOST")
    try:
        if not host:
            engine_dir = Path(tempfile.mkdtemp(prefix="ilb-", dir="/tmp"))
            host = start_engine(engine_dir)
        latencies, run_times = measure(host, args.count, work)
    finally:
        if engine_dir is not None:
            stop_engine(engine_dir)
        shutil.rmtree(work, ignore_errors=True)
    ms = [value * 1000 for value in latencies]
    print("provider.docker detection latency, docker run -> deployed with ipam.file")
    print(f"  n    {len(ms):7d}")
    print(f"  p50  {statistics.median(ms):7.1f} ms")
    print(f"  p90  {_percentile(ms, 0.9):7.1f} ms")
    print(f"  mean {statistics.fmean(ms):7.1f} ms")
    print(f"  min  {min(ms):7.1f} ms")
    print(f"  max  {max(ms):7.1f} ms")
    # The engine sends the start event before the docker command has exited,
    # so detection may overlap the command's own exit: its duration is shown too.
    print(f"  (docker run -d itself: p50 {statistics.median(run_times) * 1000:.0f} ms)")
    for interval in (5, 30):
        average, worst = interval / 2 * 1000, interval * 1000
        print(
            f"  a provider polling every {interval}s: "
            f"{average:.0f} ms on average, {worst:.0f} ms at worst"
        )


if __name__ == "__main__":
    main()
