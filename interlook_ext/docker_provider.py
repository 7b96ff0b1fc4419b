"""provider.docker: containers and Swarm services from a Docker engine.

The provider follows the engine's event stream and, on each relevant event,
lists the labelled containers (or Swarm services and their tasks) again and
reports what changed: an add or a delete reaches the core within a second of
the event. A full snapshot goes out when the engine is first reached, after
each reconnection and every ``pollInterval``, so a missed event is healed.

An engine that cannot be reached, or that refuses a listing, is not an empty
one: no snapshot is sent while it is down, so nothing is undeployed. The
provider reconnects with capped backoff and logs once when the engine goes
down and once when it is back. The labels are read by
:mod:`interlook_ext.docker_labels`; see docs/provider-docker.md.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import docker
import docker.errors
import docker.tls
import requests
from pydantic import BeforeValidator, field_validator, model_validator

from interlook_core.config import (
    ConfigPath,
    Duration,
    ExtensionSettings,
    duration_field,
)
from interlook_core.errors import InterlookError, ServiceDefinitionError
from interlook_core.service import Service, Target, is_valid_hostname, service_from_wire
from interlook_ext.base import Provider, ServiceFeed
from interlook_ext.docker_labels import (
    LABEL_HOSTS,
    LABEL_PORT,
    LabelError,
    Publication,
    is_candidate,
    parse_publication,
    parse_selector_item,
)

__all__ = [
    "DockerProvider",
    "DockerProviderSettings",
    "EngineError",
    "open_client",
]

log = logging.getLogger(__name__)

# Container events after which the set of published containers may differ.
# Health events arrive as "health_status: healthy" and are matched on the part
# before the colon; exec_* events (health checks run one per interval) are not.
CONTAINER_ACTIONS = frozenset(
    {
        "start",
        "restart",
        "die",
        "stop",
        "kill",
        "destroy",
        "pause",
        "unpause",
        "rename",
        "health_status",
        "update",
    }
)
SWARM_SERVICE_LABEL = "com.docker.swarm.service.id"
BACKOFF_START = 0.25
# How long after a Swarm event the services are listed again once a second:
# tasks start and stop after the service event, and tasks on other nodes send
# no event to this engine.
SWARM_SETTLE_WINDOW = 20.0
SWARM_SETTLE_STEP = 1.0
# The longest the watch loop blocks before it looks at the stop flag.
STOP_CHECK = 0.2
MAX_WEIGHT = 256
# The oldest Engine API the provider speaks (Docker 1.12, the first with Swarm).
MINIMUM_API_VERSION = "1.24"


def _selector(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        items = [str(item).strip() for item in value if str(item).strip()]
        for item in items:
            parse_selector_item(item)
        return tuple(items)
    return value


class DockerProviderSettings(ExtensionSettings):
    """The ``provider: docker:`` section; see docs/provider-docker.md."""

    endpoint: str = "unix:///var/run/docker.sock"
    tlsCa: ConfigPath | None = None
    tlsCert: ConfigPath | None = None
    tlsKey: ConfigPath | None = None
    mode: Literal["auto", "containers", "swarm"] = "auto"
    labelSelector: Annotated[tuple[str, ...], BeforeValidator(_selector)] = ()
    hostAddress: str | None = None
    pollInterval: Duration = duration_field("30s", gt=0, le=86400)
    apiTimeout: Duration = duration_field("10s", gt=0, le=600)
    reconnectMaxInterval: Duration = duration_field("10s", ge=0.1, le=600)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        scheme, sep, address = value.partition("://")
        if not sep or scheme not in ("unix", "tcp") or not address:
            raise ValueError(
                f"{value!r} is not an engine address; use unix:///PATH or tcp://HOST:PORT"
            )
        if scheme == "tcp":
            host, colon, port = address.rstrip("/").rpartition(":")
            if (
                not colon
                or not host
                or not port.isdigit()
                or not 1 <= int(port) <= 65535
            ):
                raise ValueError(
                    f"{value!r} needs a host and a port, e.g. tcp://HOST:2376"
                )
        return value

    @field_validator("tlsCa", "tlsCert", "tlsKey")
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("hostAddress")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if is_valid_hostname(value):
                return value
        raise ValueError(f"{value!r} is not an IP address or host name")

    @model_validator(mode="after")
    def _check_tls(self) -> DockerProviderSettings:
        if (self.tlsCert is None) != (self.tlsKey is None):
            raise ValueError("tlsCert and tlsKey go together: give both or neither")
        uses_tls = self.tlsCa is not None or self.tlsCert is not None
        if uses_tls and not self.endpoint.startswith("tcp://"):
            raise ValueError("tlsCa, tlsCert and tlsKey need a tcp:// endpoint")
        return self


class EngineError(InterlookError):
    """The engine cannot be reached, or refused a request we depend on."""


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Map the Docker SDK's and requests' errors to :class:`EngineError`."""
    try:
        yield
    except docker.errors.APIError as exc:
        reason = exc.explanation or (
            exc.response.reason if exc.response is not None else str(exc)
        )
        raise EngineError(
            f"{what}: the engine answered {exc.status_code}: {reason}"
        ) from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise EngineError(f"{what}: {type(exc).__name__}: {exc}") from exc


