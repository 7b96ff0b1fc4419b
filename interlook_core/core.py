"""The core process: the bus listener, flowControl, the housekeeper, the store.

One asyncio loop owns the workflow, so nothing here needs a lock. The
ROUTER socket is read without blocking from a loop reader callback; each
batch of messages is applied to the workflow, the changed entries are
committed to the store, and only then are the step requests they call for
sent. That order is what makes a SIGKILL at any moment safe.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any, cast

import msgpack
import zmq

from interlook_core import __version__, protocol
from interlook_core.config import Config
from interlook_core.errors import ProtocolError, ServiceDefinitionError, StoreError
from interlook_core.instances import Instance, InstanceTable
from interlook_core.security import (
    AuthorizedKeys,
    is_loopback_endpoint,
    load_authorized_keys,
    load_key_pair,
    open_authenticator,
)
from interlook_core.service import Service, parse_address, service_from_wire
from interlook_core.store import EntryStore, open_entry_store
from interlook_core.transport import has_waiting_messages, open_router
from interlook_core.workflow import StepRequest, Workflow, WorkflowTimings

__all__ = ["Core"]

log = logging.getLogger(__name__)

# An instance silent for this many heartbeat intervals is taken for dead.
LIVENESS_FACTOR = 3.0
# Messages handled per wake-up before committing, so one busy peer cannot
# delay the commit (and the sends behind it) indefinitely.
BATCH = 2000
REFRESH_CHUNK = 1000
# Peers already warned about (one REFUSED line each), remembered up to this many.
WARNED_PEERS_KEPT = 10_000
_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


class Core:
    """The core: build it from a checked config, then ``await run(stop)``."""

    def __init__(self, config: Config, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.log = logger or log
        settings = config.core
        self.workflow = Workflow(
            list(settings.workflowSteps),
            WorkflowTimings(
                wip_timeout=settings.serviceWIPTimeout,
                max_resends=settings.serviceWIPMaxResends,
                retry_base=max(settings.checkFlowInterval, 1.0),
                retry_cap=settings.serviceRetryMaxInterval,
                clean_undeployed_after=settings.cleanUndeployedServiceAfter,
                max_last_updated=settings.serviceMaxLastUpdated,
            ),
        )
        self.instances = InstanceTable()
        self.started = time.time()
        self.store: EntryStore | None = None
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_scheduled = False
        self._freed_steps: set[str] = set()
        self._undone_steps: set[str] = set()
        self._warned_peers: set[bytes] = set()
        self._refresh_waiting = False
        self._authorized: AuthorizedKeys | None = None
        self._stop: asyncio.Event | None = None
        self.failed = False
        self._authenticator: Any = None

    # -- life cycle ----------------------------------------------------------

    def open(self) -> None:
        """Load the entries and bind the socket. Raises StoreError, zmq.ZMQError."""
        self.store = open_entry_store(
            self.config.core.workflowEntriesFile,
            sync=self.config.core.workflowEntriesSync,
        )
        entries = self.store.load()
        steps = ",".join(self.workflow.steps)
        previous = self.store.get_meta("workflowSteps")
        changed = previous is not None and previous != steps
        if changed:
            self.log.warning(
                "WORKFLOW_CHANGED from=%s to=%s action=deployed entries run every step again",
                previous,
                steps,
            )
        self.workflow.load(entries, workflow_changed=changed)
        # The reset entries are on disk before the new workflow is recorded,
        # so a crash in between resets them again at the next start.
        self._commit()
        self.store.set_meta("workflowSteps", steps)
        for entry in self.workflow.in_progress():
            entry.sent_time = None
            entry.sent_count = 0
        self.log.info(
            "LOADED entries=%d in_progress=%d file=%s",
            len(entries),
            len(self.workflow.pending),
            self.store.path,
        )
        self._context = zmq.Context()
        settings = self.config.core
        keys = None
        if settings.curve is not None:
            keys = load_key_pair(settings.curve.secretKeyFile)
            self._authorized = load_authorized_keys(settings.curve.authorizedKeys)
            # Without a running ZAP handler a CURVE server lets any key in:
            # open_authenticator raises rather than return in that state.
            self._authenticator = open_authenticator(self._context, self._authorized)
        elif not is_loopback_endpoint(settings.endpoint):
            self.log.warning(
                "INSECURE endpoint=%s reason=no core.curve: anyone who reaches this address "
                "can register as an extension, read service definitions and forge results",
                settings.endpoint,
            )
        self._socket = open_router(
            self._context, settings.endpoint, keys, settings.maxMessageSize
        )
        self.log.info(
            "LISTENING endpoint=%s workflow=%s curve=%s",
            settings.endpoint,
            ",".join(self.workflow.steps),
            "on" if keys else "off",
        )

    def close(self) -> None:
        if self._socket is not None:
            for routing_id in list(self.instances.by_id):
                self._send(
                    routing_id, protocol.DISCONNECT, {"reason": "core shutting down"}
                )
            if self._loop is not None:
                self._loop.remove_reader(self._socket.FD)
            self._socket.close(linger=0)
            self._socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._context is not None:
            self._context.term()
            self._context = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. :meth:`open` must have been called."""
        assert self._socket is not None
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        self._loop.add_reader(self._socket.FD, self._schedule_pump)
        # Requests in progress before a restart wait in their queues for an
        # instance of their step to register.
        for entry in list(self.workflow.in_progress()):
            self._dispatch(self.workflow.request_for(entry))
        self._after_changes(all_entries=True)
        timers = [
            asyncio.create_task(
                self._every(self.config.core.checkFlowInterval, self._flow_tick)
            ),
            asyncio.create_task(
                self._every(
                    self.config.core.workflowHousekeeperInterval, self._housekeep
                )
            ),
            asyncio.create_task(
                self._every(self.config.core.heartbeatInterval, self._heartbeat)
            ),
        ]
        self._schedule_pump()
        try:
            await stop.wait()
        finally:
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*timers, return_exceptions=True)

    async def _every(self, interval: float, action: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                action()
            except Exception:
                # A bug in one pass must not stop the timers; the next pass retries.
                self.log.error("TIMER_FAILED action=%s", action.__name__, exc_info=True)
            # A send from a timer can consume the socket's edge-triggered
            # readiness; without a pump now, waiting messages would sit unread
            # until another peer's traffic raised a new edge.
            self._schedule_pump()

    # -- socket --------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Read a batch of messages, apply them, commit, then send what follows."""
        self._pump_scheduled = False
        socket = self._socket
        if socket is None:
            return
        curve = self._authorized is not None
        for _ in range(BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=not curve)
            except zmq.Again:
                break
            try:
                if curve:
                    # The ZAP handler's verdict travels with each frame; read
                    # it from the message, never from what the peer says.
                    parts = cast(list[zmq.Frame], frames)
                    user_id = parts[-1].get("User-Id") if len(parts) > 1 else None
                    self._receive([part.bytes for part in parts], cast(str, user_id))
                else:
                    self._receive(cast(list[bytes], frames))
            except Exception:
                # A bug met by one message must not stop the bus for all.
                peer = frames[0]
                peer_id = peer.bytes if isinstance(peer, zmq.Frame) else peer
                self.log.error("HANDLER_FAILED peer=%s", peer_id.hex(), exc_info=True)
        try:
            self._after_changes()
        except StoreError:
            return

    def _send(self, routing_id: bytes, command: bytes, body: dict[str, Any]) -> bool:
        """Send without blocking; False when the peer is gone or full."""
        assert self._socket is not None
        socket = self._socket
        try:
            # Frame by frame with constant flags: send_multipart's per-frame
            # flag arithmetic is a measurable share of a step's cost. ZeroMQ
            # delivers a multipart message whole or not at all.
            socket.send(routing_id, _MORE)
            socket.send(protocol.PROTOCOL_VERSION, _MORE)
            socket.send(command, _MORE)
            socket.send(msgpack.packb(body), _LAST)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._drop(routing_id, "unreachable")
            return False
        return True

    # -- inbound -------------------------------------------------------------

    def _receive(self, frames: list[bytes], user_id: str | None = None) -> None:
        routing_id, body_frames = frames[0], frames[1:]
        instance = self.instances.by_id.get(routing_id)
        if self._authorized is not None and not user_id:
            self.log.warning(
                "DROPPED peer=%s reason=no authenticated key", routing_id.hex()
            )
            return
        try:
            message = protocol.decode(body_frames)
        except ProtocolError as exc:
            self.log.warning(
                "DROPPED peer=%s extension=%s reason=%s",
                routing_id.hex(),
                instance.name if instance else "-",
                exc,
            )
            if instance is None or str(exc).startswith("unsupported protocol version"):
                self._refuse(routing_id, str(exc))
            return
        now = time.time()
        if instance is not None:
            instance.last_heard = now
        command = message.command
        if command == protocol.REGISTER:
            if self._authorized is not None and not self._authorized.allows(
                user_id, message.body["name"]
            ):
                self._refuse(
                    routing_id,
                    f"key {user_id} may not register as {message.body['name']!r} "
                    f"(see {self._authorized.path})",
                )
                return
            self._on_register(routing_id, instance, message.body, now)
        elif instance is None:
            if command != protocol.DISCONNECT:
                self._refuse(routing_id, "not registered; send REGISTER first")
        elif command == protocol.HEARTBEAT:
            pass
        elif command == protocol.RESULT:
            self._on_result(instance, message.body, now)
        elif (
            command in (protocol.EVENT, protocol.SNAPSHOT)
            and instance.role == "provider"
        ):
            if command == protocol.EVENT:
                self._on_event(instance, message.body, now)
            else:
                self._on_snapshot(instance, message.body, now)
        elif command == protocol.DISCONNECT:
            reason = message.body.get("reason", "no reason given")
            self._drop(routing_id, f"disconnected: {reason}")
        else:
            self._refuse(
                routing_id, f"{command.decode()} is not valid from a {instance.role}"
            )

    def _refuse(self, routing_id: bytes, reason: str) -> None:
        """Tell a peer to start over, and forget it."""
        if routing_id not in self._warned_peers:
            # Each reconnection brings a new routing id: keep the set bounded.
            if len(self._warned_peers) >= WARNED_PEERS_KEPT:
                self._warned_peers.clear()
            self._warned_peers.add(routing_id)
            self.log.warning("REFUSED peer=%s reason=%s", routing_id.hex(), reason)
        if routing_id in self.instances.by_id:
            self._drop(routing_id, reason)
        self._send(routing_id, protocol.DISCONNECT, {"reason": reason})

    def _on_register(
        self,
        routing_id: bytes,
        existing: Instance | None,
        body: dict[str, Any],
        now: float,
    ) -> None:
        name, role = body["name"], body["role"]
        if existing is not None:
            self._refuse(routing_id, "registered twice on one connection")
            return
        steps = self.workflow.steps
        if name not in steps:
            self._refuse(
                routing_id,
                f"{name!r} is not a step of this workflow ({','.join(steps)})",
            )
            return
        expected_role = "provider" if name == self.workflow.provider else "provisioner"
        if role != expected_role:
            self._refuse(
                routing_id, f"{name} must register as a {expected_role}, not a {role}"
            )
            return
        heartbeat = body.get(
            "heartbeat_ms", round(self.config.core.heartbeatInterval * 1000)
        )
        instance = Instance(
            routing_id=routing_id,
            name=name,
            role=role,
            host=body.get("host", "?"),
            pid=body.get("pid", 0),
            version=body.get("version", "?"),
            capacity=body.get("capacity", 1),
            heartbeat=heartbeat / 1000,
            last_heard=now,
        )
        self.instances.add(instance)
        self._warned_peers.discard(routing_id)
        self._send(
            routing_id,
            protocol.WELCOME,
            {
                "heartbeat_ms": round(self.config.core.heartbeatInterval * 1000),
                "core_version": __version__,
            },
        )
        self.log.info(
            "REGISTERED extension=%s host=%s pid=%s capacity=%d instances=%d",
            name,
            instance.host,
            instance.pid,
            instance.capacity,
            len(self.instances.named(name)),
        )
        self._freed_steps.add(name)

    def _drop(self, routing_id: bytes, reason: str) -> None:
        instance = self.instances.by_id.get(routing_id)
        orphans = self.instances.remove(routing_id)
        if instance is None:
            return
        self.log.warning(
            "LOST extension=%s host=%s pid=%s reason=%s requests_moved=%d",
            instance.name,
            instance.host,
            instance.pid,
            reason,
            len(orphans),
        )
        for request_id in orphans:
            name = self.workflow.pending.get(request_id)
            if name is None:
                continue
            self.workflow.mark_unsent(request_id)
            self._dispatch(self.workflow.request_for(self.workflow.entries[name]))

    def _on_result(self, instance: Instance, body: dict[str, Any], now: float) -> None:
        request_id = body["id"]
        if self.instances.owner.get(request_id) is not instance:
            self.log.info(
                "IGNORED_REPLY id=%s extension=%s reason=late or duplicate (not waiting for it)",
                request_id,
                instance.name,
            )
            return
        self.instances.release(request_id)
        self._freed_steps.add(instance.name)
        pending = self.workflow.pending.get(request_id)
        action = self.workflow.entries[pending].wip_action if pending else None
        ok, error, changes = body["ok"], body.get("error"), body.get("changes")
        if ok:
            problem, changes = _check_changes(instance.name, changes)
            if problem:
                ok, error = False, f"invalid reply from extension: {problem}"
        entry = self.workflow.apply_result(
            request_id, ok, error, changes, now, instance.name
        )
        if entry is not None and ok and action == "undeploy":
            # An undeploy may have freed what an entry in error was waiting for.
            self._undone_steps.add(instance.name)

    def _service(self, instance: Instance, raw: Any) -> Service | None:
        try:
            return service_from_wire(raw, provider=instance.name)
        except ServiceDefinitionError as exc:
            self.log.warning("BAD_SERVICE provider=%s reason=%s", instance.name, exc)
            return None

    def _on_event(self, instance: Instance, body: dict[str, Any], now: float) -> None:
        action = body["action"]
        if action == "update":
            service = self._service(instance, body.get("service"))
            if service is not None:
                self.workflow.upsert(service, now)
        else:
            name = body.get("name") or (body.get("service") or {}).get("name")
            if not isinstance(name, str):
                self.log.warning(
                    "BAD_EVENT provider=%s reason=delete without a name", instance.name
                )
                return
            self.workflow.remove(name, now)

    def _on_snapshot(
        self, instance: Instance, body: dict[str, Any], now: float
    ) -> None:
        services, unreadable = [], []
        for raw in body["services"]:
            service = self._service(instance, raw)
            if service is not None:
                services.append(service)
            elif isinstance(raw, dict) and isinstance(raw.get("name"), str):
                # A bad definition is not an absent service: keep what it had.
                unreadable.append(raw["name"])
        kept = [
            self.workflow.entries[n].service
            for n in unreadable
            if n in self.workflow.entries
        ]
        gone = self.workflow.snapshot(instance.name, services + kept, now)
        self.log.info(
            "SNAPSHOT provider=%s services=%d undeploying=%d",
            instance.name,
            len(services),
            len(gone),
        )

    # -- flow control --------------------------------------------------------

    def _after_changes(self, all_entries: bool = False) -> None:
        """Start the steps the latest changes call for, commit, then send."""
        now = time.time()
        if self._undone_steps:
            for step in self._undone_steps:
                if self.workflow.wake_errors_at(step):
                    all_entries = True
            self._undone_steps.clear()
        names = None if all_entries else set(self.workflow.dirty)
        requests = self.workflow.due_requests(now, names)
        self._commit()
        for request in requests:
            self._dispatch(request)
        freed, self._freed_steps = self._freed_steps, set()
        for step in freed:
            self._pump_queue(step)
        # Sends can consume the socket descriptor's edge for messages that
        # arrived meanwhile (it is edge-triggered): look for them now.
        socket = self._socket
        if socket is not None and has_waiting_messages(socket):
            self._schedule_pump()

    def _commit(self) -> None:
        changed, removed = self.workflow.take_changes()
        if self.store is None or not (changed or removed):
            return
        try:
            self.store.save(changed, removed)
        except StoreError as exc:
            # Nothing may be sent that is not on disk: stop, and let the
            # restarted core resume from the last commit.
            self.log.error("STORE_FAILED reason=%s action=stopping the core", exc)
            self.failed = True
            if self._stop is not None:
                self._stop.set()
            raise

    def _dispatch(self, request: StepRequest) -> None:
        """Send a request to an instance with room, or queue it for one.

        Requests already waiting for the step go first: a new one joins the
        end of the queue, which is served as instances free up.
        """
        if self.instances.queues.get(request.step):
            self.instances.enqueue(request.step, request.request_id)
            self._freed_steps.add(request.step)
            return
        instance = self.instances.pick(request.step)
        if instance is None or not self._send_step(instance, request):
            self.instances.release(request.request_id)
            self.instances.enqueue(request.step, request.request_id)

    def _send_step(self, instance: Instance, request: StepRequest) -> bool:
        now = time.time()
        self.instances.assign(request.request_id, instance, now)
        if not self._send(instance.routing_id, protocol.STEP, request.to_wire()):
            return False
        self.workflow.mark_sent(request.request_id, now)
        self.log.debug(
            "SENT service=%s step=%s action=%s id=%s pid=%s",
            request.service.name,
            request.step,
            request.action,
            request.request_id,
            instance.pid,
        )
        return True

    def _pump_queue(self, step: str) -> None:
        queue = self.instances.queues.get(step)
        while queue:
            instance = self.instances.pick(step)
            if instance is None:
                return
            request_id = queue.popleft()
            name = self.workflow.pending.get(request_id)
            if name is None or request_id in self.instances.owner:
                continue
            request = self.workflow.request_for(self.workflow.entries[name])
            if not self._send_step(instance, request):
                self.instances.release(request_id)
                queue.appendleft(request_id)
                return

    def _flow_tick(self) -> None:
        self._after_changes(all_entries=True)

    # -- housekeeping --------------------------------------------------------

    def _housekeep(self) -> None:
        now = time.time()
        resend, failed = self.workflow.overdue(now)
        for request in resend:
            self.log.warning(
                "RESENDING service=%s step=%s action=%s id=%s reason=no reply within %.1fs",
                request.service.name,
                request.step,
                request.action,
                request.request_id,
                self.config.core.serviceWIPTimeout,
            )
            self.instances.release(request.request_id)
            self._dispatch(request)
        for request_id in failed:
            instance = self.instances.release(request_id)
            if instance is not None:
                self._freed_steps.add(instance.name)
        self.workflow.expired(now)
        stale = self.workflow.stale(now)
        if stale:
            self._ask_refresh(stale)
        self._after_changes(all_entries=True)

    def _ask_refresh(self, names: list[str]) -> None:
        providers = self.instances.named(self.workflow.provider)
        if not providers:
            if not self._refresh_waiting:
                self.log.info(
                    "REFRESH_WAITING services=%d reason=no %s connected",
                    len(names),
                    self.workflow.provider,
                )
            self._refresh_waiting = True
            return
        self._refresh_waiting = False
        provider = min(providers, key=lambda i: i.last_used)
        provider.last_used = time.time()
        for start in range(0, len(names), REFRESH_CHUNK):
            chunk = names[start : start + REFRESH_CHUNK]
            self._send(provider.routing_id, protocol.REFRESH, {"names": chunk})
        self.log.info(
            "REFRESH_ASKED provider=%s services=%d", provider.name, len(names)
        )

    def _heartbeat(self) -> None:
        # Heartbeats already in the socket count: read them before judging,
        # so a core that was busy does not take its own delay for silence.
        self._pump()
        now = time.time()
        for instance in self.instances.silent(now, LIVENESS_FACTOR):
            self._send(
                instance.routing_id,
                protocol.DISCONNECT,
                {"reason": "heartbeat timeout"},
            )
            self._drop(
                instance.routing_id, f"silent for {now - instance.last_heard:.1f}s"
            )
        for routing_id in list(self.instances.by_id):
            self._send(routing_id, protocol.HEARTBEAT, {})
        self._after_changes()

    # -- views for the API ---------------------------------------------------

    def waiting_for(self) -> dict[str, int]:
        """Steps with queued requests and no instance to take them, with counts."""
        return {
            step: len(queue)
            for step, queue in self.instances.queues.items()
            if queue and not self.instances.named(step)
        }


def _check_changes(step: str, changes: Any) -> tuple[str | None, Any]:
    """Check a step's ``changes`` for the fields that step may set.

    Returns:
        What is wrong (or None), and the changes with ``public_ip`` in its
        canonical spelling.
    """
    if not changes or "public_ip" not in changes or not step.startswith("ipam."):
        return None, changes
    value = changes["public_ip"]
    if value is None:
        return None, changes
    if not isinstance(value, str):
        return f"public_ip must be a string or nil, not {type(value).__name__}", None
    address = parse_address(value)
    if address is None:
        return f"public_ip {value[:64]!r} is not an IP address", None
    return None, {**changes, "public_ip": str(address)}
