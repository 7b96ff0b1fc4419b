"""The ``interlook`` command: core, ext, up, status, check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import zmq

from interlook_core import __version__
from interlook_core.config import Config, load_config, validate_section
from interlook_core.errors import ConfigError, InterlookError, StoreError
from interlook_core.logsetup import setup_logging
from interlook_core.security import (
    CurveKeys,
    generate_keys,
    load_key_pair,
    load_public_key,
)

__all__ = ["main"]

log = logging.getLogger("interlook_core.cli")

EXIT_BAD_CONFIG = 2


def _load(path: str, every_step: bool = True) -> Config:
    from interlook_ext.registry import installed_extensions, load_extension_class

    config = load_config(path, known_steps=installed_extensions())
    # Check every extension section now, so a bad one stops the core too,
    # not only the extension process that reads it.
    for kind, section in config.sections.items():
        for name in section:
            step = f"{kind}.{name}"
            validate_section(config, step, load_extension_class(step).settings_model)
    # An extension host's file may hold only the sections of what it runs;
    # the core's file must hold every step's.
    for step in config.core.workflowSteps if every_step else ():
        validate_section(config, step, load_extension_class(step).settings_model)
    return config


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def _serve_core(config: Config) -> int:
    from interlook_core.api import open_api
    from interlook_core.core import Core

    core = Core(config)
    try:
        core.open()
    except StoreError as exc:
        log.error("START_FAILED reason=%s", exc)
        return 1
    except zmq.ZMQError as exc:
        log.error("START_FAILED endpoint=%s reason=%s", config.core.endpoint, exc)
        core.close()
        return 1
    api = None
    if config.core.listenPort:
        try:
            api = await open_api(
                core, config.core.listenAddress, config.core.listenPort
            )
        except OSError as exc:
            log.error(
                "START_FAILED api=%s:%d reason=%s",
                config.core.listenAddress,
                config.core.listenPort,
                exc,
            )
            core.close()
            return 1
        log.info(
            "API url=http://%s:%d/", config.core.listenAddress, config.core.listenPort
        )
    stop = asyncio.Event()
    _stop_on_signals(stop)
    try:
        await core.run(stop)
    finally:
        if api is not None:
            await api.cleanup()
        core.close()
        log.info("STOPPED core")
    return 1 if core.failed else 0


def _cmd_core(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.core.logLevel, config.core.logFile)
    return asyncio.run(_serve_core(config))


async def _serve_extension(args: argparse.Namespace, config: Config) -> int:
    from interlook_ext.registry import load_extension_class
    from interlook_ext.runner import ExtensionRunner

    cls = load_extension_class(args.name)
    settings = validate_section(config, args.name, cls.settings_model)
    extension = cls(args.name, settings)
    capacity = args.capacity or getattr(settings, "capacity", None) or cls.capacity
    keys = None
    if config.curve is not None:
        pair = load_key_pair(config.curve.secretKeyFile)
        server = load_public_key(config.curve.serverPublicKey)
        keys = CurveKeys(public=pair.public, secret=pair.secret, server_public=server)
    runner = ExtensionRunner(
        extension,
        args.endpoint or config.core.endpoint,
        heartbeat=config.core.heartbeatInterval,
        capacity=capacity,
        keys=keys,
    )
    stop = asyncio.Event()
    _stop_on_signals(stop)
    log.info("STARTING extension=%s endpoint=%s", args.name, runner.endpoint)
    await runner.run(stop)
    log.info("STOPPED extension=%s", args.name)
    return 0


def _cmd_ext(args: argparse.Namespace) -> int:
    config = _load(args.config, every_step=False)
    setup_logging(config.core.logLevel, config.core.logFile, prefix=f"[{args.name}] ")
    return asyncio.run(_serve_extension(args, config))


def _cmd_up(args: argparse.Namespace) -> int:
    from interlook_core.launcher import exec_supervisord

    config = _load(args.config)
    exec_supervisord(config)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"{config.path}: OK, workflow {','.join(config.core.workflowSteps)}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    public, secret = generate_keys(args.name, args.dir)
    text = load_public_key(str(public)).decode("ascii")
    print(f"public key: {public}\nsecret key: {secret} (keep it on this host only)")
    print(f"public key text (for authorizedKeys or serverPublicKey): {text}")
    return 0


def _age(iso: str | None) -> str:
    if not iso:
        return ""
    seconds = (
        time.time() - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    )
    return f"{seconds:.0f}s"


def _status_rows(services: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["NAME", "STATE", "EXPECTED", "IN PROGRESS", "FOR", "PUBLIC IP", "DNS", "ERROR"]
    ]
    for name in sorted(services):
        entry = services[name]
        step = entry.get("step_in_progress") or ""
        if entry.get("waiting_for_extension"):
            step += " (waiting for extension)"
        rows.append(
            [
                name,
                entry["state"],
                entry["expected_state"],
                step,
                _age(entry.get("wip_time")) if entry.get("work_in_progress") else "",
                entry["service"].get("public_ip") or "",
                ",".join(entry["service"].get("dns_names") or []),
                (entry.get("error") or "")[:80],
            ]
        )
    return rows


def _cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.core.listenPort:
        print(
            f"interlook status: the API is off in {config.path} (core.listenPort: 0)",
            file=sys.stderr,
        )
        return 1
    host = config.core.listenAddress
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host}:{config.core.listenPort}/services"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            services = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"interlook status: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(services, indent=2))
        return 0
    rows = _status_rows(services)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlook",
        description="Publish container services: IPs, DNS names and load balancers.",
    )
    parser.add_argument(
        "--version", action="version", version=f"interlook {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c", "--config", required=True, metavar="FILE", help="YAML config"
        )
        return sub

    add("core", "run the core process").set_defaults(func=_cmd_core)
    ext = add("ext", "run one extension process, e.g. ipam.file")
    ext.add_argument("name", help="the extension, kind.name")
    ext.add_argument(
        "--endpoint", help="the core's bus address (default: core.endpoint)"
    )
    ext.add_argument("--capacity", type=int, help="requests handled at once")
    ext.set_defaults(func=_cmd_ext)
    add(
        "up", "run the core and every workflow extension, restarted if they die"
    ).set_defaults(func=_cmd_up)
    status = add("status", "show the services the core knows")
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    status.set_defaults(func=_cmd_status)
    add("check", "check a configuration file and exit").set_defaults(func=_cmd_check)
    keys = commands.add_parser("keys", help="CurveZMQ key pairs for the bus")
    key_commands = keys.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    generate = key_commands.add_parser(
        "generate",
        help="write NAME.key (public) and NAME.key_secret (secret)",
        description="Write a CurveZMQ key pair for the core or an extension.",
    )
    generate.add_argument("name", help="file name stem, e.g. core or lb-host2")
    generate.add_argument(
        "--dir", default=".", help="where to write the files (default .)"
    )
    generate.set_defaults(func=_cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"interlook: bad configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except InterlookError as exc:
        print(f"interlook: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
