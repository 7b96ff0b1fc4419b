"""noop.a, noop.b, noop.c: steps that succeed at once and change nothing.

They stand in for real provisioners when measuring the bus itself
(``make bench``) or trying a workflow's shape without outside systems.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from interlook_core.config import ExtensionSettings
from interlook_core.service import Service
from interlook_ext.base import Provisioner

__all__ = ["Noop", "NoopSettings"]


class NoopSettings(ExtensionSettings):
    capacity: int = Field(100, ge=1, le=10_000)


class Noop(Provisioner):
    """Replies success to every request, on the runner's loop."""

    settings_model = NoopSettings
    capacity: ClassVar[int] = 100

    async def deploy(self, service: Service) -> dict[str, Any]:
        return {}

    async def undeploy(self, service: Service) -> dict[str, Any]:
        return {}
