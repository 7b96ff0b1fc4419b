"""What an extension implements. Nothing here touches a socket.

A provisioner implements :meth:`Provisioner.deploy` and
:meth:`Provisioner.undeploy`; a provider implements :meth:`Provider.watch`
and may override :meth:`Provider.lookup`. The runner in
:mod:`interlook_ext.runner` connects them to the core.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Iterable
from typing import Any, ClassVar

from interlook_core.config import ExtensionSettings
from interlook_core.service import Service

__all__ = ["Extension", "Provider", "Provisioner", "ServiceFeed", "StepOutcome"]

StepOutcome = dict[str, Any] | None | Awaitable[dict[str, Any] | None]
"""What a step handler returns: the fields it changed, or a coroutine giving them."""


class Extension:
    """Base of every extension.

    Class attributes:
        role: ``provider`` or ``provisioner``.
        settings_model: the pydantic model of the extension's section in the
            configuration file (``kind: name: {...}``).
        capacity: how many requests one process handles at once.
    """

    role: ClassVar[str] = ""
    settings_model: ClassVar[type[ExtensionSettings]] = ExtensionSettings
    capacity: ClassVar[int] = 1

    def __init__(
        self,
        name: str,
        settings: ExtensionSettings,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.log = logger or logging.getLogger(type(self).__module__)

    def close(self) -> None:
        """Release what the extension holds; called once at shutdown."""


class Provisioner(Extension):
    """An extension that performs a step of the workflow.

    Both methods may be plain functions (run in a worker thread, so they may
    block) or coroutines (run on the runner's loop). They must be idempotent:
    the same request twice has the same result. To fail, raise
    :class:`interlook_core.errors.StepError` with a message for the operator;
    any other exception is reported the same way, with its type.
    """

    role: ClassVar[str] = "provisioner"

    def deploy(self, service: Service) -> StepOutcome:
        """Bring this step in place for ``service``; return fields it changed."""
        raise NotImplementedError

    def undeploy(self, service: Service) -> StepOutcome:
        """Remove this step's work for ``service``; return fields it changed."""
        raise NotImplementedError


class ServiceFeed:
    """Where a provider reports what it sees. Thread-safe.

    The runner passes one to :meth:`Provider.watch`. Until the provider has
    sent a first :meth:`snapshot`, the core deletes nothing on its behalf:
    a platform that cannot be reached is not an empty one.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def snapshot(self, services: Iterable[Service]) -> None:
        """Every service published right now; the others are gone."""
        raise NotImplementedError

    def update(self, service: Service) -> None:
        """A service appeared or its definition changed."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """A service is gone."""
        raise NotImplementedError

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when the provider should stop."""
        return self.stopping.wait(seconds)


class Provider(Extension):
    """An extension that watches a platform and reports its services."""

    role: ClassVar[str] = "provider"

    def watch(self, feed: ServiceFeed) -> None:
        """Report services to ``feed`` until ``feed.stopping`` is set.

        Runs in its own thread and may block. Send a full snapshot first,
        and again after any gap (a reconnection to the platform).
        """
        raise NotImplementedError

    def lookup(self, names: list[str]) -> dict[str, Service | None] | None:
        """The current definition of each named service, or None if it is gone.

        Called when the core asks to confirm services it has not heard of
        lately. Return None when the platform cannot be asked right now;
        the default does that, and the runner answers from the last
        snapshot and events instead.
        """
        return None
