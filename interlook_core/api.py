"""The read-only HTTP API, served by aiohttp in the core's own event loop.

Handlers read the workflow directly: they run on the loop that owns it, so
they always see a consistent state and need no lock.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from aiohttp import web

from interlook_core import __version__, protocol
from interlook_core.core import Core

__all__ = ["make_api", "open_api"]

CORE_KEY = web.AppKey("core", Core)


def _entry_view(core: Core, name: str) -> dict[str, Any]:
    entry = core.workflow.entries[name]
    view = entry.to_api()
    waiting = None
    if entry.request_id is not None and entry.request_id not in core.instances.owner:
        if not core.instances.named(entry.wip_step or ""):
            waiting = entry.wip_step
    view["waiting_for_extension"] = waiting
    return view


async def _health(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    return web.json_response(
        {
            "status": "ok",
            "entries": len(core.workflow.entries),
            "extensions": len(core.instances.by_id),
            "uptime_seconds": round(time.time() - core.started, 3),
        }
    )


async def _services(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    return web.json_response(
        {name: _entry_view(core, name) for name in core.workflow.entries}
    )


async def _service(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    name = request.match_info["name"]
    if name not in core.workflow.entries:
        return web.json_response({"error": f"no service named {name!r}"}, status=404)
    return web.json_response(_entry_view(core, name))


async def _workflow(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    entries = core.workflow.entries.values()
    return web.json_response(
        {
            "steps": core.workflow.steps,
            "states": dict(Counter(entry.state for entry in entries)),
            "in_progress": len(core.workflow.pending),
            "in_error": sum(1 for entry in entries if entry.error),
            "queued": {step: len(q) for step, q in core.instances.queues.items() if q},
            "waiting_for_extension": core.waiting_for(),
        }
    )


async def _extensions(request: web.Request) -> web.Response:
    core = request.app[CORE_KEY]
    now = time.time()
    return web.json_response([i.to_api(now) for i in core.instances.by_id.values()])


async def _version(request: web.Request) -> web.Response:
    return web.json_response(
        {"version": __version__, "protocol": protocol.PROTOCOL_VERSION.decode()}
    )


def make_api(core: Core) -> web.Application:
    """The API's aiohttp application for ``core``."""
    app = web.Application()
    app[CORE_KEY] = core
    app.router.add_get("/health", _health)
    app.router.add_get("/services", _services)
    app.router.add_get("/services/{name}", _service)
    app.router.add_get("/workflow", _workflow)
    app.router.add_get("/extensions", _extensions)
    app.router.add_get("/version", _version)
    return app


async def open_api(core: Core, host: str, port: int) -> web.AppRunner:
    """Start serving the API; clean up the returned runner to stop it.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    runner = web.AppRunner(make_api(core), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