def open_client(settings: DockerProviderSettings) -> docker.DockerClient:
    """A Docker SDK client for ``settings.endpoint``, with TLS when configured.

    This already reaches the engine: it asks for the engine's API version.

    Raises:
        EngineError: the engine cannot be reached or the TLS files are unusable.
    """
    tls: docker.tls.TLSConfig | bool = False
    if settings.tlsCa is not None or settings.tlsCert is not None:
        with _engine_errors("TLS settings"):
            tls = docker.tls.TLSConfig(
                client_cert=(
                    (settings.tlsCert, settings.tlsKey)
                    if settings.tlsCert is not None
                    else None
                ),
                ca_cert=settings.tlsCa,
                verify=settings.tlsCa if settings.tlsCa is not None else True,
            )
    # requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in the environment
    # replace the CA a session was given, which would make tlsCa silently
    # ignored; with tlsCa set, the environment is not consulted. The SDK asks
    # for the API version while it builds a client, before the flag can be
    # set, so the version is read with a pinned client first.
    trust_env = settings.tlsCa is None
    with _engine_errors(f"connecting to {settings.endpoint}"):
        probe = docker.DockerClient(
            base_url=settings.endpoint,
            tls=tls,
            timeout=settings.apiTimeout,
            version=MINIMUM_API_VERSION,
        )
        try:
            probe.api.trust_env = trust_env
            version = probe.api.version(api_version=False).get("ApiVersion")
        finally:
            probe.close()
        if not isinstance(version, str):
            raise docker.errors.DockerException(
                "the engine did not report its API version"
            )
        client = docker.DockerClient(
            base_url=settings.endpoint,
            tls=tls,
            timeout=settings.apiTimeout,
            version=version,
        )
        client.api.trust_env = trust_env
        return client


class _EventStream:
    """The engine's event stream, read by a thread into a queue.

    The queue receives each decoded event, then ``None`` when the stream
    ends (the engine went away or :meth:`close` was called).
    """

    def __init__(self, client: docker.DockerClient, filters: dict[str, Any]) -> None:
        with _engine_errors("opening the event stream"):
            self._stream = client.api.events(decode=True, filters=filters)
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._pump, name="docker-events", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self._stream:
                self.queue.put(event)
        except Exception as exc:  # a cut connection surfaces as any of several types
            log.debug("EVENT_STREAM_ENDED reason=%s: %s", type(exc).__name__, exc)
        finally:
            self.queue.put(None)

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception as exc:  # already closed by the engine
            log.debug("EVENT_STREAM_CLOSE reason=%s: %s", type(exc).__name__, exc)
        self._thread.join(1.0)


class _Reconnect(Exception):
    """Leave the current connection and connect again at once (mode changed)."""


