"""Connects one extension to the core: registration, heartbeats, requests.

The runner owns the DEALER socket and an asyncio loop. It registers, sends
heartbeats, reconnects with capped backoff when the core goes silent, and
registers again whenever the core asks it to (a restarted core does). Step
requests run in worker threads (or on the loop for coroutine handlers), so
a slow step never delays heartbeats.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import socket as socketlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import zmq

from interlook_core import __version__, protocol
from interlook_core.errors import ProtocolError, ServiceDefinitionError, StepError
from interlook_core.security import CurveKeys
from interlook_core.service import Service, service_from_wire
from interlook_core.transport import has_waiting_messages, open_dealer
from interlook_ext.base import Extension, Provider, Provisioner, ServiceFeed

__all__ = ["ExtensionRunner"]

log = logging.getLogger(__name__)

LIVENESS_FACTOR = 3.0
RECONNECT_CAP = 10.0
# Results kept so that a request the core sends again is answered at once.
REMEMBERED_RESULTS = 4096
REFRESH_CHUNK = 1000
REGISTER_BACKOFF_CAP = 30.0
DRAIN_BATCH = 1000
_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)
# Error texts are cut to this length: the protocol refuses longer strings.
MAX_ERROR_TEXT = 1000


def _unsendable(changes: Any) -> str | None:
    """Why a step handler's return value cannot go into a RESULT, or None."""
    if changes is None:
        return None
    if not isinstance(changes, dict):
        return f"{type(changes).__name__}, not a map of changes"
    try:
        msgpack.packb(changes)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"changes that cannot be encoded ({exc})"
    return None


