"""A no-op step that also records when each request reached it, for the benchmark.

Run as ``python bench/noop_probe.py noop.a -c interlook.yml --record FILE``.
It is :class:`interlook_ext.noop.Noop` (the same handlers, the same
capacity) run by the same :class:`interlook_ext.runner.ExtensionRunner` that
``interlook ext noop.a`` uses; the only addition is one monotonic timestamp
appended to a list per request. On SIGTERM or SIGINT it disconnects and
writes ``[[service, action, seconds], ...]`` to the record file as msgpack.

``time.monotonic`` reads CLOCK_MONOTONIC, which every process on one Linux
host shares, so the benchmark can compare the timestamps of the three steps
of one service to get the time from one step to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from interlook_core.config import load_config, validate_section
from interlook_core.errors import ConfigError
from interlook_core.logsetup import setup_logging
from interlook_core.service import Service
from interlook_ext.noop import Noop, NoopSettings
from interlook_ext.runner import ExtensionRunner

__all__ = ["RecordingNoop", "main"]


class RecordingNoop(Noop):
    """:class:`Noop` that notes the arrival time of each request it handles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[str, str, float]] = []

    async def deploy(self, service: Service) -> dict[str, Any]:
        self.arrivals.append((service.name, "deploy", time.monotonic()))
        return await super().deploy(service)

    async def undeploy(self, service: Service) -> dict[str, Any]:
        self.arrivals.append((service.name, "undeploy", time.monotonic()))
        return await super().undeploy(service)


async def _serve(runner: ExtensionRunner) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runner.run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A recording no-op step for bench/bench_bus.py"
    )
    parser.add_argument("name", help="the step name to register as, e.g. noop.a")
    parser.add_argument(
        "-c", "--config", required=True, help="the interlook YAML config"
    )
    parser.add_argument(
        "--record", required=True, help="where to write the arrival times"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        settings = validate_section(config, args.name, NoopSettings)
    except ConfigError as exc:
        print(f"noop_probe: bad configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.core.logLevel, config.core.logFile, prefix=f"[{args.name}] ")
    extension = RecordingNoop(args.name, settings)
    runner = ExtensionRunner(
        extension,
        config.core.endpoint,
        heartbeat=config.core.heartbeatInterval,
        capacity=settings.capacity,
    )
    asyncio.run(_serve(runner))
    Path(args.record).write_bytes(msgpack.packb(extension.arrivals, use_bin_type=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