class DockerProvider(Provider):
    """Reports the labelled containers or Swarm services of one Docker engine."""

    settings_model = DockerProviderSettings
    settings: DockerProviderSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: DockerProviderSettings
        self._client: docker.DockerClient | None = None
        self._mode: str | None = None
        # Serialises listings: the watch thread and lookup() share the client
        # and the record of label errors already reported.
        self._lock = threading.Lock()
        self._reported: dict[str, Service] = {}
        self._label_errors: dict[str, str] = {}
        self._engine_up: bool | None = None
        self._engine_version = "?"

    # -- the watch loop ------------------------------------------------------

    def watch(self, feed: ServiceFeed) -> None:
        backoff = BACKOFF_START
        while not feed.stopping.is_set():
            try:
                self._connect()
                self._follow(feed)
                return
            except _Reconnect:
                continue
            except EngineError as exc:
                # Only a connection that got as far as a snapshot starts the
                # backoff over: an engine that answers but refuses every
                # listing would otherwise be asked again four times a second.
                if self._engine_up:
                    backoff = BACKOFF_START
                self._engine_down(str(exc))
            finally:
                self._disconnect()
            log.debug(
                "ENGINE_RETRY endpoint=%s in=%.2fs", self.settings.endpoint, backoff
            )
            if feed.wait(backoff):
                return
            backoff = min(backoff * 2, self.settings.reconnectMaxInterval)

    def _follow(self, feed: ServiceFeed) -> None:
        """Report snapshots and changes until stopping; raise if the engine is lost."""
        assert self._client is not None and self._mode is not None
        # The stream opens before the first listing so no change falls in between.
        events = _EventStream(self._client, self._event_filters())
        try:
            self._send_snapshot(feed)
            self._engine_is_up()
            next_poll = time.monotonic() + self.settings.pollInterval
            settle_until = next_settle = 0.0
            while True:
                now = time.monotonic()
                deadline = (
                    next_poll if now >= settle_until else min(next_poll, next_settle)
                )
                relevant, ended = self._next_events(
                    events, max(0.0, min(STOP_CHECK, deadline - now))
                )
                if feed.stopping.is_set():
                    return
                if ended:
                    raise EngineError("the event stream ended")
                now = time.monotonic()
                if now >= next_poll:
                    self._check_mode()
                    self._send_snapshot(feed)
                    next_poll = now + self.settings.pollInterval
                elif relevant or (now < settle_until and now >= next_settle):
                    self._send_changes(feed)
                    next_settle = now + SWARM_SETTLE_STEP
                if relevant and self._mode == "swarm":
                    settle_until = now + SWARM_SETTLE_WINDOW
                    next_settle = now + SWARM_SETTLE_STEP
        finally:
            events.close()

    def _next_events(self, events: _EventStream, timeout: float) -> tuple[bool, bool]:
        """Wait up to ``timeout`` for events, then take all queued ones.

        Returns:
            (whether one of them may change what is published, whether the
            stream ended).
        """
        relevant = False
        try:
            event = events.queue.get(timeout=timeout)
            while True:
                if event is None:
                    return relevant, True
                relevant = self._is_relevant(event) or relevant
                event = events.queue.get_nowait()
        except queue.Empty:
            return relevant, False

    def _is_relevant(self, event: dict[str, Any]) -> bool:
        kind = event.get("Type")
        action = str(event.get("Action") or event.get("status") or "").partition(":")[0]
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        log.debug(
            "EVENT type=%s action=%s actor=%s",
            kind,
            action,
            attributes.get("name", (event.get("Actor") or {}).get("ID", "?")),
        )
        if kind in ("service", "node"):
            return self._mode == "swarm"
        if kind != "container" or action not in CONTAINER_ACTIONS:
            return False
        if self._mode == "swarm":
            return SWARM_SERVICE_LABEL in attributes
        return True

    # -- connection ----------------------------------------------------------

    def _connect(self) -> None:
        client = open_client(self.settings)
        try:
            with _engine_errors("reading the engine's info"):
                info = client.info()
        except EngineError:
            client.close()
            raise
        with self._lock:
            self._client = client
            self._mode = self._resolve_mode(info)
        self._engine_version = info.get("ServerVersion", "?")

    def _disconnect(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # a dead connection may fail to close cleanly
                log.debug("CLIENT_CLOSE reason=%s: %s", type(exc).__name__, exc)

    def _resolve_mode(self, info: dict[str, Any]) -> str:
        if self.settings.mode != "auto":
            return self.settings.mode
        swarm = info.get("Swarm") or {}
        manager = swarm.get("LocalNodeState") == "active" and bool(
            swarm.get("ControlAvailable")
        )
        return "swarm" if manager else "containers"

    def _check_mode(self) -> None:
        """Reconnect when ``auto`` resolves anew (the engine joined or left a swarm)."""
        if self.settings.mode != "auto":
            return
        assert self._client is not None
        with _engine_errors("reading the engine's info"):
            info = self._client.info()
        mode = self._resolve_mode(info)
        if mode != self._mode:
            log.info(
                "MODE_CHANGED endpoint=%s from=%s to=%s",
                self.settings.endpoint,
                self._mode,
                mode,
            )
            raise _Reconnect

    def _event_filters(self) -> dict[str, Any]:
        if self._mode == "swarm":
            return {"type": ["service", "node", "container"]}
        return {"type": ["container"], "label": [LABEL_HOSTS, LABEL_PORT]}

    def _engine_is_up(self) -> None:
        if self._engine_up is not True:
            log.info(
                "ENGINE_UP endpoint=%s mode=%s engine_version=%s",
                self.settings.endpoint,
                self._mode,
                self._engine_version,
            )
        self._engine_up = True

    def _engine_down(self, reason: str) -> None:
        if self._engine_up is not False:
            log.warning(
                "ENGINE_DOWN endpoint=%s reason=%s; nothing is undeployed meanwhile",
                self.settings.endpoint,
                reason,
            )
        else:
            log.debug(
                "ENGINE_STILL_DOWN endpoint=%s reason=%s",
                self.settings.endpoint,
                reason,
            )
        self._engine_up = False

    # -- reporting -----------------------------------------------------------

    def _send_snapshot(self, feed: ServiceFeed) -> None:
        current = self._collect()
        feed.snapshot(list(current.values()))
        self._reported = current

    def _send_changes(self, feed: ServiceFeed) -> None:
        current = self._collect()
        for name, service in current.items():
            if self._reported.get(name) != service:
                feed.update(service)
        for name in self._reported.keys() - current.keys():
            feed.delete(name)
        self._reported = current

    def lookup(self, names: list[str]) -> dict[str, Service | None] | None:
        try:
            current = self._collect()
        except EngineError as exc:
            log.debug("LOOKUP_DEFERRED reason=%s", exc)
            return None
        return {name: current.get(name) for name in names}

    # -- listing -------------------------------------------------------------

    def _collect(self) -> dict[str, Service]:
        """Every published service as the engine shows it now.

        Raises:
            EngineError: not connected, or a listing failed; nothing is known.
        """
        with self._lock:
            if self._client is None or self._mode is None:
                raise EngineError("not connected")
            errors: dict[str, str] = {}
            if self._mode == "swarm":
                services = self._collect_swarm(self._client, errors)
            else:
                services = self._collect_containers(self._client, errors)
            for key, message in errors.items():
                if self._label_errors.get(key) != message:
                    log.error("BAD_LABELS %s; it is left out", message)
            # Forgetting fixed or vanished definitions lets a new mistake be reported.
            self._label_errors = errors
            return services

    def _label_filters(self) -> list[str]:
        return [LABEL_HOSTS, LABEL_PORT, *self.settings.labelSelector]

    def _collect_containers(
        self, client: docker.DockerClient, errors: dict[str, str]
    ) -> dict[str, Service]:
        with _engine_errors("listing containers"):
            summaries = client.api.containers(
                filters={"status": "running", "label": self._label_filters()}
            )
        services: dict[str, Service] = {}
        for summary in summaries:
            names = summary.get("Names") or [summary.get("Id", "?")[:12]]
            name = names[0].lstrip("/")
            labels = summary.get("Labels") or {}
            if not is_candidate(labels, self.settings.labelSelector):
                continue
            where = f"container={name}"
            try:
                publication = parse_publication(labels)
                targets = self._container_targets(summary, publication)
            except LabelError as exc:
                errors[f"container:{summary.get('Id')}"] = _label_message(where, exc)
                continue
            service = self._service(name, publication, targets, where, errors)
            if service is not None:
                services[name] = service
        return services

    def _container_targets(
        self, summary: dict[str, Any], publication: Publication
    ) -> list[Target]:
        # A container whose health check has not passed yet, or has failed,
        # stays published but offers no target until it is healthy again.
        status = summary.get("Status") or ""
        if "(unhealthy)" in status or "(health: starting)" in status:
            return []
        port = publication.port
        network_mode = (summary.get("HostConfig") or {}).get("NetworkMode", "")
        if network_mode == "host":
            return [Target(self.settings.hostAddress or "127.0.0.1", port)]
        bindings = {
            (self._binding_host(binding.get("IP", "")), int(binding["PublicPort"]))
            for binding in summary.get("Ports") or []
            if binding.get("PrivatePort") == port
            and binding.get("Type", "tcp") == "tcp"
            and binding.get("PublicPort")
        }
        if bindings:
            return [Target(host, public) for host, public in sorted(bindings)]
        # Not published: the container's own address, reachable from this host.
        networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
        for network in networks.values():
            if (network or {}).get("IPAddress"):
                return [Target(network["IPAddress"], port)]
        raise LabelError(
            LABEL_PORT,
            str(port),
            "the port is not published and the container has no network address",
        )

    def _binding_host(self, address: str) -> str:
        if self.settings.hostAddress is not None:
            return self.settings.hostAddress
        if address in ("", "0.0.0.0", "::"):
            return "127.0.0.1"
        return address

    def _collect_swarm(
        self, client: docker.DockerClient, errors: dict[str, str]
    ) -> dict[str, Service]:
        with _engine_errors("listing Swarm services"):
            specs = client.api.services(filters={"label": self._label_filters()})
        with _engine_errors("listing Swarm tasks"):
            tasks = client.api.tasks(filters={"desired-state": "running"})
        with _engine_errors("listing Swarm nodes"):
            nodes = {node["ID"]: _node_address(node) for node in client.api.nodes()}
        running: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            if (task.get("Status") or {}).get("State") == "running":
                running.setdefault(task.get("ServiceID", ""), []).append(task)
        services: dict[str, Service] = {}
        for spec_service in specs:
            spec = spec_service.get("Spec") or {}
            name = spec.get("Name", spec_service.get("ID", "?"))
            labels = spec.get("Labels") or {}
            if not is_candidate(labels, self.settings.labelSelector):
                continue
            where = f"service={name}"
            try:
                publication = parse_publication(labels)
            except LabelError as exc:
                errors[f"service:{spec_service.get('ID')}"] = _label_message(where, exc)
                continue
            targets = _swarm_targets(
                spec_service,
                running.get(spec_service.get("ID", ""), []),
                nodes,
                publication.port,
            )
            service = self._service(name, publication, targets, where, errors)
            if service is not None:
                services[name] = service
        return services

    def _service(
        self,
        name: str,
        publication: Publication,
        targets: list[Target],
        where: str,
        errors: dict[str, str],
    ) -> Service | None:
        """Build the definition; a name the core would refuse is a reported error."""
        try:
            return service_from_wire(
                {
                    "name": name,
                    "targets": [target.to_wire() for target in targets],
                    "tls": publication.tls,
                    "dns_names": list(publication.dns_names),
                },
                provider=self.name,
            )
        except ServiceDefinitionError as exc:
            errors[where] = f"{where} reason={exc}"
            return None


def _label_message(where: str, exc: LabelError) -> str:
    return f"{where} label={exc.label} value={exc.value!r} reason={exc.reason}"


def _node_address(node: dict[str, Any]) -> str | None:
    """The address a node is reached at: its reported one, else its manager address."""
    address = (node.get("Status") or {}).get("Addr") or ""
    if address and address != "0.0.0.0":
        return address
    manager = (node.get("ManagerStatus") or {}).get("Addr") or ""
    host = manager.rpartition(":")[0].strip("[]")
    return host or None


def _swarm_targets(
    service: dict[str, Any],
    tasks: list[dict[str, Any]],
    nodes: dict[str, str | None],
    port: int,
) -> list[Target]:
    """One target per node address and port; its weight is the number of tasks there."""
    published = next(
        (
            entry
            for entry in (service.get("Endpoint") or {}).get("Ports") or []
            if entry.get("TargetPort") == port and entry.get("Protocol", "tcp") == "tcp"
        ),
        None,
    )
    counts: Counter[tuple[str, int]] = Counter()
    for task in tasks:
        address = nodes.get(task.get("NodeID", ""))
        if address is None:
            continue
        task_port = port
        if published is not None and published.get("PublishMode") == "host":
            # A host-mode port may be chosen per task; the task's status has it.
            status_ports = ((task.get("Status") or {}).get("PortStatus") or {}).get(
                "Ports"
            ) or []
            task_port = next(
                (
                    p["PublishedPort"]
                    for p in status_ports
                    if p.get("TargetPort") == port
                ),
                published.get("PublishedPort") or port,
            )
        elif published is not None and published.get("PublishedPort"):
            task_port = published["PublishedPort"]
        counts[(address, task_port)] += 1
    return [
        Target(host, task_port, min(count, MAX_WEIGHT))
        for (host, task_port), count in sorted(counts.items())
    ]
