"""An entry: one service and where it stands in the workflow."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from interlook_core.service import Service, service_from_wire

__all__ = [
    "DEPLOYED",
    "Entry",
    "UNDEPLOYED",
    "iso_time",
]

DEPLOYED = "deployed"
UNDEPLOYED = "undeployed"


def iso_time(timestamp: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, or None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Entry:
    """The workflow's record of one service.

    ``state`` is the last step known to be in effect (or ``deployed`` /
    ``undeployed``). ``reach`` is the index of the furthest step that may be
    in effect, including a step that was sent but never confirmed: undeploy
    starts there, so a step whose reply was lost is still undone.
    """

    # Persisted by to_record, in this order; the service is stored beside them.
    FIELDS = (
        "close_time",
        "error",
        "error_count",
        "expected_state",
        "generation",
        "last_update",
        "next_retry",
        "reach",
        "refresh_sent",
        "request_generation",
        "request_id",
        "sent_count",
        "sent_time",
        "state",
        "time_detected",
        "wip_action",
        "wip_step",
        "wip_time",
        "work_in_progress",
    )
    __slots__ = (*FIELDS, "_service", "_service_wire")

    def __init__(self, service: Service, state: str, now: float) -> None:
        self.service = service
        self.state = state
        self.expected_state = DEPLOYED
        self.reach = 0
        self.generation = 0
        self.work_in_progress = False
        self.wip_time: float | None = None
        self.wip_step: str | None = None
        self.wip_action: str | None = None
        self.request_id: str | None = None
        self.request_generation = 0
        self.sent_time: float | None = None
        self.sent_count = 0
        self.error: str | None = None
        self.error_count = 0
        self.next_retry: float | None = None
        self.time_detected = now
        self.last_update = now
        self.close_time: float | None = None
        self.refresh_sent: float | None = None

    @property
    def service(self) -> Service:
        return self._service

    @service.setter
    def service(self, service: Service) -> None:
        self._service = service
        self._service_wire: dict[str, Any] | None = None

    def service_wire(self) -> dict[str, Any]:
        """The service as a wire map, built once per definition (a hot path)."""
        if self._service_wire is None:
            self._service_wire = self._service.to_wire()
        return self._service_wire

    @property
    def name(self) -> str:
        return self._service.name

    def clear_wip(self) -> None:
        self.work_in_progress = False
        self.wip_time = self.wip_step = self.wip_action = self.request_id = None
        self.sent_time = None
        self.sent_count = 0

    def to_record(self) -> dict[str, Any]:
        """Everything needed to resume this entry after a restart."""
        record = {field: getattr(self, field) for field in self.FIELDS}
        record["service"] = self.service_wire()
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entry:
        """Rebuild an entry written by :meth:`to_record`.

        Raises:
            ServiceDefinitionError, KeyError, TypeError: a damaged record.
        """
        service = service_from_wire(record["service"])
        entry = cls(service, record["state"], record["time_detected"])
        for field in cls.FIELDS:
            if field in record:
                setattr(entry, field, record[field])
        return entry

    def to_api(self) -> dict[str, Any]:
        """The entry as the HTTP API shows it."""
        return {
            "state": self.state,
            "expected_state": self.expected_state,
            "work_in_progress": self.work_in_progress,
            "wip_time": iso_time(self.wip_time),
            "step_in_progress": self.wip_step,
            "action_in_progress": self.wip_action,
            "error": self.error,
            "next_retry": iso_time(self.next_retry),
            "time_detected": iso_time(self.time_detected),
            "last_update": iso_time(self.last_update),
            "close_time": iso_time(self.close_time),
            "service": self.service.to_wire(),
        }
