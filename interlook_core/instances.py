"""The extension instances connected to the core, and who does which request.

Several processes may register the same name; each is an :class:`Instance`
keyed by the routing id the ROUTER socket gave it. Requests go to the
instance of the step's name with the fewest requests in flight, then the
one least recently used, never beyond the capacity it announced.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Instance", "InstanceTable"]


@dataclass(eq=False)
class Instance:
    """One registered extension process."""

    routing_id: bytes
    name: str
    role: str
    host: str
    pid: int
    version: str
    capacity: int
    heartbeat: float
    last_heard: float
    last_used: float = 0.0
    in_flight: set[str] = field(default_factory=set)

    def to_api(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "version": self.version,
            "capacity": self.capacity,
            "seconds_since_heard": round(now - self.last_heard, 3),
            "requests_in_flight": len(self.in_flight),
        }


class InstanceTable:
    """Registered instances, the requests each has in flight, and the queues.

    Invariants:
        - ``owner[request_id]`` is the instance holding that request, and
          the id is in that instance's ``in_flight``.
        - a request id is either owned or in its step's queue, never both.
    """

    def __init__(self) -> None:
        self.by_id: dict[bytes, Instance] = {}
        self.owner: dict[str, Instance] = {}
        self.queues: dict[str, deque[str]] = {}

    def add(self, instance: Instance) -> None:
        self.by_id[instance.routing_id] = instance

    def remove(self, routing_id: bytes) -> list[str]:
        """Forget an instance; return the request ids it had in flight."""
        instance = self.by_id.pop(routing_id, None)
        if instance is None:
            return []
        orphans = sorted(instance.in_flight)
        for request_id in orphans:
            self.owner.pop(request_id, None)
        instance.in_flight.clear()
        return orphans

    def named(self, name: str) -> list[Instance]:
        return [i for i in self.by_id.values() if i.name == name]

    def pick(self, name: str) -> Instance | None:
        """The instance to send the next request of ``name`` to, if one has room."""
        best = None
        for instance in self.by_id.values():
            if instance.name != name or len(instance.in_flight) >= instance.capacity:
                continue
            if best is None or (len(instance.in_flight), instance.last_used) < (
                len(best.in_flight),
                best.last_used,
            ):
                best = instance
        return best

    def assign(self, request_id: str, instance: Instance, now: float) -> None:
        self.release(request_id)
        instance.in_flight.add(request_id)
        instance.last_used = now
        self.owner[request_id] = instance

    def release(self, request_id: str) -> Instance | None:
        """The request is answered or abandoned; free its slot."""
        instance = self.owner.pop(request_id, None)
        if instance is not None:
            instance.in_flight.discard(request_id)
        return instance

    def enqueue(self, step: str, request_id: str) -> None:
        self.queues.setdefault(step, deque()).append(request_id)

    def silent(self, now: float, factor: float) -> list[Instance]:
        """Instances not heard from within ``factor`` heartbeat intervals."""
        return [
            i for i in self.by_id.values() if now - i.last_heard > i.heartbeat * factor
        ]
