"""The workflow state machine: entries and their transitions, with no I/O.

The core process feeds it provider events and step results, asks it which
step requests to send, and persists the entries it marks as changed before
anything it decided is acted upon. Every method takes the current time as
an argument so the machine can be driven by tests without a clock.

Steps are numbered by their place in ``core.workflowSteps``: 0 is the
provider, 1..n the provisioners. Deploy runs 1..n in order, undeploy runs
from the furthest step that may be in effect back to 1.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from interlook_core.entry import DEPLOYED, UNDEPLOYED, Entry
from interlook_core.service import Service

__all__ = ["StepRequest", "Workflow", "WorkflowTimings"]

log = logging.getLogger(__name__)

# Fields a step result may change in the service definition, with the steps
# (by prefix) allowed to change them.
_MERGEABLE = {"public_ip": "ipam."}


def _with_public_ip(service: Service, public_ip: str | None) -> Service:
    return dataclasses.replace(service, public_ip=public_ip)


@dataclass(frozen=True, slots=True)
class StepRequest:
    """A step to send: which extension, what to do, and the id to reply to."""

    request_id: str
    step: str
    action: str
    service: Service
    service_wire: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "step": self.step,
            "action": self.action,
            "service": self.service_wire,
        }


@dataclass(frozen=True, slots=True)
class WorkflowTimings:
    """The timing settings the state machine needs, in seconds."""

    wip_timeout: float = 30.0
    max_resends: int = 3
    retry_base: float = 1.0
    retry_cap: float = 300.0
    clean_undeployed_after: float = 600.0
    max_last_updated: float = 90.0


class Workflow:
    """Entries keyed by service name and the rules that move them.

    Invariants:
        - ``unsettled`` holds exactly the names of entries that are in
          progress or whose state differs from their expected state.
        - ``pending`` maps each request id in progress to its entry's name.
        - ``dirty`` holds names changed since the caller last took them;
          the caller persists them before sending anything.
    """

    def __init__(
        self, steps: list[str], timings: WorkflowTimings | None = None
    ) -> None:
        if len(steps) < 2:
            raise ValueError("a workflow needs a provider and at least one provisioner")
        self.steps = list(steps)
        self.provider = steps[0]
        self.timings = timings or WorkflowTimings()
        self.entries: dict[str, Entry] = {}
        self.unsettled: set[str] = set()
        self.pending: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        # Entries waiting to retry a failed step: name -> that step.
        self._failed_at: dict[str, str] = {}
        self._index = {step: i for i, step in enumerate(steps)}
        self._boot = secrets.token_hex(4)
        self._counter = 0

    # -- bookkeeping ---------------------------------------------------------

    def _touch(self, entry: Entry) -> None:
        name = entry.name
        self.dirty.add(name)
        if entry.work_in_progress or entry.state != entry.expected_state:
            self.unsettled.add(name)
        else:
            self.unsettled.discard(name)

    def take_changes(self) -> tuple[list[Entry], list[str]]:
        """Return the entries changed and the names removed since the last call."""
        changed = [self.entries[name] for name in self.dirty if name in self.entries]
        removed = list(self.removed)
        self.dirty.clear()
        self.removed.clear()
        return changed, removed

    def load(self, entries: Iterable[Entry], workflow_changed: bool = False) -> None:
        """Take the entries read from the store after a restart.

        A step that was in progress stays in progress with its request id;
        the caller sends it again.

        Args:
            entries: the stored entries.
            workflow_changed: ``core.workflowSteps`` differs from the one the
                entries were made with. Deployed entries then run every step
                again, so that an added step is done for them too. A step
                that was removed from the workflow cannot be undone: its
                extension is no longer part of it.
        """
        last = len(self.steps) - 1
        for entry in entries:
            if entry.state not in self._index and entry.state not in (
                DEPLOYED,
                UNDEPLOYED,
            ):
                log.warning(
                    "RESET service=%s state=%s reason=step no longer in workflow",
                    entry.name,
                    entry.state,
                )
                entry.state = self.provider
                entry.reach = last
                entry.clear_wip()
            if entry.work_in_progress and entry.wip_step not in self._index:
                entry.clear_wip()
            entry.reach = min(entry.reach, last)
            if workflow_changed and entry.state != UNDEPLOYED:
                # Positions in the old step list mean nothing in the new one.
                # Drop the step in progress (its late reply is ignored), undo
                # from the last step (undoing a step never done is harmless)
                # and redo every step for a service that stays deployed.
                entry.clear_wip()
                entry.reach = last
                entry.generation += 1
                if entry.expected_state == DEPLOYED:
                    entry.state = self.provider
            self.entries[entry.name] = entry
            if entry.error and entry.next_retry is not None:
                self._failed_at[entry.name] = entry.error.split(" ", 1)[0]
            if entry.request_id is not None:
                self.pending[entry.request_id] = entry.name
            if workflow_changed:
                self._touch(entry)
            elif entry.work_in_progress or entry.state != entry.expected_state:
                self.unsettled.add(entry.name)

    def in_progress(self) -> Iterator[Entry]:
        for name in self.pending.values():
            yield self.entries[name]

    def _position(self, entry: Entry) -> int:
        """Index of the last step in effect for deploy purposes."""
        if entry.state == DEPLOYED:
            return len(self.steps) - 1
        if entry.state == UNDEPLOYED:
            return 0
        return self._index[entry.state]

    # -- provider input ------------------------------------------------------

    def upsert(self, service: Service, now: float) -> Entry:
        """Take a definition from the provider: a new service or a new version."""
        entry = self.entries.get(service.name)
        if entry is None:
            if service.public_ip is not None:
                # The IPAM step assigns public_ip; a provider does not.
                service = _with_public_ip(service, None)
            entry = Entry(service, self.provider, now)
            self.entries[service.name] = entry
            log.info("DETECTED service=%s provider=%s", service.name, service.provider)
            self._touch(entry)
            return entry

        entry.last_update = now
        entry.refresh_sent = None
        if entry.expected_state != DEPLOYED:
            entry.expected_state = DEPLOYED
            entry.close_time = None
            log.info("REAPPEARED service=%s state=%s", service.name, entry.state)
        if not entry.service.same_definition(service):
            # public_ip belongs to the IPAM step, not to the provider.
            entry.service = _with_public_ip(service, entry.service.public_ip)
            entry.generation += 1
            self._clear_error(entry)
            if entry.state != UNDEPLOYED:
                entry.state = self.provider
            log.info("CHANGED service=%s steps=rerun", service.name)
        if entry.state == UNDEPLOYED and entry.expected_state == DEPLOYED:
            entry.state = self.provider
        # last_update alone is persisted too: it decides when a refresh is due.
        self._touch(entry)
        return entry

    def remove(self, name: str, now: float) -> Entry | None:
        """The provider says the service is gone: undeploy it."""
        entry = self.entries.get(name)
        if entry is None or entry.expected_state == UNDEPLOYED:
            return None
        entry.expected_state = UNDEPLOYED
        entry.last_update = now
        entry.refresh_sent = None
        self._clear_error(entry)
        log.info("REMOVED service=%s state=%s", name, entry.state)
        self._settle_without_steps(entry, now)
        self._touch(entry)
        return entry

    def snapshot(
        self, provider: str, services: Iterable[Service], now: float
    ) -> list[str]:
        """Take a provider's full list; its entries absent from it are undeployed.

        Returns:
            The names of the entries this snapshot undeploys.
        """
        seen = set()
        for service in services:
            seen.add(service.name)
            self.upsert(service, now)
        gone = [
            name
            for name, entry in self.entries.items()
            if name not in seen
            and entry.service.provider == provider
            and entry.expected_state == DEPLOYED
        ]
        for name in gone:
            self.remove(name, now)
        return gone

    def _settle_without_steps(self, entry: Entry, now: float) -> None:
        if (
            entry.expected_state == UNDEPLOYED
            and entry.reach == 0
            and not entry.work_in_progress
            and entry.state != UNDEPLOYED
        ):
            entry.state = UNDEPLOYED
            entry.close_time = now
            log.info("UNDEPLOYED service=%s steps=none", entry.name)

    # -- flow control --------------------------------------------------------

    def next_request(self, entry: Entry, now: float) -> StepRequest | None:
        """Decide the next step for an entry and mark it in progress.

        Returns None when the entry is settled, in progress, or waiting for
        its retry time.
        """
        if entry.work_in_progress or entry.state == entry.expected_state:
            return None
        if entry.next_retry is not None and now < entry.next_retry:
            return None
        if entry.expected_state == DEPLOYED:
            index = self._position(entry) + 1
            action = "deploy"
            entry.reach = max(entry.reach, index)
        else:
            self._settle_without_steps(entry, now)
            if entry.state == UNDEPLOYED:
                self._touch(entry)
                return None
            index = entry.reach
            action = "undeploy"
        self._counter += 1
        request_id = f"{self._boot}-{self._counter:x}"
        entry.work_in_progress = True
        entry.wip_time = now
        entry.wip_step = self.steps[index]
        entry.wip_action = action
        entry.request_id = request_id
        entry.request_generation = entry.generation
        entry.sent_time = None
        entry.sent_count = 0
        self.pending[request_id] = entry.name
        self._touch(entry)
        return self.request_for(entry)

    def request_for(self, entry: Entry) -> StepRequest:
        """The request of the step an entry has in progress (to send or resend)."""
        assert entry.request_id is not None and entry.wip_step and entry.wip_action
        return StepRequest(
            entry.request_id,
            entry.wip_step,
            entry.wip_action,
            entry.service,
            entry.service_wire(),
        )

    def due_requests(
        self, now: float, names: Iterable[str] | None = None
    ) -> list[StepRequest]:
        """Mark in progress, and return, every step that should start now.

        Args:
            now: the current time.
            names: look only at these entries (those just changed) instead
                of every unsettled one.
        """
        requests = []
        candidates = (
            self.unsettled if names is None else self.unsettled.intersection(names)
        )
        for name in list(candidates):
            request = self.next_request(self.entries[name], now)
            if request is not None:
                requests.append(request)
        return requests

    def mark_sent(self, request_id: str, now: float) -> None:
        """Record that a request left the core (the WIP timeout counts from here)."""
        name = self.pending.get(request_id)
        if name is not None:
            entry = self.entries[name]
            entry.sent_time = now
            entry.sent_count += 1

    def mark_unsent(self, request_id: str) -> None:
        """A request went back to the queue (its instance vanished): not sent."""
        name = self.pending.get(request_id)
        if name is not None:
            self.entries[name].sent_time = None

    # -- step results --------------------------------------------------------

    def apply_result(
        self,
        request_id: str,
        ok: bool,
        error: str | None,
        changes: dict[str, Any] | None,
        now: float,
        sender: str | None = None,
    ) -> Entry | None:
        """Record an extension's reply.

        Returns:
            The entry, or None when no request with that id is in progress
            (a late or duplicate reply, which the caller logs and drops).
        """
        name = self.pending.get(request_id)
        if name is None:
            return None
        entry = self.entries[name]
        if sender is not None and sender != entry.wip_step:
            return None
        del self.pending[request_id]
        step, action = entry.wip_step, entry.wip_action
        assert step is not None
        index = self._index[step]
        elapsed = now - (entry.wip_time or now)
        entry.clear_wip()

        if not ok:
            entry.error_count += 1
            entry.error = f"{step} {action}: {error or 'failed without a message'}"
            delay = min(
                self.timings.retry_base * 2 ** (entry.error_count - 1),
                self.timings.retry_cap,
            )
            entry.next_retry = now + delay
            self._failed_at[name] = step
            log.warning(
                "FAILED service=%s step=%s action=%s retry_in=%.1fs error=%s",
                name,
                step,
                action,
                delay,
                error,
            )
            self._touch(entry)
            return entry

        self._clear_error(entry)
        self._merge(entry, step, changes or {})
        if action == "deploy":
            if (
                entry.request_generation == entry.generation
                and self._position(entry) == index - 1
            ):
                last = index == len(self.steps) - 1
                entry.state = DEPLOYED if last else step
        else:
            entry.reach = min(entry.reach, index - 1)
            if self._position(entry) >= index:
                entry.state = self.steps[index - 1] if index > 1 else self.provider
            if entry.reach == 0 and entry.expected_state == UNDEPLOYED:
                entry.state = UNDEPLOYED
                entry.close_time = now
        log.info(
            "STEP_DONE service=%s step=%s action=%s state=%s elapsed=%.3fs",
            name,
            step,
            action,
            entry.state,
            elapsed,
        )
        self._touch(entry)
        return entry

    def _merge(self, entry: Entry, step: str, changes: dict[str, Any]) -> None:
        updates = {}
        for key, value in changes.items():
            prefix = _MERGEABLE.get(key)
            if prefix is None or not step.startswith(prefix):
                log.warning(
                    "IGNORED service=%s step=%s change=%s reason=not a field this step may set",
                    entry.name,
                    step,
                    key,
                )
                continue
            updates[key] = value
        if "public_ip" in updates:
            entry.service = _with_public_ip(entry.service, updates["public_ip"])

    def wake_errors_at(self, step: str) -> int:
        """Retry now the entries that failed at ``step``.

        Called when an undeploy of ``step`` frees something (an IP, a name):
        an entry that failed for want of it should not wait for its backoff.
        """
        woken = [name for name, failed in self._failed_at.items() if failed == step]
        for name in woken:
            self.entries[name].next_retry = None
        return len(woken)

    def _clear_error(self, entry: Entry) -> None:
        entry.error = None
        entry.error_count = 0
        entry.next_retry = None
        self._failed_at.pop(entry.name, None)

    # -- housekeeping --------------------------------------------------------

    def overdue(self, now: float) -> tuple[list[StepRequest], list[str]]:
        """Find steps in progress past their deadline.

        A step gets ``max_resends`` resends, each waiting twice as long as
        the one before; then it fails with an error and is retried later
        under a new request id.

        Returns:
            The requests to send again, and the ids of those that just failed.
        """
        resend, failed = [], []
        timeout = self.timings.wip_timeout
        for request_id, name in list(self.pending.items()):
            entry = self.entries[name]
            if entry.sent_time is None:
                continue
            deadline = entry.sent_time + timeout * 2 ** max(entry.sent_count - 1, 0)
            if now < deadline:
                continue
            if entry.sent_count <= self.timings.max_resends:
                resend.append(self.request_for(entry))
                continue
            waited = now - (entry.wip_time or now)
            self.apply_result(
                request_id,
                False,
                f"no reply after {entry.sent_count} attempts over {waited:.0f}s",
                None,
                now,
            )
            failed.append(request_id)
        return resend, failed

    def expired(self, now: float) -> list[str]:
        """Remove undeployed entries closed longer than the cleanup delay."""
        limit = now - self.timings.clean_undeployed_after
        names = [
            name
            for name, entry in self.entries.items()
            if entry.state == UNDEPLOYED
            and entry.expected_state == UNDEPLOYED
            and not entry.work_in_progress
            and entry.close_time is not None
            and entry.close_time < limit
        ]
        for name in names:
            del self.entries[name]
            self._failed_at.pop(name, None)
            self.unsettled.discard(name)
            self.dirty.discard(name)
            self.removed.add(name)
            log.info("CLEANED service=%s", name)
        return names

    def stale(self, now: float) -> list[str]:
        """Deployed entries the provider has not confirmed lately; asks once per period."""
        limit = now - self.timings.max_last_updated
        names = []
        for name, entry in self.entries.items():
            if (
                entry.expected_state == DEPLOYED
                and entry.last_update < limit
                and (entry.refresh_sent is None or entry.refresh_sent < limit)
            ):
                entry.refresh_sent = now
                names.append(name)
        return names