class _LoopFeed(ServiceFeed):
    """Hands a provider thread's reports to the runner's loop."""

    def __init__(
        self, runner: ExtensionRunner, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self._runner = runner
        self._loop = loop

    def _post(self, method: Any, *args: Any) -> None:
        if not self.stopping.is_set():
            self._loop.call_soon_threadsafe(method, *args)

    def snapshot(self, services: Any) -> None:
        self._post(self._runner.on_snapshot, list(services))

    def update(self, service: Service) -> None:
        self._post(self._runner.on_update, service)

    def delete(self, name: str) -> None:
        self._post(self._runner.on_delete, name)


class ExtensionRunner:
    """Run ``extension`` against the core at ``endpoint`` until stopped."""

    def __init__(
        self,
        extension: Extension,
        endpoint: str,
        heartbeat: float = 2.0,
        capacity: int | None = None,
        logger: logging.Logger | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        self.extension = extension
        self.keys = keys
        self.endpoint = endpoint
        self.heartbeat = heartbeat
        self.capacity = capacity or extension.capacity
        self.log = logger or log
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._wakeup = asyncio.Event()
        self._last_heard = 0.0
        self._registered = False
        # "up" after a WELCOME, "down" once reported gone: losing the core is
        # news, failing again to reach a core that is still away is not.
        self._core_state = "unknown"
        # The core's heartbeat interval, from WELCOME; ours stays what we
        # announced in REGISTER, which is what the core judges us by.
        self._core_heartbeat = heartbeat
        self._register_due = 0.0
        self._refusals = 0
        self._last_refusal = ""
        self._running: set[str] = set()
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pool = ThreadPoolExecutor(
            max_workers=self.capacity, thread_name_prefix="step"
        )
        # Provider state: the services it reports, None until a first snapshot.
        self._services: dict[str, Service] | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- life cycle ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        watcher = None
        feed = None
        if isinstance(self.extension, Provider):
            feed = _LoopFeed(self, loop)
            watcher = threading.Thread(
                target=self._watch, args=(feed,), name="provider-watch", daemon=True
            )
            watcher.start()
        backoff = 0.5
        try:
            while not stop.is_set():
                started = time.monotonic()
                await self._session(stop)
                if stop.is_set():
                    break
                if time.monotonic() - started > RECONNECT_CAP:
                    backoff = 0.5
                self.log.debug(
                    "RECONNECTING endpoint=%s in=%.1fs", self.endpoint, backoff
                )
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, RECONNECT_CAP)
        finally:
            if feed is not None:
                feed.stopping.set()
            if watcher is not None:
                await loop.run_in_executor(None, watcher.join, 5.0)
            for task in self._tasks:
                task.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.extension.close()
            self._context.term()

    def _watch(self, feed: ServiceFeed) -> None:
        """Run the provider's watch loop; restart it if it fails."""
        assert isinstance(self.extension, Provider)
        delay = 1.0
        while not feed.stopping.is_set():
            try:
                self.extension.watch(feed)
                return
            except Exception:
                self.log.error(
                    "WATCH_FAILED provider=%s restart_in=%.0fs",
                    self.extension.name,
                    delay,
                    exc_info=True,
                )
            if feed.wait(delay):
                return
            delay = min(delay * 2, 60.0)

    # -- one connection ------------------------------------------------------

    async def _session(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        socket = open_dealer(self._context, self.endpoint, self.keys)
        self._socket = socket
        self._wakeup = asyncio.Event()
        loop.add_reader(socket.FD, self._wakeup.set)
        self._registered = False
        self._last_heard = time.monotonic()
        last_beat = 0.0
        # One REGISTER per connection until the core answers: a second one on
        # the same connection would be refused as a double registration. A
        # core that never answers ends the session (liveness) and the next
        # connection registers afresh.
        self._register()
        self._register_due = math.inf
        try:
            while not stop.is_set():
                self._drain(socket)
                now = time.monotonic()
                if self._registered and now - last_beat >= self.heartbeat:
                    self._send(protocol.HEARTBEAT, {})
                    last_beat = now
                if not self._registered and now >= self._register_due:
                    self._register()
                    self._register_due = math.inf
                    # The core's answer is due from now on.
                    self._last_heard = now
                silent = now - self._last_heard
                waiting_to_register = self._register_due != math.inf
                if (
                    not waiting_to_register
                    and silent > self._core_heartbeat * LIVENESS_FACTOR
                ):
                    self._report_core_gone(silent)
                    return
                # The descriptor is edge-triggered: look before sleeping.
                self._wakeup.clear()
                if has_waiting_messages(socket):
                    continue
                try:
                    await asyncio.wait_for(
                        self._wakeup.wait(), min(self.heartbeat, 0.5)
                    )
                except TimeoutError:
                    pass
            if self._registered:
                self._send(protocol.DISCONNECT, {"reason": "shutting down"})
        finally:
            loop.remove_reader(socket.FD)
            self._registered = False
            self._socket = None
            socket.close(linger=100)

    def _report_core_gone(self, silent: float) -> None:
        """One log line per change: the core lost, or not reachable at start."""
        if self._core_state == "up":
            self.log.warning(
                "LOST_CORE endpoint=%s silent_for=%.1fs action=reconnecting",
                self.endpoint,
                silent,
            )
        elif self._core_state == "unknown":
            self.log.info(
                "NO_CORE endpoint=%s action=retrying until it answers", self.endpoint
            )
        else:
            self.log.debug(
                "NO_ANSWER endpoint=%s silent_for=%.1fs", self.endpoint, silent
            )
        self._core_state = "down"

    def _drain(self, socket: zmq.Socket) -> None:
        """Handle every message waiting, without blocking."""
        for _ in range(DRAIN_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                self._handle(frames)
            except Exception:
                # One bad message must not end the session for the others.
                self.log.error("HANDLER_FAILED from=core", exc_info=True)

    def _send(self, command: bytes, body: dict[str, Any]) -> None:
        socket = self._socket
        if socket is None:
            return
        try:
            socket.send(protocol.PROTOCOL_VERSION, _MORE)
            socket.send(command, _MORE)
            socket.send(msgpack.packb(body), _LAST)
        except zmq.Again:
            # Not connected yet or the core is not reading: the heartbeat
            # logic notices a dead core; a lost RESULT is answered on resend.
            self.log.debug("SEND_DEFERRED command=%s reason=no connected core", command)
            return
        # A send may consume the descriptor's edge for a message that
        # arrived meanwhile; wake the session loop to look.
        if has_waiting_messages(socket):
            self._wakeup.set()

    def _register(self) -> None:
        self._send(
            protocol.REGISTER,
            {
                "name": self.extension.name,
                "role": self.extension.role,
                "host": socketlib.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "capacity": self.capacity,
                "heartbeat_ms": round(self.heartbeat * 1000),
            },
        )

    def _handle(self, frames: list[bytes]) -> None:
        try:
            message = protocol.decode(frames)
        except ProtocolError as exc:
            self.log.warning("DROPPED from=core reason=%s", exc)
            return
        command, body = message.command, message.body
        if command == protocol.WELCOME:
            self._registered = True
            self._core_state = "up"
            self._refusals = 0
            self._last_refusal = ""
            self._core_heartbeat = body["heartbeat_ms"] / 1000
            self.log.info(
                "REGISTERED extension=%s endpoint=%s core_version=%s",
                self.extension.name,
                self.endpoint,
                body.get("core_version", "?"),
            )
            if self._services is not None:
                self._send_snapshot()
        elif command == protocol.DISCONNECT:
            reason = body.get("reason", "none given")
            if reason != self._last_refusal:
                self.log.warning("DISCONNECTED_BY_CORE reason=%s", reason)
                self._last_refusal = reason
            self._registered = False
            self._refusals += 1
            # Register again soon (a restarted core forgot us), but back off
            # when the core keeps refusing, e.g. a name not in its workflow.
            self._register_due = time.monotonic() + self._refusal_delay()
        elif command == protocol.HEARTBEAT:
            pass
        elif command == protocol.STEP and isinstance(self.extension, Provisioner):
            self._spawn(self._step(body))
        elif command == protocol.REFRESH and isinstance(self.extension, Provider):
            self._spawn(self._refresh([n for n in body["names"] if isinstance(n, str)]))
        else:
            self.log.warning("DROPPED from=core reason=unexpected %s", command.decode())

    def _refusal_delay(self) -> float:
        if self._refusals == 0:
            return 0.0
        return min(0.25 * 2 ** (self._refusals - 1), REGISTER_BACKOFF_CAP)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- provisioner side ----------------------------------------------------

    async def _step(self, body: dict[str, Any]) -> None:
        request_id = body["id"]
        if request_id in self._running:
            return
        if request_id in self._results:
            self._send(protocol.RESULT, self._results[request_id])
            return
        self._running.add(request_id)
        try:
            result = await self._perform(body)
        finally:
            self._running.discard(request_id)
        self._results[request_id] = result
        while len(self._results) > REMEMBERED_RESULTS:
            self._results.popitem(last=False)
        self._send(protocol.RESULT, result)

    async def _perform(self, body: dict[str, Any]) -> dict[str, Any]:
        extension = self.extension
        assert isinstance(extension, Provisioner)
        request_id, action = body["id"], body["action"]
        started = time.monotonic()
        name = (
            body["service"].get("name", "?")
            if isinstance(body["service"], dict)
            else "?"
        )
        try:
            service = service_from_wire(body["service"])
            handler = extension.deploy if action == "deploy" else extension.undeploy
            if inspect.iscoroutinefunction(handler):
                changes = await handler(service)
            else:
                loop = asyncio.get_running_loop()
                changes = await loop.run_in_executor(self._pool, handler, service)
            problem = _unsendable(changes)
            if problem:
                raise StepError(f"the extension returned {problem}")
        except (StepError, ServiceDefinitionError) as exc:
            error = str(exc)
        except Exception as exc:
            self.log.error(
                "STEP_CRASHED service=%s step=%s action=%s",
                name,
                extension.name,
                action,
                exc_info=True,
            )
            error = f"{type(exc).__name__}: {exc}"
        else:
            self.log.info(
                "STEP_DONE service=%s step=%s action=%s elapsed=%.3fs",
                name,
                extension.name,
                action,
                time.monotonic() - started,
            )
            return {"id": request_id, "ok": True, "changes": changes or {}}
        self.log.warning(
            "STEP_FAILED service=%s step=%s action=%s error=%s",
            name,
            extension.name,
            action,
            error,
        )
        return {"id": request_id, "ok": False, "error": error[:MAX_ERROR_TEXT]}

    # -- provider side -------------------------------------------------------

    def on_snapshot(self, services: list[Service]) -> None:
        self._services = {service.name: service for service in services}
        self.log.info(
            "SNAPSHOT provider=%s services=%d", self.extension.name, len(services)
        )
        self._send_snapshot()

    def on_update(self, service: Service) -> None:
        # Before a first snapshot there is no full list to keep: an update
        # alone must never become the snapshot sent on registration.
        if self._services is not None:
            self._services[service.name] = service
        self.log.info(
            "UPDATE provider=%s service=%s", self.extension.name, service.name
        )
        if self._registered:
            self._send(
                protocol.EVENT, {"action": "update", "service": service.to_wire()}
            )

    def on_delete(self, name: str) -> None:
        if self._services is not None:
            self._services.pop(name, None)
        self.log.info("DELETE provider=%s service=%s", self.extension.name, name)
        if self._registered:
            self._send(protocol.EVENT, {"action": "delete", "name": name})

    def _send_snapshot(self) -> None:
        if self._registered and self._services is not None:
            services = [service.to_wire() for service in self._services.values()]
            self._send(protocol.SNAPSHOT, {"services": services})

    async def _refresh(self, names: list[str]) -> None:
        extension = self.extension
        assert isinstance(extension, Provider)
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self._pool, extension.lookup, names)
        except Exception:
            self.log.error("LOOKUP_FAILED provider=%s", extension.name, exc_info=True)
            return
        if found is None:
            if self._services is None:
                return
            found = {name: self._services.get(name) for name in names}
        for name in names:
            if name not in found:
                continue
            service = found[name]
            if service is None:
                self._send(protocol.EVENT, {"action": "delete", "name": name})
            else:
                self._send(
                    protocol.EVENT, {"action": "update", "service": service.to_wire()}
                )
        self.log.info("REFRESHED provider=%s services=%d", extension.name, len(names))
